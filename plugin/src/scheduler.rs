//! Playback: generated notes, scheduled in beats, emitted at their exact sample in each block.
//!
//! The inference thread streams notes through a ring buffer as the model samples them, with
//! onsets and ends in beats on the host's timeline. Each block converts them to sample offsets
//! with the block's own position and tempo, so a tempo change between blocks keeps every future
//! note on its beat. A note whose onset has already passed is dropped and counted, never played
//! late.

use std::sync::Arc;

use engine::time::Beats;
use rtrb::{Consumer, Producer, RingBuffer};

use crate::clock::BlockClock;
use crate::output::{OutNote, OutQueue};
use crate::shared::{Counters, Shared, TakeId, NO_TAKE};
use crate::sounding::SoundingNotes;

/// How many generated notes may wait between the inference thread and their onset.
pub const PLAYBACK_CAPACITY: usize = 1024;

/// A note one sample early or late is still on time: block positions from hosts carry rounding
/// error, and a note exactly on a block boundary must land in one of the two blocks.
const ON_TIME_TOLERANCE_SAMPLES: i64 = 2;

/// A generated note on the host's timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduledNote {
    /// The continuation it belongs to; notes of a cancelled take are discarded.
    pub take: TakeId,
    pub onset: Beats,
    pub end: Beats,
    pub key: u8,
    pub velocity: u8,
}

/// Creates the playback ring buffer; the producer goes to the inference thread.
pub fn playback_channel() -> (Producer<ScheduledNote>, Consumer<ScheduledNote>) {
    RingBuffer::new(PLAYBACK_CAPACITY)
}

/// The audio thread's playback state.
pub struct Scheduler {
    incoming: Consumer<ScheduledNote>,
    /// Notes taken off the ring buffer whose onset is still ahead, in onset order: a key struck
    /// twice in one block is released by its second note, and that release must come after the
    /// first note's NoteOn, not before it. Preallocated, never grown.
    pending: Vec<ScheduledNote>,
    sounding: SoundingNotes,
    /// The take whose notes are being played; a change means a new take started or the current
    /// one was cancelled, and everything from the old one must go.
    playing_take: TakeId,
    shared: Arc<Shared>,
}

impl Scheduler {
    pub fn new(incoming: Consumer<ScheduledNote>, shared: Arc<Shared>) -> Self {
        Scheduler {
            incoming,
            pending: Vec::with_capacity(PLAYBACK_CAPACITY),
            sounding: SoundingNotes::default(),
            playing_take: NO_TAKE,
            shared,
        }
    }

    #[cfg(test)]
    pub fn sounding(&self) -> usize {
        self.sounding.len()
    }

    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether a take is active or still has notes to play or release.
    pub fn is_busy(&self) -> bool {
        self.playing_take != NO_TAKE || !self.pending.is_empty() || !self.sounding.is_empty()
    }

    /// Releases every sounding generated note at `timing` and forgets everything pending. The
    /// active take, if any, is cancelled, so the inference thread stops streaming into it.
    pub fn stop_all<E: From<OutNote>>(&mut self, out: &mut OutQueue<E>, timing: u32) {
        self.shared.cancel_any_take();
        self.playing_take = NO_TAKE;
        self.pending.clear();
        while self.incoming.pop().is_ok() {}
        self.sounding.release_all(out, timing);
    }

    /// Emits this block's share of the generated notes: NoteOns on `channel` at their sample,
    /// NoteOffs of notes that end in this block.
    pub fn process<E: From<OutNote>>(
        &mut self,
        out: &mut OutQueue<E>,
        clock: &BlockClock,
        channel: u8,
    ) {
        self.follow_active_take(out);
        self.receive(out);

        // `pending` is in onset order, so the notes due in this block are a prefix and are
        // started in time order.
        let len = i64::from(clock.len());
        let mut due = 0;
        for note in &self.pending {
            let sample = clock.sample_of(note.onset);
            if sample >= len {
                break;
            }
            due += 1;
            if sample < -ON_TIME_TOLERANCE_SAMPLES {
                Counters::bump(&self.shared.counters.late_notes);
                continue;
            }
            let timing = sample.max(0) as u32;
            let velocity = f32::from(note.velocity) / 127.0;
            if !self
                .sounding
                .start(out, timing, channel, note.key, velocity, note.end)
            {
                Counters::bump(&self.shared.counters.overflow_notes);
            }
        }
        self.pending.drain(..due);
        self.sounding.end_due(out, clock);
    }

    /// Called when the transport is not running: nothing can be scheduled, but cancellations and
    /// new takes are still honoured and anything sounding is released.
    pub fn idle<E: From<OutNote>>(&mut self, out: &mut OutQueue<E>) {
        self.follow_active_take(out);
        self.sounding.release_all(out, 0);
    }

    fn follow_active_take<E: From<OutNote>>(&mut self, out: &mut OutQueue<E>) {
        let active = self.shared.active_take();
        if active != self.playing_take {
            self.sounding.release_all(out, 0);
            self.pending.retain(|note| note.take == active);
            self.playing_take = active;
        }
    }

    fn receive<E: From<OutNote>>(&mut self, out: &mut OutQueue<E>) {
        while self.pending.len() < self.pending.capacity() {
            let Ok(note) = self.incoming.pop() else { break };
            if note.take != self.playing_take {
                // The inference thread may have started this take after this block looked.
                self.follow_active_take(out);
            }
            if note.take == self.playing_take && note.take != NO_TAKE {
                // Notes arrive in onset order as the model writes them, so this is almost
                // always the end; within capacity, so it never allocates.
                let at = self
                    .pending
                    .partition_point(|p| p.onset.0.total_cmp(&note.onset.0).is_le());
                self.pending.insert(at, note);
            } // else: from a cancelled or replaced take
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::clock::Tempo;
    use crate::sounding::MAX_SOUNDING;

    struct Rig {
        scheduler: Scheduler,
        producer: Producer<ScheduledNote>,
        shared: Arc<Shared>,
        out: OutQueue<OutNote>,
    }

    fn rig() -> Rig {
        let shared = Arc::new(Shared::default());
        let (producer, consumer) = playback_channel();
        shared.active_take.store(1, Ordering::Release);
        Rig {
            scheduler: Scheduler::new(consumer, shared.clone()),
            producer,
            shared,
            out: OutQueue::with_capacity(256, MAX_SOUNDING),
        }
    }

    fn clock(start: f64, bpm: f64, len: u32) -> BlockClock {
        BlockClock::new(Beats(start), Tempo::from_bpm(bpm).unwrap(), 48_000.0, len).unwrap()
    }

    fn note(onset: f64, end: f64) -> ScheduledNote {
        ScheduledNote {
            take: 1,
            onset: Beats(onset),
            end: Beats(end),
            key: 64,
            velocity: 100,
        }
    }

    fn drain(out: &mut OutQueue<OutNote>) -> Vec<OutNote> {
        let mut v = Vec::new();
        out.drain_sorted(|e| v.push(e));
        v
    }

    #[test]
    fn notes_land_on_their_sample() {
        let mut r = rig();
        // 120 BPM at 48 kHz: 24 000 samples per beat; beat 1.0 is sample 24 000.
        r.producer.push(note(1.0, 1.5)).unwrap();
        let mut start = 0.0;
        let mut emitted = Vec::new();
        for block in 0..100u32 {
            let c = clock(start, 120.0, 512);
            r.scheduler.process(&mut r.out, &c, 2);
            for e in drain(&mut r.out) {
                emitted.push((block * 512 + e.timing(), e));
            }
            start = c.end().0;
        }
        assert_eq!(emitted.len(), 2);
        assert_eq!(emitted[0].0, 24_000);
        assert!(matches!(
            emitted[0].1,
            OutNote::On {
                channel: 2,
                key: 64,
                ..
            }
        ));
        assert_eq!(emitted[1].0, 36_000);
    }

    #[test]
    fn tempo_change_between_blocks_keeps_notes_on_beats() {
        let mut r = rig();
        r.producer.push(note(2.0, 3.0)).unwrap();
        // One beat at 120 BPM (24 000 samples), then 60 BPM: beat 2 is 48 000 samples later.
        let mut start = 0.0;
        let mut sample = 0u32;
        let mut onset_sample = None;
        while sample < 200_000 {
            let bpm = if start < 1.0 - 1e-9 { 120.0 } else { 60.0 };
            let c = clock(start, bpm, 500);
            r.scheduler.process(&mut r.out, &c, 0);
            for e in drain(&mut r.out) {
                if let OutNote::On { timing, .. } = e {
                    onset_sample = Some(sample + timing);
                }
            }
            start = c.end().0;
            sample += 500;
        }
        assert_eq!(onset_sample, Some(24_000 + 48_000));
    }

    /// Written in any order, two notes of one key in one block come out On, Off, On, Off.
    #[test]
    fn a_key_struck_twice_in_a_block_is_released_between_its_notes() {
        let mut r = rig();
        for (onset, end) in [(0.0, 0.0), (0.0, 0.0), (0.04, 0.05), (0.0, 0.01)] {
            r.producer.push(note(onset, end)).unwrap();
        }
        r.scheduler.process(&mut r.out, &clock(0.0, 120.0, 2048), 0);
        let mut sounding = 0;
        let mut last = 0;
        for e in drain(&mut r.out) {
            assert!(e.timing() >= last, "out of order: {e:?}");
            last = e.timing();
            sounding += match e {
                OutNote::On { .. } => 1,
                OutNote::Off { .. } => -1,
            };
            assert!((0..=1).contains(&sounding), "unbalanced at {e:?}");
        }
        assert_eq!(sounding, 0);
    }

    #[test]
    fn late_notes_are_dropped_and_counted() {
        let mut r = rig();
        r.producer.push(note(0.5, 1.0)).unwrap();
        r.scheduler.process(&mut r.out, &clock(1.0, 120.0, 512), 0);
        assert!(drain(&mut r.out).is_empty());
        assert_eq!(r.shared.counters.late_notes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn cancelled_take_is_released_and_forgotten() {
        let mut r = rig();
        r.producer.push(note(0.0, 4.0)).unwrap();
        r.producer.push(note(2.0, 4.0)).unwrap();
        r.scheduler.process(&mut r.out, &clock(0.0, 120.0, 512), 0);
        assert_eq!(drain(&mut r.out).len(), 1);
        assert!(r.shared.cancel_take(1));
        r.scheduler
            .process(&mut r.out, &clock(512.0 / 24_000.0, 120.0, 512), 0);
        assert!(matches!(
            drain(&mut r.out)[..],
            [OutNote::Off { timing: 0, .. }]
        ));
        assert_eq!(r.scheduler.pending(), 0);
        assert!(!r.scheduler.is_busy());
    }

    #[test]
    fn stop_all_cancels_the_take() {
        let mut r = rig();
        r.producer.push(note(0.0, 4.0)).unwrap();
        r.scheduler.process(&mut r.out, &clock(0.0, 120.0, 512), 0);
        drain(&mut r.out);
        r.scheduler.stop_all(&mut r.out, 3);
        assert_eq!(
            drain(&mut r.out),
            [OutNote::Off {
                timing: 3,
                channel: 0,
                key: 64
            }]
        );
        assert_eq!(r.shared.active_take(), NO_TAKE);
    }
}
