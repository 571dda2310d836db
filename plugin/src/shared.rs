//! State shared between the audio thread, the inference thread and the GUI.
//!
//! The audio thread only touches the atomics here, which it may read and write without locking,
//! allocating or blocking. Richer state (error messages) lives in [`crate::status`], which the
//! audio thread never touches.

use std::sync::atomic::{fence, AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};

use engine::time::{Beats, TimeSignature};

use crate::clock::Tempo;
use crate::status::ModelStatus;

/// An `f64` stored as its bits, for values the audio thread publishes every block.
#[derive(Debug, Default)]
pub struct AtomicF64(AtomicU64);

impl AtomicF64 {
    pub fn new(value: f64) -> Self {
        AtomicF64(AtomicU64::new(value.to_bits()))
    }

    pub fn load(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Acquire))
    }

    pub fn store(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Release);
    }

    /// For fields published together under another synchronization (a sequence lock).
    fn load_relaxed(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    fn store_relaxed(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }
}

/// Identifies one continuation ("take"). Zero means "none": the audio thread cancels a take by
/// swapping the active id to zero, and the inference thread stops generating as soon as it sees
/// its id is no longer active. That one atomic is the whole cancellation protocol.
pub type TakeId = u32;
pub const NO_TAKE: TakeId = 0;

/// Counters the GUI shows; they only ever grow (until the plugin is reloaded).
#[derive(Debug, Default)]
pub struct Counters {
    /// Captured events dropped because the capture ring buffer was full.
    pub dropped_events: AtomicU64,
    /// Generated notes dropped because they arrived after their onset had passed.
    pub late_notes: AtomicU64,
    /// Generated notes dropped because the playback queue or the sounding-note table was full.
    pub overflow_notes: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A time signature in one atomic: numerator in the high byte, denominator in the low one. A
/// meter change (3/4 to 6/8) can then never be read half old, half new (6/4 or 3/8).
#[derive(Debug)]
struct AtomicMeter(AtomicU16);

impl AtomicMeter {
    fn pack(sig: TimeSignature) -> u16 {
        u16::from(sig.numerator()) << 8 | u16::from(sig.denominator())
    }

    fn unpack(bits: u16) -> TimeSignature {
        TimeSignature::new((bits >> 8) as u8, bits as u8).unwrap_or_default()
    }

    fn new(sig: TimeSignature) -> Self {
        Self(AtomicU16::new(Self::pack(sig)))
    }

    fn load(&self) -> TimeSignature {
        Self::unpack(self.0.load(Ordering::Relaxed))
    }

    fn store(&self, sig: TimeSignature) {
        self.0.store(Self::pack(sig), Ordering::Relaxed);
    }
}

/// The transport as the audio thread last saw it, for the inference thread's clock and the
/// editor's playhead.
///
/// The fields are read together (a position means nothing without its meter), so they are
/// published under a sequence lock: the audio thread, the only writer, never waits (two counter
/// bumps around its stores); a reader that raced a publish sees the counter move and reads again.
/// Every view is therefore one block's transport, never a mix of two.
#[derive(Debug)]
pub struct TransportSnapshot {
    /// Odd while a publish is in progress; bumped twice per publish.
    sequence: AtomicU32,
    playing: AtomicBool,
    /// Position at the end of the last processed block.
    position: AtomicF64,
    tempo: AtomicF64,
    meter: AtomicMeter,
}

impl Default for TransportSnapshot {
    fn default() -> Self {
        TransportSnapshot {
            sequence: AtomicU32::new(0),
            playing: AtomicBool::new(false),
            position: AtomicF64::new(0.0),
            tempo: AtomicF64::new(120.0),
            meter: AtomicMeter::new(TimeSignature::default()),
        }
    }
}

/// One block's transport, as [`TransportSnapshot::view`] reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransportView {
    pub playing: bool,
    pub position: Beats,
    pub tempo: Tempo,
    pub time_signature: TimeSignature,
}

impl TransportSnapshot {
    /// Publishes one block's transport. Audio thread only (the single writer).
    pub fn publish(&self, playing: bool, position: Beats, tempo: Tempo, sig: TimeSignature) {
        self.write(|| {
            self.position.store_relaxed(position.0);
            self.tempo.store_relaxed(tempo.bpm());
            self.meter.store(sig);
            self.playing.store(playing, Ordering::Relaxed);
        });
    }

    /// The transport stopped: the rest of the last view stands. Audio thread only.
    pub fn publish_stopped(&self) {
        self.write(|| self.playing.store(false, Ordering::Relaxed));
    }

    /// The writer's half of the sequence lock.
    fn write(&self, stores: impl FnOnce()) {
        let sequence = self.sequence.load(Ordering::Relaxed);
        self.sequence
            .store(sequence.wrapping_add(1), Ordering::Relaxed);
        // The odd count is visible before any of the stores.
        fence(Ordering::Release);
        stores();
        self.sequence
            .store(sequence.wrapping_add(2), Ordering::Release);
    }

    /// The last published block's transport, all fields from the same block.
    pub fn view(&self) -> TransportView {
        loop {
            let before = self.sequence.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let view = TransportView {
                playing: self.playing.load(Ordering::Relaxed),
                position: Beats(self.position.load_relaxed()),
                tempo: Tempo::from_bpm(self.tempo.load_relaxed())
                    .unwrap_or(Tempo::from_bpm(120.0).unwrap()),
                time_signature: self.meter.load(),
            };
            // The loads above complete before the sequence is read again.
            fence(Ordering::Acquire);
            if self.sequence.load(Ordering::Relaxed) == before {
                return view;
            }
        }
    }
}

/// Everything shared, in one `Arc`.
#[derive(Debug, Default)]
pub struct Shared {
    pub counters: Counters,
    pub transport: TransportSnapshot,
    /// The take the audio thread should play; [`NO_TAKE`] when none.
    pub active_take: AtomicU32,
    /// Bumped by the audio thread on every manual trigger (parameter edge, trigger note or CC);
    /// the inference thread compares it with the last value it served.
    pub triggers: AtomicU32,
    /// Where the last trigger happened on the timeline.
    pub trigger_position: AtomicF64,
    /// Bumped by the audio thread on every rising edge of the `Replay take` parameter; served
    /// like [`Self::triggers`], so a press is never lost between two polls of the inference
    /// thread, nor while it is still loading the model and restoring the project's take.
    pub replays: AtomicU32,
    /// Model state for the GUI; written by the inference thread only, never touched by the audio
    /// thread (it holds a lock).
    pub model: ModelStatus,
}

impl Shared {
    pub fn active_take(&self) -> TakeId {
        self.active_take.load(Ordering::Acquire)
    }

    /// Cancel `take` if it is still the active one; a newer take is left alone.
    pub fn cancel_take(&self, take: TakeId) -> bool {
        take != NO_TAKE
            && self
                .active_take
                .compare_exchange(take, NO_TAKE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    pub fn cancel_any_take(&self) -> TakeId {
        self.active_take.swap(NO_TAKE, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_meter_survives_packing() {
        for numerator in 1..=64u8 {
            for denominator in [1u8, 2, 4, 8, 16, 32, 64] {
                if let Some(sig) = TimeSignature::new(numerator, denominator) {
                    assert_eq!(AtomicMeter::unpack(AtomicMeter::pack(sig)), sig);
                }
            }
        }
    }

    /// A writer flips between two transports as fast as it can (3/4 at 90 BPM and beat 3, 6/8
    /// at 140 BPM and beat 7); every view a reader takes meanwhile is one of them, whole.
    #[test]
    fn a_view_is_never_torn_between_two_blocks() {
        let snapshot = std::sync::Arc::new(TransportSnapshot::default());
        let a = (
            Beats(3.0),
            Tempo::from_bpm(90.0).unwrap(),
            TimeSignature::new(3, 4).unwrap(),
        );
        let b = (
            Beats(7.0),
            Tempo::from_bpm(140.0).unwrap(),
            TimeSignature::new(6, 8).unwrap(),
        );
        snapshot.publish(true, a.0, a.1, a.2);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let writer = {
            let (snapshot, stop) = (snapshot.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut flips = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (position, tempo, sig) = if flips.is_multiple_of(2) { b } else { a };
                    snapshot.publish(true, position, tempo, sig);
                    flips += 1;
                }
                flips
            })
        };
        // Read until both transports have been seen many times, so the writer really ran
        // while the reader read (on a busy machine it may start only after thousands of reads).
        let mut seen = [0usize; 2];
        let mut reads = 0usize;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while reads < 200_000 || seen[0] < 10_000 || seen[1] < 10_000 {
            reads += 1;
            if reads.is_multiple_of(4096) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the writer never got to run: seen {seen:?} in {reads} reads"
                );
            }
            let view = snapshot.view();
            let got = (view.position, view.tempo, view.time_signature);
            if got == a {
                seen[0] += 1;
            } else if got == b {
                seen[1] += 1;
            } else {
                panic!("a torn view: {view:?}");
            }
        }
        stop.store(true, Ordering::Relaxed);
        let flips = writer.join().unwrap();
        assert!(flips > 0);
        assert_eq!(seen[0] + seen[1], reads);
    }
}
