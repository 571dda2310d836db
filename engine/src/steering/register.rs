//! Register: the pitch range a continuation stays in, written as MIDI numbers or note names.

use std::fmt;
use std::str::FromStr;

/// Note names with sharps, MIDI numbering with middle C = C4 = 60.
const NAMES: [&str; 12] = [
    "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B",
];

/// The name of a MIDI pitch, middle C = `C4` (60).
pub fn note_name(pitch: u8) -> String {
    format!(
        "{}{}",
        NAMES[usize::from(pitch % 12)],
        i32::from(pitch / 12) - 1
    )
}

/// A pitch written as a MIDI number (`60`) or a note name (`C4`, `F#3`, `Bb5`, `C-1`).
pub fn parse_pitch(text: &str) -> Result<u8, RangeError> {
    let t = text.trim();
    let bad = || RangeError::Pitch(t.to_string());
    if let Ok(n) = t.parse::<u8>() {
        return if n <= 127 { Ok(n) } else { Err(bad()) };
    }
    let (semitone, octave) = crate::key::split_note_name(t).ok_or_else(bad)?;
    let octave: i32 = octave.parse().map_err(|_| bad())?;
    let midi = (octave + 1) * 12 + semitone;
    u8::try_from(midi)
        .ok()
        .filter(|&p| p <= 127)
        .ok_or_else(bad)
}

/// Inclusive MIDI pitch bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PitchRange {
    pub low: u8,
    pub high: u8,
}

/// A range that could not be read or holds no pitch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("`{0}` is not a pitch: write a MIDI number 0-127 or a note name such as C4 (= 60), F#3, Bb5")]
    Pitch(String),
    #[error("`{0}` is not a range: write LOW-HIGH, e.g. C3-C6 or 48-84")]
    Format(String),
    #[error("the range {0} is empty: its low end is above its high end")]
    Empty(PitchRange),
}

impl PitchRange {
    /// A range from `low` to `high`, both included; empty ranges are refused.
    pub fn new(low: u8, high: u8) -> Result<Self, RangeError> {
        let range = PitchRange { low, high };
        if low > high {
            return Err(RangeError::Empty(range));
        }
        Ok(range)
    }

    pub fn contains(&self, pitch: u8) -> bool {
        (self.low..=self.high).contains(&pitch)
    }
}

impl fmt::Display for PitchRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{} ({}-{})",
            note_name(self.low),
            note_name(self.high),
            self.low,
            self.high
        )
    }
}

impl FromStr for PitchRange {
    type Err = RangeError;

    /// `LOW-HIGH` in MIDI numbers or names: `48-84`, `C3-C6`, `C-1-G9`.
    fn from_str(text: &str) -> Result<Self, RangeError> {
        let t = text.trim();
        // Any `-` could be the separator (`C-1` holds one too): take the first split whose two
        // sides both read as pitches.
        for (i, _) in t.match_indices('-') {
            if let (Ok(low), Ok(high)) = (parse_pitch(&t[..i]), parse_pitch(&t[i + 1..])) {
                return PitchRange::new(low, high);
            }
        }
        Err(RangeError::Format(t.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pitches_and_ranges_read_as_musicians_write_them() {
        assert_eq!(parse_pitch("C4"), Ok(60));
        assert_eq!(parse_pitch("60"), Ok(60));
        assert_eq!(parse_pitch("F#3"), Ok(54));
        assert_eq!(parse_pitch("Bb5"), Ok(82));
        assert_eq!(parse_pitch("C-1"), Ok(0));
        assert_eq!(parse_pitch("G9"), Ok(127));
        assert!(parse_pitch("G#9").is_err() && parse_pitch("H2").is_err());
        assert_eq!("C3-C6".parse(), Ok(PitchRange { low: 48, high: 84 }));
        assert_eq!("48-84".parse(), Ok(PitchRange { low: 48, high: 84 }));
        assert_eq!("C-1-G9".parse(), Ok(PitchRange { low: 0, high: 127 }));
        assert!(matches!(
            "C6-C3".parse::<PitchRange>(),
            Err(RangeError::Empty(_))
        ));
        assert!(matches!(
            "C3".parse::<PitchRange>(),
            Err(RangeError::Format(_))
        ));
        assert_eq!(note_name(61), "C#4");
        assert_eq!(
            PitchRange { low: 48, high: 84 }.to_string(),
            "C3-C6 (48-84)"
        );
    }
}
