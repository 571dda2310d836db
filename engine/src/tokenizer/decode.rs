//! Ids → score, as MidiTok 3.1.0's REMI decodes them.
//!
//! Decoding is total: tokens out of place are skipped (a `Pitch` not followed by `Velocity` and
//! `Duration` makes no note), exactly as MidiTok does, so any id sequence gives a valid score.

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
        let tpq = i64::from(self.ticks_per_quarter());
        let max_pos = i64::from(self.config.max_positions_per_beat());

        // The first meter is the first TimeSig before any note token.
        let first = tokens
            .iter()
            .take_while(|t| !matches!(t, Token::Pitch(_) | Token::Velocity(_) | Token::Duration(_)))
            .find_map(|t| match t {
                Token::TimeSig(ts) => Some(*ts),
                _ => None,
            })
            .unwrap_or(TimeSignature::COMMON);
        let mut time_signatures = vec![TimeSignatureChange {
            time: Ticks::ZERO,
            signature: first,
        }];
        let mut current = first;
        let meter = |ts: TimeSignature| {
            let tpb = self.config.ticks_per_beat_for(ts.denominator()) as i64;
            let ticks_per_beat_at_tpq = if ts.denominator() == 4 {
                tpq
            } else {
                (tpq as f64 * (4.0 / f64::from(ts.denominator()))) as i64
            };
            (
                ticks_per_beat_at_tpq * i64::from(ts.numerator()),
                (tpq_div(tpb, max_pos)),
            )
        };
        let (mut ticks_per_bar, mut ticks_per_pos) = meter(current);
        let mut current_tick: i64 = 0;
        let mut tick_at_current_bar: i64 = 0;
        let mut current_bar: i64 = -1;
        let mut notes = Vec::new();

        for (i, token) in tokens.iter().enumerate() {
            match *token {
                Token::Bar => {
                    current_bar += 1;
                    if current_bar > 0 {
                        current_tick = tick_at_current_bar + ticks_per_bar;
                    }
                    tick_at_current_bar = current_tick;
                }
                Token::Position(p) => {
                    if current_bar == -1 {
                        current_bar = 0;
                    }
                    current_tick = tick_at_current_bar + i64::from(p.0) * ticks_per_pos;
                }
                Token::Pitch(pitch) => {
                    let (low, high) = self.config.pitch_range;
                    if !(low..=high).contains(&pitch) {
                        continue;
                    }
                    if let (Some(Token::Velocity(velocity)), Some(Token::Duration(d))) =
                        (tokens.get(i + 1), tokens.get(i + 2))
                    {
                        let tpb = self.config.ticks_per_beat_for(current.denominator());
                        notes.push(Note {
                            start: Ticks(current_tick.max(0) as u64),
                            duration: Ticks(d.ticks(tpb)),
                            pitch,
                            velocity: *velocity,
                        });
                    }
                }
                Token::TimeSig(ts) if ts != current => {
                    current = ts;
                    time_signatures.push(TimeSignatureChange {
                        time: Ticks(current_tick.max(0) as u64),
                        signature: ts,
                    });
                    (ticks_per_bar, ticks_per_pos) = meter(ts);
                }
                _ => {}
            }
        }
        Score {
            ticks_per_quarter: tpq as u16,
            notes,
            time_signatures,
            tempos: vec![TempoChange {
                time: Ticks::ZERO,
                micros_per_quarter: 500_000,
            }],
        }
    }
}

fn tpq_div(ticks_per_beat: i64, positions_per_beat: i64) -> i64 {
    (ticks_per_beat / positions_per_beat.max(1)).max(1)
}
