//! State shared between the audio thread, the inference thread and the GUI.
//!
//! The audio thread only touches the atomics here, which it may read and write without locking,
//! allocating or blocking. Richer state (error messages) lives in [`crate::status`], which the
//! audio thread never touches.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

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

/// The transport as the audio thread last saw it, for the inference thread's clock.
#[derive(Debug)]
pub struct TransportSnapshot {
    playing: AtomicBool,
    /// Position at the end of the last processed block.
    position: AtomicF64,
    tempo: AtomicF64,
    numerator: AtomicU8,
    denominator: AtomicU8,
}

impl Default for TransportSnapshot {
    fn default() -> Self {
        TransportSnapshot {
            playing: AtomicBool::new(false),
            position: AtomicF64::new(0.0),
            tempo: AtomicF64::new(120.0),
            numerator: AtomicU8::new(4),
            denominator: AtomicU8::new(4),
        }
    }
}

/// A consistent-enough copy of [`TransportSnapshot`] (fields may come from adjacent blocks, which
/// is harmless at the inference thread's millisecond resolution).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransportView {
    pub playing: bool,
    pub position: Beats,
    pub tempo: Tempo,
    pub time_signature: TimeSignature,
}

impl TransportSnapshot {
    pub fn publish(&self, playing: bool, position: Beats, tempo: Tempo, sig: TimeSignature) {
        self.position.store(position.0);
        self.tempo.store(tempo.bpm());
        self.numerator.store(sig.numerator(), Ordering::Relaxed);
        self.denominator.store(sig.denominator(), Ordering::Relaxed);
        self.playing.store(playing, Ordering::Release);
    }

    pub fn publish_stopped(&self) {
        self.playing.store(false, Ordering::Release);
    }

    pub fn view(&self) -> TransportView {
        TransportView {
            playing: self.playing.load(Ordering::Acquire),
            position: Beats(self.position.load()),
            tempo: Tempo::from_bpm(self.tempo.load()).unwrap_or(Tempo::from_bpm(120.0).unwrap()),
            time_signature: TimeSignature::new(
                self.numerator.load(Ordering::Relaxed),
                self.denominator.load(Ordering::Relaxed),
            )
            .unwrap_or_default(),
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
