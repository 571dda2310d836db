//! The generated notes that are sounding right now, so that every NoteOn gets its NoteOff.
//!
//! A note is entered here at the moment its NoteOn is queued and leaves only when its NoteOff is
//! queued, either at its scheduled end or when everything is released (transport stop, jump,
//! bypass, reset, a new take, the musician playing over). A key that is retriggered while it still
//! sounds is first released, so the host never sees two NoteOns for one key without a NoteOff.

use engine::time::Beats;

use crate::clock::BlockClock;
use crate::output::{OutNote, OutQueue};

/// At most this many generated notes sound at once; more is certainly a runaway model. Fixed so
/// the table never allocates on the audio thread.
pub const MAX_SOUNDING: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Sounding {
    channel: u8,
    key: u8,
    end: Beats,
}

/// Fixed-capacity table of sounding generated notes.
pub struct SoundingNotes {
    notes: Vec<Sounding>,
}

impl Default for SoundingNotes {
    fn default() -> Self {
        SoundingNotes {
            notes: Vec::with_capacity(MAX_SOUNDING),
        }
    }
}

impl SoundingNotes {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.notes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.notes.is_empty()
    }

    /// Queues a NoteOn at `timing` for a note that should stop at `end`, releasing the same key
    /// first if it is still sounding. Returns `false` (and queues nothing) when the table or the
    /// queue is full.
    pub fn start<E: From<OutNote>>(
        &mut self,
        out: &mut OutQueue<E>,
        timing: u32,
        channel: u8,
        key: u8,
        velocity: f32,
        end: Beats,
    ) -> bool {
        if let Some(index) = self
            .notes
            .iter()
            .position(|n| n.channel == channel && n.key == key)
        {
            let old = self.notes.swap_remove(index);
            out.push_off(
                timing,
                OutNote::Off {
                    timing,
                    channel: old.channel,
                    key: old.key,
                }
                .into(),
            );
        }
        if self.notes.len() == MAX_SOUNDING {
            return false;
        }
        if !out.push(
            timing,
            OutNote::On {
                timing,
                channel,
                key,
                velocity,
            }
            .into(),
        ) {
            return false;
        }
        self.notes.push(Sounding { channel, key, end });
        true
    }

    /// Queues the NoteOffs of every note whose end falls before the end of this block, at their
    /// exact sample (or the block's first sample if the end already passed).
    pub fn end_due<E: From<OutNote>>(&mut self, out: &mut OutQueue<E>, clock: &BlockClock) {
        let mut index = 0;
        while index < self.notes.len() {
            let note = self.notes[index];
            let sample = clock.sample_of(note.end);
            if sample < i64::from(clock.len()) {
                let timing = sample.max(0) as u32;
                if out.push_off(
                    timing,
                    OutNote::Off {
                        timing,
                        channel: note.channel,
                        key: note.key,
                    }
                    .into(),
                ) {
                    self.notes.swap_remove(index);
                    continue;
                }
            }
            index += 1;
        }
    }

    /// Queues a NoteOff at `timing` for every sounding note. The queue's NoteOff reserve is sized
    /// to [`MAX_SOUNDING`], so this always fits.
    pub fn release_all<E: From<OutNote>>(&mut self, out: &mut OutQueue<E>, timing: u32) {
        while let Some(note) = self.notes.pop() {
            if !out.push_off(
                timing,
                OutNote::Off {
                    timing,
                    channel: note.channel,
                    key: note.key,
                }
                .into(),
            ) {
                // Out of room this block: keep it and release it first thing next block.
                self.notes.push(note);
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Tempo;

    fn clock(start: f64, len: u32) -> BlockClock {
        BlockClock::new(Beats(start), Tempo::from_bpm(120.0).unwrap(), 48_000.0, len).unwrap()
    }

    fn drain(out: &mut OutQueue<OutNote>) -> Vec<OutNote> {
        let mut v = Vec::new();
        out.drain_sorted(|e| v.push(e));
        v
    }

    #[test]
    fn notes_end_at_their_sample() {
        let mut out = OutQueue::with_capacity(16, MAX_SOUNDING);
        let mut sounding = SoundingNotes::default();
        assert!(sounding.start(&mut out, 0, 0, 60, 0.5, Beats(1.0 + 10.0 / 24_000.0)));
        sounding.end_due(&mut out, &clock(0.0, 512));
        assert_eq!(drain(&mut out).len(), 1);
        sounding.end_due(&mut out, &clock(1.0, 512));
        assert_eq!(
            drain(&mut out),
            [OutNote::Off {
                timing: 10,
                channel: 0,
                key: 60
            }]
        );
        assert!(sounding.is_empty());
    }

    #[test]
    fn retrigger_releases_first() {
        let mut out = OutQueue::with_capacity(16, MAX_SOUNDING);
        let mut sounding = SoundingNotes::default();
        sounding.start(&mut out, 0, 0, 60, 0.5, Beats(10.0));
        sounding.start(&mut out, 5, 0, 60, 0.5, Beats(10.0));
        let events = drain(&mut out);
        assert!(matches!(events[1], OutNote::Off { timing: 5, .. }));
        assert!(matches!(events[2], OutNote::On { timing: 5, .. }));
        assert_eq!(sounding.len(), 1);
        sounding.release_all(&mut out, 7);
        assert_eq!(
            drain(&mut out),
            [OutNote::Off {
                timing: 7,
                channel: 0,
                key: 60
            }]
        );
    }
}
