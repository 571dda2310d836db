//! Musical time: beats on the host's timeline, tempo, time signature and the tokenizer's grid.
//!
//! Everything the plugin schedules is expressed in [`Beats`] (quarter notes, the unit hosts use
//! for `pos_beats`) rather than samples or seconds, so that a tempo change between two blocks moves
//! every future note with the music instead of leaving it at a stale sample position. Samples only
//! appear at the very last step, when a block turns beats into event offsets ([`BlockClock`]).

use std::ops::{Add, AddAssign, Sub};

/// Positions per quarter-note beat on the tokenizer's grid (MidiTok's REMI default at 4/4: 12
/// positions per beat, so both sixteenths and triplets land on it).
pub const TICKS_PER_BEAT: u32 = 12;

/// A position or duration in quarter-note beats on the host's timeline.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Beats(pub f64);

impl Beats {
    pub const ZERO: Beats = Beats(0.0);

    /// The nearest position on the tokenizer's grid.
    pub fn to_ticks(self) -> Ticks {
        Ticks((self.0 * f64::from(TICKS_PER_BEAT)).round() as i64)
    }

    pub fn max(self, other: Beats) -> Beats {
        if other > self {
            other
        } else {
            self
        }
    }

    pub fn min(self, other: Beats) -> Beats {
        if other < self {
            other
        } else {
            self
        }
    }
}

impl Add for Beats {
    type Output = Beats;
    fn add(self, rhs: Beats) -> Beats {
        Beats(self.0 + rhs.0)
    }
}

impl AddAssign for Beats {
    fn add_assign(&mut self, rhs: Beats) {
        self.0 += rhs.0;
    }
}

impl Sub for Beats {
    type Output = Beats;
    fn sub(self, rhs: Beats) -> Beats {
        Beats(self.0 - rhs.0)
    }
}

/// A position or duration on the tokenizer's grid, [`TICKS_PER_BEAT`] per beat.
///
/// Integer so that the inference thread and the engine agree exactly on what "on the grid" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ticks(pub i64);

impl Ticks {
    pub fn to_beats(self) -> Beats {
        Beats(self.0 as f64 / f64::from(TICKS_PER_BEAT))
    }
}

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

/// A time signature as the host reports it (`numerator / denominator`); always valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeSignature {
    numerator: u8,
    denominator: u8,
}

impl Default for TimeSignature {
    fn default() -> Self {
        TimeSignature {
            numerator: 4,
            denominator: 4,
        }
    }
}

impl TimeSignature {
    /// `None` unless the numerator is 1..=64 and the denominator a power of two up to 64.
    pub fn new(numerator: i32, denominator: i32) -> Option<TimeSignature> {
        let valid = (1..=64).contains(&numerator)
            && (1..=64).contains(&denominator)
            && (denominator as u32).is_power_of_two();
        valid.then_some(TimeSignature {
            numerator: numerator as u8,
            denominator: denominator as u8,
        })
    }

    pub fn numerator(self) -> u8 {
        self.numerator
    }

    pub fn denominator(self) -> u8 {
        self.denominator
    }

    /// Length of one bar in quarter-note beats (3/4 → 3, 6/8 → 3, 7/8 → 3.5).
    pub fn bar_length(self) -> Beats {
        Beats(f64::from(self.numerator) * 4.0 / f64::from(self.denominator))
    }

    /// Length of one bar on the grid.
    pub fn bar_ticks(self) -> Ticks {
        Ticks(
            i64::from(self.numerator) * 4 * i64::from(TICKS_PER_BEAT) / i64::from(self.denominator),
        )
    }

    /// Index of the bar containing `at`, counting bar 0 from beat 0 (hosts that start the song at
    /// another bar line only shift the numbering, not the bar lines, as long as the signature
    /// does not change).
    pub fn bar_index(self, at: Beats) -> i64 {
        // A hair of tolerance so that a position a rounding error before a bar line counts as on it.
        ((at.0 + 1e-9) / self.bar_length().0).floor() as i64
    }

    /// Position of the bar line starting bar `index`.
    pub fn bar_start(self, index: i64) -> Beats {
        Beats(index as f64 * self.bar_length().0)
    }

    /// The first bar line at or after `at`.
    pub fn next_bar_line(self, at: Beats) -> Beats {
        let bar = self.bar_length().0;
        let index = ((at.0 - 1e-9) / bar).ceil();
        Beats(index * bar)
    }
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

    pub fn is_empty(&self) -> bool {
        self.len == 0
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
    fn bar_lengths_follow_the_signature() {
        let four_four = TimeSignature::new(4, 4).unwrap();
        let three_four = TimeSignature::new(3, 4).unwrap();
        let six_eight = TimeSignature::new(6, 8).unwrap();
        assert_eq!(four_four.bar_length(), Beats(4.0));
        assert_eq!(three_four.bar_length(), Beats(3.0));
        assert_eq!(six_eight.bar_length(), Beats(3.0));
        assert_eq!(three_four.bar_ticks(), Ticks(36));
        assert!(TimeSignature::new(4, 3).is_none());
        assert!(TimeSignature::new(0, 4).is_none());
    }

    #[test]
    fn next_bar_line_is_inclusive() {
        let sig = TimeSignature::new(3, 4).unwrap();
        assert_eq!(sig.next_bar_line(Beats(3.0)), Beats(3.0));
        assert_eq!(sig.next_bar_line(Beats(3.0001)), Beats(6.0));
        assert_eq!(sig.next_bar_line(Beats(2.9999999999)), Beats(3.0));
        assert_eq!(sig.bar_index(Beats(2.9999999999)), 1);
        assert_eq!(sig.bar_index(Beats(5.9)), 1);
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

    #[test]
    fn grid_rounding() {
        assert_eq!(Beats(1.0 / 3.0).to_ticks(), Ticks(4));
        assert_eq!(Ticks(18).to_beats(), Beats(1.5));
    }
}
