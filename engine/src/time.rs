//! Musical time as types, so that ticks of one resolution, beats and grid positions cannot be
//! mixed up by accident.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};

/// A point or span in MIDI ticks. The resolution (ticks per quarter note) travels with the
/// container that holds the ticks ([`crate::midi::Score`]), never inside the number.
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

impl Add for Beats {
    type Output = Beats;
    fn add(self, rhs: Beats) -> Beats {
        Beats(self.0 + rhs.0)
    }
}

impl Sub for Beats {
    type Output = Beats;
    fn sub(self, rhs: Beats) -> Beats {
        Beats(self.0 - rhs.0)
    }
}

/// A time signature as written in a score: `numerator / denominator`.
///
/// The denominator is stored as the note value (4 for a quarter), and construction refuses
/// anything that is not a power of two, so every value of this type describes a real meter.
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

    /// Length of one bar in quarter notes (3/4 → 3, 6/8 → 3, 12/8 → 6).
    pub fn quarters_per_bar(self) -> Beats {
        Beats(f64::from(self.numerator) * 4.0 / f64::from(self.denominator))
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
    fn ticks_and_quarters_round_trip() {
        let t = Ticks(720);
        assert_eq!(t.to_quarters(480), Beats(1.5));
        assert_eq!(Ticks::from_quarters(Beats(1.5), 480), t);
        assert_eq!(Ticks(3) - Ticks(5), Ticks::ZERO);
    }
}
