//! The musician's recent playing, as the inference thread remembers it: notes with onsets and
//! durations on the host's timeline, turned into bars on the tokenizer's grid when a continuation
//! is asked for.

use std::collections::VecDeque;

use engine::time::{Beats, GridTicks, TimeSignature};

use crate::capture::{CapturedNote, Edge};
use crate::continuer::{GridNote, GridPrime};

/// Notes older than this many bars are forgotten: far more than the longest listening window.
const MEMORY_BARS: f64 = 64.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlayedNote {
    pub onset: Beats,
    pub end: Beats,
    pub key: u8,
    pub velocity: u8,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Held {
    channel: u8,
    key: u8,
    velocity: u8,
    onset: Beats,
}

#[derive(Debug, Default)]
pub struct Phrase {
    /// Finished notes in onset order.
    notes: VecDeque<PlayedNote>,
    /// Notes whose NoteOff has not come yet.
    held: Vec<Held>,
    /// When the latest note started or ended: silence is measured from here.
    last_activity: Option<Beats>,
    /// Notes finished since the last [`Phrase::take_finished`], for the playing memory.
    finished: Vec<PlayedNote>,
}

impl Phrase {
    /// Takes in one captured edge. A NoteOn for a key that is already held ends the old note
    /// first (some keyboards send two NoteOns); a NoteOff without a NoteOn is ignored.
    pub fn record(&mut self, edge: CapturedNote) {
        let held = self
            .held
            .iter()
            .position(|h| h.channel == edge.channel && h.key == edge.key);
        if let Some(index) = held {
            let h = self.held.swap_remove(index);
            self.finish(h, edge.at);
        }
        if let Edge::On { velocity } = edge.edge {
            self.held.push(Held {
                channel: edge.channel,
                key: edge.key,
                velocity,
                onset: edge.at,
            });
        }
        self.last_activity = Some(self.last_activity.map_or(edge.at, |last| last.max(edge.at)));
    }

    fn finish(&mut self, held: Held, end: Beats) {
        let note = PlayedNote {
            onset: held.onset,
            end: end.max(held.onset),
            key: held.key,
            velocity: held.velocity,
        };
        // Notes finish out of onset order (a long note under short ones): insert in place.
        let index = self.notes.partition_point(|n| n.onset <= note.onset);
        self.notes.insert(index, note);
        self.finished.push(note);
    }

    /// The notes finished since the last call, in the order they finished.
    pub fn take_finished(&mut self) -> std::vec::Drain<'_, PlayedNote> {
        self.finished.drain(..)
    }

    /// Whether the musician is holding any key.
    pub fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }

    pub fn last_activity(&self) -> Option<Beats> {
        self.last_activity
    }

    /// Finished notes starting at or after `from`, in onset order.
    pub fn notes_since(&self, from: Beats) -> impl Iterator<Item = &PlayedNote> {
        let start = self.notes.partition_point(|n| n.onset < from);
        self.notes.range(start..)
    }

    /// The transport stopped or jumped to `now`: held notes are cut there, and anything "played"
    /// after `now` (before a loop jumped back) is forgotten, so time only moves forward.
    pub fn transport_moved(&mut self, now: Beats) {
        for held in std::mem::take(&mut self.held) {
            self.finish(held, now.max(held.onset));
        }
        while self.notes.back().is_some_and(|n| n.onset > now) {
            self.notes.pop_back();
        }
        self.last_activity = self.notes.iter().map(|n| n.end.min(now)).reduce(Beats::max);
    }

    /// Forgets what is too old to ever be listened to again.
    pub fn prune(&mut self, now: Beats, sig: TimeSignature) {
        let horizon = Beats(now.0 - MEMORY_BARS * sig.quarters_per_bar().0);
        while self.notes.front().is_some_and(|n| n.onset < horizon) {
            self.notes.pop_front();
        }
    }

    /// The bars `[first_bar, first_bar + bars)` on the grid, as a prime: onsets relative to the
    /// first bar line; notes still held at `now` last until `now`. Durations are at least one
    /// tick, since the tokenizer has no zero-length notes.
    pub fn prime(&self, sig: TimeSignature, first_bar: i64, bars: u32, now: Beats) -> GridPrime {
        let origin = sig.bar_start(first_bar);
        let end = sig.bar_start(first_bar + i64::from(bars));
        let finished = self.notes_since(origin).filter(|n| n.onset < end).copied();
        let held = self
            .held
            .iter()
            .filter(|h| h.onset >= origin && h.onset < end)
            .map(|h| PlayedNote {
                onset: h.onset,
                end: now.max(h.onset),
                key: h.key,
                velocity: h.velocity,
            });
        let mut notes: Vec<GridNote> = finished
            .chain(held)
            .map(|n| {
                let onset = GridTicks::from_quarters(n.onset - origin);
                let end = GridTicks::from_quarters(n.end - origin);
                GridNote {
                    onset,
                    duration: GridTicks((end.0 - onset.0).max(1)),
                    key: n.key,
                    velocity: n.velocity,
                }
            })
            // Rounding onto the grid may push a note a hair before the bar line onto the next bar.
            .filter(|n| n.onset.0 < i64::from(bars) * sig.grid_ticks_per_bar().0)
            .collect();
        notes.sort_by_key(|n| (n.onset, n.key));
        GridPrime {
            time_signature: sig,
            bars,
            notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(at: f64, key: u8) -> CapturedNote {
        CapturedNote {
            at: Beats(at),
            channel: 0,
            key,
            edge: Edge::On { velocity: 90 },
        }
    }

    fn off(at: f64, key: u8) -> CapturedNote {
        CapturedNote {
            at: Beats(at),
            channel: 0,
            key,
            edge: Edge::Off,
        }
    }

    #[test]
    fn primes_are_bars_on_the_grid() {
        let sig = TimeSignature::new(3, 4).unwrap();
        let mut phrase = Phrase::default();
        phrase.record(on(3.0, 60));
        phrase.record(on(3.5, 64));
        phrase.record(off(3.499, 60));
        phrase.record(off(5.0, 64));
        phrase.record(on(6.02, 67)); // held at the time of the prime, a hair off the grid
        let prime = phrase.prime(sig, 1, 2, Beats(6.5));
        assert_eq!(prime.bars, 2);
        assert_eq!(
            prime.notes,
            [
                GridNote {
                    onset: GridTicks(0),
                    duration: GridTicks(6),
                    key: 60,
                    velocity: 90
                },
                GridNote {
                    onset: GridTicks(6),
                    duration: GridTicks(18),
                    key: 64,
                    velocity: 90
                },
                GridNote {
                    onset: GridTicks(36),
                    duration: GridTicks(6),
                    key: 67,
                    velocity: 90
                },
            ]
        );
        assert!(phrase.is_holding());
        assert_eq!(phrase.last_activity(), Some(Beats(6.02)));
    }

    #[test]
    fn a_loop_back_forgets_the_future() {
        let mut phrase = Phrase::default();
        phrase.record(on(1.0, 60));
        phrase.record(off(2.0, 60));
        phrase.record(on(9.0, 62));
        phrase.record(off(10.0, 62));
        phrase.record(on(11.0, 64));
        phrase.transport_moved(Beats(4.0));
        assert!(!phrase.is_holding());
        assert_eq!(phrase.notes_since(Beats::ZERO).count(), 1);
        assert_eq!(phrase.last_activity(), Some(Beats(2.0)));
    }
}
