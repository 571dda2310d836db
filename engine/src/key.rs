//! Keys: the 24 major and minor keys, their names, their scales, and the Krumhansl–Schmuckler
//! estimate of the key of some notes (Krumhansl & Kessler's probe-tone profiles correlated with
//! the notes' duration-weighted pitch classes). Used to measure continuations (`metrics`) and to
//! lock them to a key (`steering`).

use std::str::FromStr;

use crate::midi::Note;

/// Krumhansl & Kessler's probe-tone ratings of the twelve pitch classes in C major (C first).
const MAJOR_PROFILE: [f64; 12] = [
    6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88,
];
/// The same for C minor.
const MINOR_PROFILE: [f64; 12] = [
    6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17,
];

/// A major or minor key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// Pitch class of the tonic, C = 0.
    pub tonic: u8,
    pub minor: bool,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = if self.minor { "minor" } else { "major" };
        write!(f, "{} {mode}", NAMES[usize::from(self.tonic % 12)])
    }
}

/// Pitch-class durations, the weighting the Krumhansl–Schmuckler algorithm uses (long notes
/// establish a key more than passing ones).
fn duration_profile(notes: &[Note]) -> [f64; 12] {
    let mut h = [0.0; 12];
    for n in notes {
        h[usize::from(n.pitch % 12)] += n.duration.0.max(1) as f64;
    }
    h
}

/// Pearson correlation; `None` when either side is constant.
fn pearson(a: &[f64; 12], b: &[f64; 12]) -> Option<f64> {
    let (ma, mb) = (a.iter().sum::<f64>() / 12.0, b.iter().sum::<f64>() / 12.0);
    let (mut num, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        num += (x - ma) * (y - mb);
        va += (x - ma) * (x - ma);
        vb += (y - mb) * (y - mb);
    }
    (va > 0.0 && vb > 0.0).then(|| num / (va * vb).sqrt())
}

/// How well the notes' duration-weighted pitch classes correlate with a key's profile, in
/// [-1, 1]. `None` for no notes (or all twelve classes equally long: no key at all).
pub fn key_correlation(notes: &[Note], key: Key) -> Option<f64> {
    let profile = if key.minor {
        MINOR_PROFILE
    } else {
        MAJOR_PROFILE
    };
    let mut rotated = [0.0; 12];
    for (pc, v) in profile.iter().enumerate() {
        rotated[(pc + usize::from(key.tonic)) % 12] = *v;
    }
    pearson(&duration_profile(notes), &rotated)
}

/// The Krumhansl–Schmuckler key estimate: the key of the 24 whose profile correlates best with
/// the notes, with that correlation. `None` for no notes.
pub fn estimate_key(notes: &[Note]) -> Option<(Key, f64)> {
    (0..12u8)
        .flat_map(|tonic| [false, true].map(|minor| Key { tonic, minor }))
        .filter_map(|key| key_correlation(notes, key).map(|r| (key, r)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// Pitch-class names, flats for the black keys except F#, as key signatures spell them most.
const NAMES: [&str; 12] = [
    "C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B",
];

/// The major scale's pitch classes above the tonic.
const MAJOR_SCALE: [u8; 7] = [0, 2, 4, 5, 7, 9, 11];
/// The minor scale's: the natural minor and the raised seventh. The leading tone is part of
/// nearly every minor-key piece (harmonic and melodic minor, every dominant chord), so a key lock
/// that forbade it would sound modal rather than minor.
const MINOR_SCALE: [u8; 8] = [0, 2, 3, 5, 7, 8, 10, 11];

impl Key {
    /// Whether a MIDI pitch belongs to the key's scale (see [`MINOR_SCALE`] for minor keys).
    pub fn contains(&self, pitch: u8) -> bool {
        let degree = (pitch % 12 + 12 - self.tonic % 12) % 12;
        if self.minor {
            MINOR_SCALE.contains(&degree)
        } else {
            MAJOR_SCALE.contains(&degree)
        }
    }

    /// The short name: `C`, `F#`, `Am`, `Ebm`.
    pub fn short_name(&self) -> String {
        format!(
            "{}{}",
            NAMES[usize::from(self.tonic % 12)],
            if self.minor { "m" } else { "" }
        )
    }
}

/// A key name that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a key: write a tonic A-G, optionally # or b, and m for minor (C, Am, F#m, Eb)"
)]
pub struct KeyNameError(pub String);

impl FromStr for Key {
    type Err = KeyNameError;

    /// `C`, `Am`, `F#m`, `Eb`, `Bbm`; also `C major`, `A minor` (any case for the words).
    fn from_str(text: &str) -> Result<Key, KeyNameError> {
        let bad = || KeyNameError(text.to_string());
        let (semitone, rest) = split_note_name(text.trim()).ok_or_else(bad)?;
        let minor = match rest.trim().to_ascii_lowercase().as_str() {
            "" | "maj" | "major" => false,
            "m" | "min" | "minor" => true,
            _ => return Err(bad()),
        };
        Ok(Key {
            tonic: semitone.rem_euclid(12) as u8,
            minor,
        })
    }
}

/// Reads a note name's letter (any case) and accidental (`#`, `b`, `♯`, `♭`): its semitones above
/// C, from -1 (`Cb`) to 12 (`B#`), and what follows it (an octave, a mode).
pub(crate) fn split_note_name(text: &str) -> Option<(i32, &str)> {
    let mut chars = text.chars();
    let base: i32 = match chars.next()?.to_ascii_uppercase() {
        'C' => 0,
        'D' => 2,
        'E' => 4,
        'F' => 5,
        'G' => 7,
        'A' => 9,
        'B' => 11,
        _ => return None,
    };
    let rest = chars.as_str();
    let mut after = rest.chars();
    let shift = match after.next() {
        Some('#' | '♯') => 1,
        Some('b' | '♭') => -1,
        _ => return Some((base, rest)),
    };
    Some((base + shift, after.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Ticks;

    fn scale_notes(tonic: u8, degrees: &[u8]) -> Vec<Note> {
        // Two octaves up and down the scale, tonic and fifth held longer, as a melody would.
        let mut notes = Vec::new();
        let mut t = 0;
        for octave in [60u8, 72] {
            for &d in degrees {
                let long = d == 0 || d == 7;
                let duration = if long { 48 } else { 24 };
                notes.push(Note {
                    start: Ticks(t),
                    duration: Ticks(duration),
                    pitch: octave + (tonic + d) % 12,
                    velocity: 80,
                });
                t += duration;
            }
        }
        notes
    }

    #[test]
    fn the_estimate_finds_c_major_and_a_minor() {
        let c = scale_notes(0, &MAJOR_SCALE);
        assert_eq!(estimate_key(&c).unwrap().0, "C".parse().unwrap());
        let a = scale_notes(9, &[0, 2, 3, 5, 7, 8, 10]);
        assert_eq!(estimate_key(&a).unwrap().0, "Am".parse().unwrap());
    }

    #[test]
    fn names_parse_and_print() {
        for (text, tonic, minor) in [
            ("C", 0, false),
            ("Am", 9, true),
            ("F#m", 6, true),
            ("Eb", 3, false),
            ("bbm", 10, true),
            ("A minor", 9, true),
            ("Cb", 11, false),
        ] {
            assert_eq!(text.parse::<Key>(), Ok(Key { tonic, minor }), "{text}");
        }
        for bad in ["", "H", "Cx", "C dorian", "#"] {
            assert!(bad.parse::<Key>().is_err(), "{bad}");
        }
        assert_eq!(
            Key {
                tonic: 6,
                minor: true
            }
            .short_name(),
            "F#m"
        );
        assert_eq!(
            Key {
                tonic: 3,
                minor: false
            }
            .to_string(),
            "Eb major"
        );
    }

    #[test]
    fn scales_hold_their_degrees_and_the_minor_leading_tone() {
        let c: Key = "C".parse().unwrap();
        let in_c: Vec<u8> = (60..72).filter(|&p| c.contains(p)).collect();
        assert_eq!(in_c, [60, 62, 64, 65, 67, 69, 71]);
        let a: Key = "Am".parse().unwrap();
        assert!(a.contains(68), "G# leads to A");
        assert!(!a.contains(70) && !a.contains(61));
    }
}
