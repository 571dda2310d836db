//! Musical time as types, so that ticks of one resolution, beats and grid positions cannot be
//! mixed up by accident.
//!
//! This module is the one home of musical time for the whole workspace, the plugin included:
//!
//! - [`Beats`]: quarter notes, as `f64`; the unit hosts use for their transport and the unit in
//!   which streamed notes are handed out.
//! - [`Ticks`]: unsigned MIDI ticks at a resolution carried by their container (a file's, or the
//!   tokenizer's [`crate::tokenizer::Tokenizer::ticks_per_quarter`]).
//! - [`GridTicks`]: signed positions on the plugin's fixed scheduling grid,
//!   [`GridTicks::PER_QUARTER`] to a quarter note, relative to a bar line.
//! - [`TimeSignature`]: one meter, with the bar arithmetic (bar lengths, bar lines, bar indices)
//!   that both the score side and the plugin's timeline need.
//!
//! Real-time notions (tempo, samples, the host's blocks) are not musical time and stay in the
//! plugin.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};

/// A point or span in MIDI ticks. The resolution (ticks per quarter note) travels with the
/// container that holds the ticks ([`crate::midi::Score`]), never inside the number.
///
/// These are file and tokenizer ticks, at any resolution; the plugin's fixed grid has its own
/// type, [`GridTicks`], so that the two cannot be mixed up without an explicit conversion.
///
/// 64 bits because a MIDI file's delta times are summed: a hostile file can push the running
/// total past `u32::MAX`, and overflow must be impossible rather than checked everywhere.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticks(pub u64);

impl Ticks {
    pub const ZERO: Ticks = Ticks(0);

    /// Converts to quarter-note beats at the given resolution.
    pub fn to_quarters(self, ticks_per_quarter: u16) -> Beats {
        Beats(self.0 as f64 / f64::from(ticks_per_quarter))
    }

    /// The nearest tick to a time in quarter notes at the given resolution.
    pub fn from_quarters(beats: Beats, ticks_per_quarter: u16) -> Ticks {
        Ticks((beats.0.max(0.0) * f64::from(ticks_per_quarter)).round() as u64)
    }
}

impl Add for Ticks {
    type Output = Ticks;
    fn add(self, rhs: Ticks) -> Ticks {
        Ticks(self.0.saturating_add(rhs.0))
    }
}

impl AddAssign for Ticks {
    fn add_assign(&mut self, rhs: Ticks) {
        *self = *self + rhs;
    }
}

impl Sub for Ticks {
    type Output = Ticks;
    fn sub(self, rhs: Ticks) -> Ticks {
        Ticks(self.0.saturating_sub(rhs.0))
    }
}

impl fmt::Display for Ticks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ticks", self.0)
    }
}

/// Time in quarter-note beats, the unit hosts use for their transport (`pos_beats`), and the unit
/// in which streamed notes are given to a player.
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd)]
pub struct Beats(pub f64);

impl Beats {
    pub const ZERO: Beats = Beats(0.0);

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

/// A position or duration on the plugin's scheduling grid, [`GridTicks::PER_QUARTER`] to a
/// quarter note, usually counted from a bar line.
///
/// Distinct from [`Ticks`] on purpose: file and tokenizer ticks come at whatever resolution their
/// container says and are never negative, while the grid has one fixed resolution and is signed
/// (a note rounded a hair before the listening window's first bar line sits at a negative tick).
/// Integer so that the plugin's inference thread and the engine agree exactly on what "on the
/// grid" means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GridTicks(pub i64);

impl GridTicks {
    /// Grid positions per quarter note: 12, so that both sixteenths and eighth-note triplets land
    /// on the grid. It is the finest resolution of the reference tokenizer's REMI vocabulary in
    /// quarter-note meters (MidiTok's `beat_res` of 12 positions per beat over the first beats),
    /// which is what makes a note on the grid a note the model can say.
    ///
    /// It must agree with the tokenizer wherever the plugin turns grid notes into a score and
    /// back (`plugin/src/engine_continuer.rs`): there the score is written at this resolution and
    /// the tokenizer resamples it to its own [`crate::tokenizer::Tokenizer::ticks_per_quarter`]
    /// (24 for the reference tokenizer, whose eighth-note meters have 12 positions per eighth), so
    /// a tokenizer with a coarser grid would quantize the plugin's notes once more, and one with a
    /// finer grid is heard at this resolution only.
    pub const PER_QUARTER: u16 = 12;

    /// The time in quarter notes.
    pub fn to_quarters(self) -> Beats {
        Beats(self.0 as f64 / f64::from(Self::PER_QUARTER))
    }

    /// The nearest grid position to a time in quarter notes.
    pub fn from_quarters(beats: Beats) -> GridTicks {
        GridTicks((beats.0 * f64::from(Self::PER_QUARTER)).round() as i64)
    }
}

/// A time signature as written in a score: `numerator / denominator`.
///
/// The denominator is stored as the note value (4 for a quarter), and construction refuses
/// anything that is not a power of two, so every value of this type describes a real meter.
///
/// Bars are counted on a timeline in quarter notes ([`Beats`]) from bar 0 at beat 0, in this one
/// meter: a timeline that starts at another bar line only shifts the numbering, not the bar lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimeSignature {
    numerator: u8,
    denominator: u8,
}

impl TimeSignature {
    /// 4/4, what MIDI assumes when a file says nothing.
    pub const COMMON: TimeSignature = TimeSignature {
        numerator: 4,
        denominator: 4,
    };

    /// `None` for a zero numerator or a denominator that is not a power of two (1..=128).
    pub fn new(numerator: u8, denominator: u8) -> Option<Self> {
        (numerator > 0 && denominator > 0 && denominator.is_power_of_two()).then_some(Self {
            numerator,
            denominator,
        })
    }

    pub fn numerator(self) -> u8 {
        self.numerator
    }

    pub fn denominator(self) -> u8 {
        self.denominator
    }

    /// Length of one bar in quarter notes (3/4 → 3, 6/8 → 3, 7/8 → 3.5, 12/8 → 6).
    pub fn quarters_per_bar(self) -> Beats {
        Beats(f64::from(self.numerator) * 4.0 / f64::from(self.denominator))
    }

    /// Length of one bar on the plugin's grid (rounded down in the rare meters whose bar is not a
    /// whole number of grid ticks, such as 3/32).
    pub fn grid_ticks_per_bar(self) -> GridTicks {
        GridTicks(
            i64::from(self.numerator) * 4 * i64::from(GridTicks::PER_QUARTER)
                / i64::from(self.denominator),
        )
    }

    /// Index of the bar containing `at`, counting bar 0 from beat 0.
    pub fn bar_index(self, at: Beats) -> i64 {
        // A hair of tolerance so that a position a rounding error before a bar line counts as on it.
        ((at.0 + 1e-9) / self.quarters_per_bar().0).floor() as i64
    }

    /// Position of the bar line starting bar `index`.
    pub fn bar_start(self, index: i64) -> Beats {
        Beats(index as f64 * self.quarters_per_bar().0)
    }

    /// The first bar line at or after `at`.
    pub fn next_bar_line(self, at: Beats) -> Beats {
        let bar = self.quarters_per_bar().0;
        let index = ((at.0 - 1e-9) / bar).ceil();
        Beats(index * bar)
    }
}

impl Default for TimeSignature {
    /// [`TimeSignature::COMMON`].
    fn default() -> Self {
        TimeSignature::COMMON
    }
}

impl fmt::Display for TimeSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.numerator, self.denominator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_signature_refuses_impossible_meters() {
        assert!(TimeSignature::new(0, 4).is_none());
        assert!(TimeSignature::new(3, 0).is_none());
        assert!(TimeSignature::new(3, 6).is_none());
        assert_eq!(
            TimeSignature::new(6, 8).unwrap().quarters_per_bar(),
            Beats(3.0)
        );
    }

    #[test]
    fn bar_lengths_follow_the_signature() {
        let four_four = TimeSignature::new(4, 4).unwrap();
        let three_four = TimeSignature::new(3, 4).unwrap();
        let six_eight = TimeSignature::new(6, 8).unwrap();
        assert_eq!(four_four.quarters_per_bar(), Beats(4.0));
        assert_eq!(three_four.quarters_per_bar(), Beats(3.0));
        assert_eq!(six_eight.quarters_per_bar(), Beats(3.0));
        assert_eq!(three_four.grid_ticks_per_bar(), GridTicks(36));
        assert!(TimeSignature::new(4, 3).is_none());
        assert!(TimeSignature::new(0, 4).is_none());
        assert_eq!(TimeSignature::default(), TimeSignature::COMMON);
    }

    #[test]
    fn next_bar_line_is_inclusive() {
        let sig = TimeSignature::new(3, 4).unwrap();
        assert_eq!(sig.next_bar_line(Beats(3.0)), Beats(3.0));
        assert_eq!(sig.next_bar_line(Beats(3.0001)), Beats(6.0));
        assert_eq!(sig.next_bar_line(Beats(2.9999999999)), Beats(3.0));
        assert_eq!(sig.bar_index(Beats(2.9999999999)), 1);
        assert_eq!(sig.bar_index(Beats(5.9)), 1);
        assert_eq!(sig.bar_start(2), Beats(6.0));
    }

    #[test]
    fn grid_rounding() {
        assert_eq!(GridTicks::from_quarters(Beats(1.0 / 3.0)), GridTicks(4));
        assert_eq!(GridTicks(18).to_quarters(), Beats(1.5));
    }

    #[test]
    fn ticks_and_quarters_round_trip() {
        let t = Ticks(720);
        assert_eq!(t.to_quarters(480), Beats(1.5));
        assert_eq!(Ticks::from_quarters(Beats(1.5), 480), t);
        assert_eq!(Ticks(3) - Ticks(5), Ticks::ZERO);
    }
}
