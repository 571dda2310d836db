//! The host's clock: tempo, and how one block maps musical time to samples.
//!
//! Everything the plugin schedules is expressed in [`Beats`] (quarter notes, the unit hosts use
//! for `pos_beats`) rather than samples or seconds, so that a tempo change between two blocks moves
//! every future note with the music instead of leaving it at a stale sample position. Samples only
//! appear at the very last step, when a block turns beats into event offsets ([`BlockClock`]).
//!
//! Musical time itself (beats, the grid, time signatures and bar lines) is the engine's
//! ([`engine::time`]); this module only holds what is real time and the host's.

use engine::time::{Beats, TimeSignature};

/// Tempo in quarter notes per minute; always finite and positive.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Tempo(f64);

impl Tempo {
    /// `None` for the zero, negative or NaN tempos a misbehaving host may report, so the rest of
    /// the plugin never divides by them.
    pub fn from_bpm(bpm: f64) -> Option<Tempo> {
        (bpm.is_finite() && bpm > 0.0).then_some(Tempo(bpm))
    }

    pub fn bpm(self) -> f64 {
        self.0
    }

    pub fn beats_per_second(self) -> f64 {
        self.0 / 60.0
    }
}

/// The time signature a host reports, if it describes a meter the plugin follows: a numerator
/// of 1..=64 and a power-of-two denominator up to 64. Anything else (zero, negative, a 4/3 from a
/// misbehaving host) is `None`, and the plugin keeps the last meter it knew.
pub fn host_time_signature(numerator: i32, denominator: i32) -> Option<TimeSignature> {
    let numerator = u8::try_from(numerator)
        .ok()
        .filter(|n| (1..=64).contains(n))?;
    let denominator = u8::try_from(denominator).ok().filter(|d| *d <= 64)?;
    TimeSignature::new(numerator, denominator)
}

/// How one block maps musical time to sample offsets: the transport position at its first sample
/// and the tempo that holds for the whole block (hosts split blocks on tempo changes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockClock {
    start: Beats,
    beats_per_sample: f64,
    len: u32,
}

impl BlockClock {
    pub fn new(start: Beats, tempo: Tempo, sample_rate: f32, len: u32) -> Option<BlockClock> {
        let sample_rate = f64::from(sample_rate);
        (sample_rate.is_finite() && sample_rate > 0.0 && start.0.is_finite()).then(|| BlockClock {
            start,
            beats_per_sample: tempo.beats_per_second() / sample_rate,
            len,
        })
    }

    pub fn start(&self) -> Beats {
        self.start
    }

    /// The position just after the last sample: where the next block should start if the
    /// transport keeps running.
    pub fn end(&self) -> Beats {
        self.at(self.len)
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn beats_per_sample(&self) -> f64 {
        self.beats_per_sample
    }

    /// The musical time of sample `offset` of this block.
    pub fn at(&self, offset: u32) -> Beats {
        Beats(self.start.0 + f64::from(offset) * self.beats_per_sample)
    }

    /// The sample (relative to this block's start, possibly negative or past its end) nearest to
    /// `at`.
    pub fn sample_of(&self, at: Beats) -> i64 {
        ((at.0 - self.start.0) / self.beats_per_sample).round() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_time_signatures_are_validated() {
        let three_four = host_time_signature(3, 4).unwrap();
        assert_eq!((three_four.numerator(), three_four.denominator()), (3, 4));
        assert!(host_time_signature(4, 3).is_none());
        assert!(host_time_signature(0, 4).is_none());
        assert!(host_time_signature(-4, 4).is_none());
        assert!(host_time_signature(65, 4).is_none());
        assert!(host_time_signature(4, 128).is_none());
        assert!(host_time_signature(300, 4).is_none());
    }

    #[test]
    fn block_clock_round_trips_samples() {
        let tempo = Tempo::from_bpm(120.0).unwrap();
        let clock = BlockClock::new(Beats(8.0), tempo, 48_000.0, 512).unwrap();
        // 120 BPM at 48 kHz: 24 000 samples per beat.
        assert_eq!(clock.sample_of(Beats(8.0 + 100.0 / 24_000.0)), 100);
        assert_eq!(clock.at(240), Beats(8.01));
        assert!(Tempo::from_bpm(0.0).is_none());
        assert!(Tempo::from_bpm(f64::NAN).is_none());
    }
}
