//! The token kinds of REMI and the vocabulary that numbers them.
//!
//! Tokens are typed values, not strings: the hot paths (encoding, grammar, sampling) look at
//! [`TokenKind`] and integer payloads, and strings exist only for printing and for comparing with
//! MidiTok's files.

use std::fmt;
use std::str::FromStr;

use crate::time::TimeSignature;

/// A token id, MidiTok's numbering.
pub type TokenId = u32;

/// Special tokens MidiTok places first in the vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Special {
    Pad,
    Bos,
    Eos,
    Mask,
}

impl Special {
    fn name(self) -> &'static str {
        match self {
            Special::Pad => "PAD",
            Special::Bos => "BOS",
            Special::Eos => "EOS",
            Special::Mask => "MASK",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "PAD" => Special::Pad,
            "BOS" => Special::Bos,
            "EOS" => Special::Eos,
            "MASK" => Special::Mask,
            _ => return None,
        })
    }
}

/// A step of the onset grid inside a bar: `max_num_pos_per_beat` steps per beat, where a beat is
/// the time signature's denominator (a quarter in 4/4, an eighth in 6/8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(pub u16);

/// A duration as MidiTok writes it: `beats` whole beats plus `positions / resolution` of a beat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DurationValue {
    pub beats: u8,
    pub positions: u8,
    pub resolution: u8,
}

impl DurationValue {
    /// Length in ticks at a given number of ticks per beat (always divisible by the resolution).
    pub fn ticks(self, ticks_per_beat: u64) -> u64 {
        (u64::from(self.beats) * u64::from(self.resolution) + u64::from(self.positions))
            * ticks_per_beat
            / u64::from(self.resolution)
    }

    /// Length in beats of the time signature's denominator.
    pub fn in_beats(self) -> f64 {
        f64::from(self.beats) + f64::from(self.positions) / f64::from(self.resolution)
    }
}

/// One REMI token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Token {
    Special(Special),
    /// Starts every bar.
    Bar,
    /// Follows every `Bar`: the bar's meter.
    TimeSig(TimeSignature),
    /// Onset of the following notes inside the bar.
    Position(Position),
    /// MIDI key of a note.
    Pitch(u8),
    /// Velocity of the note, one of the quantized bins.
    Velocity(u8),
    /// Length of the note.
    Duration(DurationValue),
}

/// What a token is, without its value: the grammar and the decoder branch on this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    Pad,
    Bos,
    Eos,
    Mask,
    Bar,
    TimeSig,
    Position,
    Pitch,
    Velocity,
    Duration,
}

impl Token {
    pub fn kind(self) -> TokenKind {
        match self {
            Token::Special(Special::Pad) => TokenKind::Pad,
            Token::Special(Special::Bos) => TokenKind::Bos,
            Token::Special(Special::Eos) => TokenKind::Eos,
            Token::Special(Special::Mask) => TokenKind::Mask,
            Token::Bar => TokenKind::Bar,
            Token::TimeSig(_) => TokenKind::TimeSig,
            Token::Position(_) => TokenKind::Position,
            Token::Pitch(_) => TokenKind::Pitch,
            Token::Velocity(_) => TokenKind::Velocity,
            Token::Duration(_) => TokenKind::Duration,
        }
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Special(s) => write!(f, "{}_None", s.name()),
            Token::Bar => f.write_str("Bar_None"),
            Token::TimeSig(ts) => write!(f, "TimeSig_{ts}"),
            Token::Position(p) => write!(f, "Position_{}", p.0),
            Token::Pitch(p) => write!(f, "Pitch_{p}"),
            Token::Velocity(v) => write!(f, "Velocity_{v}"),
            Token::Duration(d) => {
                write!(f, "Duration_{}.{}.{}", d.beats, d.positions, d.resolution)
            }
        }
    }
}

/// A token string that is not a REMI token this engine knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a REMI token")]
pub struct ParseTokenError(pub String);

impl FromStr for Token {
    type Err = ParseTokenError;

    /// Parses MidiTok's `Type_Value` spelling.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseTokenError(s.to_string());
        let (kind, value) = s.split_once('_').ok_or_else(err)?;
        let num = |v: &str| v.parse::<u8>().map_err(|_| err());
        Ok(match (kind, value) {
            ("Bar", "None") => Token::Bar,
            (name, "None") => Token::Special(Special::from_name(name).ok_or_else(err)?),
            ("TimeSig", v) => {
                let (n, d) = v.split_once('/').ok_or_else(err)?;
                Token::TimeSig(TimeSignature::new(num(n)?, num(d)?).ok_or_else(err)?)
            }
            ("Position", v) => Token::Position(Position(v.parse().map_err(|_| err())?)),
            ("Pitch", v) => Token::Pitch(num(v)?),
            ("Velocity", v) => Token::Velocity(num(v)?),
            ("Duration", v) => {
                let mut parts = v.split('.');
                let mut next = || parts.next().ok_or_else(err).and_then(num);
                let d = DurationValue {
                    beats: next()?,
                    positions: next()?,
                    resolution: next()?,
                };
                if parts.next().is_some() || d.resolution == 0 {
                    return Err(err());
                }
                Token::Duration(d)
            }
            _ => return Err(err()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_strings_round_trip() {
        for s in [
            "PAD_None",
            "BOS_None",
            "Bar_None",
            "TimeSig_6/8",
            "Position_143",
            "Pitch_21",
            "Velocity_127",
            "Duration_0.1.12",
            "Duration_12.0.6",
        ] {
            let t: Token = s.parse().unwrap();
            assert_eq!(t.to_string(), s);
        }
        for bad in [
            "Pitch",
            "Pitch_x",
            "TimeSig_3/5",
            "Duration_1.2",
            "Duration_1.2.0",
            "Foo_None",
        ] {
            assert!(bad.parse::<Token>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn duration_ticks_follow_miditok() {
        let d = DurationValue {
            beats: 2,
            positions: 5,
            resolution: 8,
        };
        assert_eq!(d.ticks(384), 1008);
    }
}
