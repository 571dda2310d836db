//! Ids → notes, as MidiTok 3.1.0's REMI decodes them.
//!
//! Decoding is total: tokens out of place are skipped (a `Pitch` not followed by `Velocity` and
//! `Duration` makes no note), exactly as MidiTok does, so any id sequence gives a valid score.
//! [`NoteDecoder`] does it one token at a time, so generation can hand out each note the moment
//! its `Duration` is sampled; [`Tokenizer::decode`] is that decoder run over a whole sequence.

use super::{Token, TokenId, Tokenizer, TokenizerError};
use crate::midi::{Note, Score, TempoChange, TimeSignatureChange};
use crate::time::{Ticks, TimeSignature};

impl Tokenizer {
    /// The resolution of decoded scores: MidiTok's `time_division` (ticks per beat in */4).
    pub fn ticks_per_quarter(&self) -> u16 {
        self.config.ticks_per_beat_for(4) as u16
    }

    /// Decodes ids into a score at [`Tokenizer::ticks_per_quarter`], at 120 BPM (tempo is not
    /// in the vocabulary). Special tokens are ignored.
    pub fn decode(&self, ids: &[TokenId]) -> Result<Score, TokenizerError> {
        let tokens = ids
            .iter()
            .map(|&id| {
                self.token(id).ok_or(TokenizerError::UnknownId {
                    id,
                    vocab_size: self.vocab_size(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.decode_tokens(&tokens))
    }

    /// Decodes typed tokens (see [`Tokenizer::decode`]).
    pub fn decode_tokens(&self, tokens: &[Token]) -> Score {
        // MidiTok takes the first meter from the first TimeSig before any note token.
        let first = tokens
            .iter()
            .take_while(|t| !matches!(t, Token::Pitch(_) | Token::Velocity(_) | Token::Duration(_)))
            .find_map(|t| match t {
                Token::TimeSig(ts) => Some(*ts),
                _ => None,
            })
            .unwrap_or(TimeSignature::COMMON);
        let mut decoder = NoteDecoder::new(self, first);
        let mut time_signatures = vec![TimeSignatureChange {
            time: Ticks::ZERO,
            signature: first,
        }];
        let mut notes = Vec::new();
        for &token in tokens {
            match decoder.push(token) {
                Decoded::Note(note) => notes.push(note),
                Decoded::Meter(change) => time_signatures.push(change),
                Decoded::Nothing => {}
            }
        }
        Score {
            ticks_per_quarter: self.ticks_per_quarter(),
            notes,
            time_signatures,
            tempos: vec![TempoChange {
                time: Ticks::ZERO,
                micros_per_quarter: 500_000,
            }],
            end: Ticks::ZERO,
        }
    }
}

/// What one token completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    Nothing,
    /// A `Duration` closed a `Pitch Velocity Duration` triple.
    Note(Note),
    /// A `TimeSig` changed the meter (from the bar it starts).
    Meter(TimeSignatureChange),
}

/// Decodes tokens one at a time into notes at [`Tokenizer::ticks_per_quarter`].
#[derive(Clone, Debug)]
pub struct NoteDecoder {
    pitch_range: (u8, u8),
    tpq: i64,
    positions_per_beat: i64,
    max_denominator: u8,
    meter: TimeSignature,
    ticks_per_bar: i64,
    ticks_per_pos: i64,
    ticks_per_beat: u64,
    current_tick: i64,
    bar_start: i64,
    current_bar: i64,
    /// The last two tokens, for recognising `Pitch Velocity Duration`.
    previous: [Option<Token>; 2],
}

impl NoteDecoder {
    /// A decoder at tick 0 in `meter`, before any `Bar`.
    pub fn new(tok: &Tokenizer, meter: TimeSignature) -> Self {
        let mut d = NoteDecoder {
            pitch_range: tok.config.pitch_range,
            tpq: i64::from(tok.ticks_per_quarter()),
            positions_per_beat: i64::from(tok.config.max_positions_per_beat()).max(1),
            max_denominator: tok.config.max_denominator(),
            meter,
            ticks_per_bar: 1,
            ticks_per_pos: 1,
            ticks_per_beat: 1,
            current_tick: 0,
            bar_start: 0,
            current_bar: -1,
            previous: [None, None],
        };
        d.set_meter(meter);
        d
    }

    fn set_meter(&mut self, ts: TimeSignature) {
        self.meter = ts;
        let beat_at_tpq = if ts.denominator() == 4 {
            self.tpq
        } else {
            (self.tpq as f64 * (4.0 / f64::from(ts.denominator()))) as i64
        };
        self.ticks_per_bar = (beat_at_tpq * i64::from(ts.numerator())).max(1);
        // MidiTok's `_tpb_per_ts`: the tokenizer's own ticks per beat for this denominator.
        let tpb =
            self.positions_per_beat * i64::from((self.max_denominator / ts.denominator()).max(1));
        self.ticks_per_beat = tpb as u64;
        self.ticks_per_pos = (tpb / self.positions_per_beat).max(1);
    }

    /// Consumes one token.
    pub fn push(&mut self, token: Token) -> Decoded {
        let previous = self.previous;
        self.previous = [previous[1], Some(token)];
        match token {
            Token::Bar => {
                self.current_bar += 1;
                if self.current_bar > 0 {
                    self.current_tick = self.bar_start + self.ticks_per_bar;
                }
                self.bar_start = self.current_tick;
            }
            Token::Position(p) => {
                if self.current_bar == -1 {
                    self.current_bar = 0;
                }
                self.current_tick = self.bar_start + i64::from(p.0) * self.ticks_per_pos;
            }
            Token::Duration(d) => {
                if let [Some(Token::Pitch(pitch)), Some(Token::Velocity(velocity))] = previous {
                    if (self.pitch_range.0..=self.pitch_range.1).contains(&pitch) {
                        return Decoded::Note(Note {
                            start: Ticks(self.current_tick.max(0) as u64),
                            duration: Ticks(d.ticks(self.ticks_per_beat)),
                            pitch,
                            velocity,
                        });
                    }
                }
            }
            Token::TimeSig(ts) if ts != self.meter => {
                self.set_meter(ts);
                return Decoded::Meter(TimeSignatureChange {
                    time: Ticks(self.current_tick.max(0) as u64),
                    signature: ts,
                });
            }
            _ => {}
        }
        Decoded::Nothing
    }

    /// The meter in force.
    pub fn meter(&self) -> TimeSignature {
        self.meter
    }

    /// Where the current bar starts, in ticks.
    pub fn bar_start(&self) -> Ticks {
        Ticks(self.bar_start.max(0) as u64)
    }

    /// Length of the current bar in ticks.
    pub fn ticks_per_bar(&self) -> Ticks {
        Ticks(self.ticks_per_bar as u64)
    }

    /// Ticks per grid step in the current meter.
    pub fn ticks_per_position(&self) -> Ticks {
        Ticks(self.ticks_per_pos as u64)
    }

    /// `Bar` tokens seen.
    pub fn bars(&self) -> i64 {
        self.current_bar + 1
    }
}
