//! A variable-order Markov continuator learned from the prime alone, after François Pachet's
//! Continuator (2003): the prime is cut into events (the notes that start together), every
//! context of up to `max_order` events is indexed with the events that followed it, and the
//! continuation repeatedly picks, at random, one of the events that followed the longest context
//! matching the end of what has been played so far.
//!
//! Pachet stores the contexts in a prefix tree walked from the most recent event backwards; a
//! map from each context (as a sequence of events) to its continuations is the same tree with
//! every path stored whole, which is simpler and, for primes of a few bars, just as fast.
//!
//! When no context matches (an event that only ever ended the prime) the match is retried on a
//! reduced viewpoint, pitch classes instead of pitches, as Pachet's reduction functions do, and
//! as a last resort any event is picked. Rhythm is copied with the pitches: each chosen event
//! keeps the gap that preceded it in the prime, so the continuation stays on the prime's grid.
//! The prime is learned as a loop (its last event is followed by its first), so that a walk
//! reaching the prime's end has somewhere to go.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::midi::Note;
use crate::time::Ticks;

/// Most events one continuation may hold: a guard against a prime whose gaps are all tiny.
const MAX_EVENTS: usize = 100_000;

/// The notes starting at one onset.
#[derive(Clone, Debug, PartialEq)]
struct Event {
    onset: Ticks,
    /// Time since the previous event's onset (for the first event: since the last event, as if
    /// the prime were looped, so that every event has a gap to copy).
    gap: Ticks,
    /// (pitch, duration, velocity), sorted by pitch.
    notes: Vec<(u8, Ticks, u8)>,
    /// The viewpoint contexts match on: the pitches.
    pitches: Vec<u8>,
    /// The reduced viewpoint: the sorted, distinct pitch classes.
    classes: Vec<u8>,
}

/// A continuator learned from one prime.
#[derive(Clone, Debug)]
pub struct MarkovContinuator {
    events: Vec<Event>,
    max_order: usize,
    /// Context of pitch sets (1..=max_order events) → indices of the events that followed it.
    by_pitches: HashMap<Vec<Vec<u8>>, Vec<usize>>,
    /// Previous event's pitch classes → indices of the events that followed it.
    by_classes: HashMap<Vec<u8>, Vec<usize>>,
}

impl MarkovContinuator {
    /// Learns from the prime's notes, which end at `prime_end` (where the continuation will
    /// start). Contexts of up to `max_order` events (at least 1) are indexed.
    pub fn learn(prime: &[Note], prime_end: Ticks, max_order: usize) -> Self {
        let max_order = max_order.max(1);
        let mut sorted: Vec<&Note> = prime.iter().collect();
        sorted.sort_by_key(|n| (n.start, n.pitch));
        let mut events: Vec<Event> = Vec::new();
        for n in sorted {
            match events.last_mut() {
                Some(e) if e.onset == n.start => e.notes.push((n.pitch, n.duration, n.velocity)),
                _ => events.push(Event {
                    onset: n.start,
                    gap: Ticks::ZERO,
                    notes: vec![(n.pitch, n.duration, n.velocity)],
                    pitches: Vec::new(),
                    classes: Vec::new(),
                }),
            }
        }
        let first_onset = events.first().map_or(Ticks::ZERO, |e| e.onset);
        let last_onset = events.last().map_or(Ticks::ZERO, |e| e.onset);
        for i in 0..events.len() {
            let gap = if i == 0 {
                // Looping the prime: from the last onset round to the first.
                (prime_end.max(last_onset) - last_onset) + first_onset
            } else {
                events[i].onset - events[i - 1].onset
            };
            let e = &mut events[i];
            e.gap = Ticks(gap.0.max(1));
            e.notes.sort_unstable();
            e.pitches = e.notes.iter().map(|n| n.0).collect();
            e.classes = e.pitches.iter().map(|p| p % 12).collect();
            e.classes.sort_unstable();
            e.classes.dedup();
        }
        let mut by_pitches: HashMap<Vec<Vec<u8>>, Vec<usize>> = HashMap::new();
        let mut by_classes: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
        for next in 1..events.len() {
            for order in 1..=max_order.min(next) {
                let context = events[next - order..next]
                    .iter()
                    .map(|e| e.pitches.clone())
                    .collect();
                by_pitches.entry(context).or_default().push(next);
            }
            by_classes
                .entry(events[next - 1].classes.clone())
                .or_default()
                .push(next);
        }
        // The prime's end leads back to its start, as its first event's gap already assumes:
        // without this the last event has no follower, and a walk that reaches it can only
        // fall back to whatever two events happen to share pitch classes, and ping-pong between
        // them for the rest of the continuation.
        let n = events.len();
        if n > 0 {
            for order in 1..=max_order.min(n) {
                let context = events[n - order..]
                    .iter()
                    .map(|e| e.pitches.clone())
                    .collect();
                by_pitches.entry(context).or_default().push(0);
            }
            by_classes
                .entry(events[n - 1].classes.clone())
                .or_default()
                .push(0);
        }
        MarkovContinuator {
            events,
            max_order,
            by_pitches,
            by_classes,
        }
    }

    /// Number of events (distinct onsets) learned.
    pub fn events(&self) -> usize {
        self.events.len()
    }

    /// Continues from the prime's end for `length` ticks, with its own random stream (`seed`).
    /// Onsets of the returned notes are relative to `start` (the prime's end); notes the walk
    /// places before it (after a prime that ends in a rest) are dropped.
    pub fn continue_from(&self, start: Ticks, length: Ticks, seed: u64) -> Vec<Note> {
        let mut out = Vec::new();
        let Some(last) = self.events.last() else {
            return out;
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // The history the contexts match against: the prime's events, then the chosen ones.
        let mut history: Vec<usize> = (0..self.events.len()).collect();
        let mut onset = last.onset;
        let end = start + length;
        for _ in 0..MAX_EVENTS {
            let next = self.choose(&history, &mut rng);
            let event = &self.events[next];
            onset += event.gap;
            if onset >= end {
                break;
            }
            if onset >= start {
                out.extend(event.notes.iter().map(|&(pitch, duration, velocity)| Note {
                    start: onset - start,
                    duration,
                    pitch,
                    velocity,
                }));
            }
            history.push(next);
        }
        out
    }

    /// The next event: a random follower of the longest matching context, else of the last
    /// event's pitch classes, else any event.
    fn choose(&self, history: &[usize], rng: &mut ChaCha8Rng) -> usize {
        for order in (1..=self.max_order.min(history.len())).rev() {
            let context: Vec<Vec<u8>> = history[history.len() - order..]
                .iter()
                .map(|&i| self.events[i].pitches.clone())
                .collect();
            if let Some(followers) = self.by_pitches.get(&context) {
                return followers[rng.random_range(0..followers.len())];
            }
        }
        if let Some(followers) = history
            .last()
            .and_then(|&i| self.by_classes.get(&self.events[i].classes))
        {
            return followers[rng.random_range(0..followers.len())];
        }
        rng.random_range(0..self.events.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(start: u64, duration: u64, pitch: u8) -> Note {
        Note {
            start: Ticks(start),
            duration: Ticks(duration),
            pitch,
            velocity: 70,
        }
    }

    #[test]
    fn a_repeated_pattern_is_continued_exactly() {
        // Two bars of C D E G in quarters (24 ticks each), a C major chord on every C.
        let mut prime = Vec::new();
        for bar in 0..2u64 {
            for (i, p) in [60u8, 62, 64, 67].into_iter().enumerate() {
                let t = bar * 96 + i as u64 * 24;
                prime.push(note(t, 24, p));
                if p == 60 {
                    prime.push(note(t, 24, 48));
                }
            }
        }
        let markov = MarkovContinuator::learn(&prime, Ticks(192), 4);
        assert_eq!(markov.events(), 8);
        for seed in 0..5 {
            let out = markov.continue_from(Ticks(192), Ticks(192), seed);
            // The next two bars are the pattern again, shifted to the continuation start.
            let expected: Vec<Note> = prime.clone();
            let mut got = out.clone();
            got.sort_by_key(|n| (n.start, n.pitch));
            let mut want = expected;
            want.sort_by_key(|n| (n.start, n.pitch));
            assert_eq!(got, want, "seed {seed}");
        }
    }

    #[test]
    fn ambiguous_contexts_follow_the_seed() {
        // At order 1, C is followed by D twice and by E twice: which comes after C depends on
        // the seed.
        let pitches = [60u8, 62, 60, 64, 60, 62, 60, 64];
        let prime: Vec<Note> = pitches
            .iter()
            .enumerate()
            .map(|(i, &p)| note(i as u64 * 12, 12, p))
            .collect();
        let markov = MarkovContinuator::learn(&prime, Ticks(96), 1);
        let runs: Vec<Vec<u8>> = (0..16)
            .map(|s| {
                markov
                    .continue_from(Ticks(96), Ticks(192), s)
                    .iter()
                    .map(|n| n.pitch)
                    .collect()
            })
            .collect();
        assert_eq!(
            markov.continue_from(Ticks(96), Ticks(192), 3),
            markov.continue_from(Ticks(96), Ticks(192), 3)
        );
        assert!(
            runs.iter().any(|r| r != &runs[0]),
            "no seed changed anything"
        );
        for r in &runs {
            assert_eq!(r.len(), 16, "{r:?}");
            // Every other note is C, as in the prime; the others are D or E.
            for pair in r.chunks(2) {
                assert_eq!(pair[0], 60, "{r:?}");
                assert!(pair[1] == 62 || pair[1] == 64, "{r:?}");
            }
        }
    }

    #[test]
    fn the_longest_seen_context_decides_and_unseen_ones_fall_back_to_shorter_orders() {
        // C D E F D G. D alone is followed by E or by G, but C D only by E. After G the prime
        // loops to C; G C and D G C never occurred, so C is continued at order 1 (by D), and
        // C D at order 2 (by E, never G), whatever the seed.
        let prime: Vec<Note> = [60u8, 62, 64, 65, 62, 67]
            .iter()
            .enumerate()
            .map(|(i, &p)| note(i as u64 * 24, 24, p))
            .collect();
        let markov = MarkovContinuator::learn(&prime, Ticks(144), 3);
        for seed in 0..8 {
            let out = markov.continue_from(Ticks(144), Ticks(144), seed);
            let got: Vec<(u64, u8)> = out.iter().map(|n| (n.start.0, n.pitch)).collect();
            assert_eq!(
                got,
                [(0, 60), (24, 62), (48, 64), (72, 65), (96, 62), (120, 67)],
                "seed {seed}"
            );
        }
        // At order 1 alone, D is followed by E or G depending on the seed.
        let order1 = MarkovContinuator::learn(&prime, Ticks(144), 1);
        let after_d: std::collections::HashSet<u8> = (0..16)
            .map(|s| order1.continue_from(Ticks(144), Ticks(144), s)[2].pitch)
            .collect();
        assert_eq!(after_d, [64u8, 67].into_iter().collect());
    }

    #[test]
    fn an_empty_prime_continues_with_nothing() {
        let markov = MarkovContinuator::learn(&[], Ticks(96), 4);
        assert!(markov.continue_from(Ticks(96), Ticks(96), 0).is_empty());
    }
}
