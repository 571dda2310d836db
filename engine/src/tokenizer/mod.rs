//! REMI tokens with MidiTok 3.1.0's exact ids.
//!
//! Models trained in Python on MidiTok's ids load here and ours load there only if both sides
//! number the same music the same way, so encoding mirrors MidiTok's preprocessing rule by rule
//! (resampling, time-signature delays, velocity and duration binning, chord order), and the
//! golden files made by MidiTok are the test.

mod config;
mod decode;
mod encode;
mod vocab;

use std::path::{Path, PathBuf};

pub use config::{ConfigError, RemiConfig};
pub use decode::{Decoded, NoteDecoder};
pub use vocab::{DurationValue, ParseTokenError, Position, Special, Token, TokenId, TokenKind};

use crate::time::TimeSignature;

/// MidiTok's reference REMI configuration (373 tokens), the one the embedded model uses.
const REFERENCE_JSON: &str = include_str!("../../data/miditok_remi.json");

/// Why a tokenizer could not be loaded or ids could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Config { path: PathBuf, source: ConfigError },
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    UnknownId { id: TokenId, vocab_size: usize },
}

/// A sentinel for "no token of this value" in the lookup tables.
const NONE: TokenId = TokenId::MAX;

/// The REMI tokenizer: vocabulary, lookup tables, encoding and decoding.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    config: RemiConfig,
    vocab: Vec<Token>,
    kinds: Vec<TokenKind>,
    pitch_ids: [TokenId; 128],
    velocities: Vec<u8>,
    velocity_ids: Vec<TokenId>,
    durations: Vec<DurationValue>,
    duration_ids: Vec<TokenId>,
    position_ids: Vec<TokenId>,
    time_signature_ids: Vec<(TimeSignature, TokenId)>,
    bar_id: TokenId,
    special_ids: [TokenId; 4],
}

impl Tokenizer {
    /// MidiTok's reference configuration, built in (no file needed).
    pub fn reference() -> Self {
        Self::from_json(REFERENCE_JSON).expect("the built-in reference tokenizer is valid")
    }

    /// Loads a MidiTok `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|source| TokenizerError::Config {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Builds the tokenizer from the text of a MidiTok `tokenizer.json`.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        Ok(Self::from_config(RemiConfig::from_json(text)?))
    }

    /// Builds the vocabulary in MidiTok's order: special tokens, `Bar`, pitches, velocities,
    /// durations, positions, time signatures.
    pub fn from_config(config: RemiConfig) -> Self {
        let mut vocab = Vec::new();
        vocab.extend(config.special_tokens.iter().map(|&s| Token::Special(s)));
        vocab.push(Token::Bar);
        vocab.extend((config.pitch_range.0..=config.pitch_range.1).map(Token::Pitch));
        let velocities = config.velocities();
        vocab.extend(velocities.iter().map(|&v| Token::Velocity(v)));
        let durations = config.durations();
        vocab.extend(durations.iter().map(|&d| Token::Duration(d)));
        vocab.extend((0..config.num_positions()).map(|p| Token::Position(Position(p))));
        vocab.extend(config.time_signatures.iter().map(|&t| Token::TimeSig(t)));

        let mut pitch_ids = [NONE; 128];
        let mut velocity_ids = vec![NONE; velocities.len()];
        let mut duration_ids = vec![NONE; durations.len()];
        let mut position_ids = vec![NONE; usize::from(config.num_positions())];
        let mut time_signature_ids = Vec::new();
        let mut bar_id = NONE;
        let mut special_ids = [NONE; 4];
        for (id, token) in vocab.iter().enumerate() {
            let id = id as TokenId;
            match *token {
                Token::Special(s) => special_ids[s as usize] = id,
                Token::Bar => bar_id = id,
                Token::TimeSig(t) => time_signature_ids.push((t, id)),
                Token::Position(p) => position_ids[usize::from(p.0)] = id,
                Token::Pitch(p) => pitch_ids[usize::from(p)] = id,
                Token::Velocity(v) => {
                    let i = velocities
                        .iter()
                        .position(|&x| x == v)
                        .expect("velocity from the list");
                    velocity_ids[i] = id;
                }
                Token::Duration(d) => {
                    let i = durations
                        .iter()
                        .position(|&x| x == d)
                        .expect("duration from the list");
                    duration_ids[i] = id;
                }
            }
        }
        let kinds = vocab.iter().map(|t| t.kind()).collect();
        Tokenizer {
            config,
            vocab,
            kinds,
            pitch_ids,
            velocities,
            velocity_ids,
            durations,
            duration_ids,
            position_ids,
            time_signature_ids,
            bar_id,
            special_ids,
        }
    }

    pub fn config(&self) -> &RemiConfig {
        &self.config
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// All tokens, indexed by id.
    pub fn vocab(&self) -> &[Token] {
        &self.vocab
    }

    pub fn token(&self, id: TokenId) -> Option<Token> {
        self.vocab.get(id as usize).copied()
    }

    pub fn kind(&self, id: TokenId) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    /// Kinds of all tokens, indexed by id.
    pub fn kinds(&self) -> &[TokenKind] {
        &self.kinds
    }

    /// The id of a token, if it is in the vocabulary.
    pub fn id(&self, token: Token) -> Option<TokenId> {
        let id = match token {
            Token::Special(s) => self.special_ids[s as usize],
            Token::Bar => self.bar_id,
            Token::TimeSig(t) => self.time_signature_id(t).unwrap_or(NONE),
            Token::Position(p) => self
                .position_ids
                .get(usize::from(p.0))
                .copied()
                .unwrap_or(NONE),
            Token::Pitch(p) => self.pitch_ids.get(usize::from(p)).copied().unwrap_or(NONE),
            Token::Velocity(v) => self
                .velocities
                .iter()
                .position(|&x| x == v)
                .map_or(NONE, |i| self.velocity_ids[i]),
            Token::Duration(d) => self
                .durations
                .iter()
                .position(|&x| x == d)
                .map_or(NONE, |i| self.duration_ids[i]),
        };
        (id != NONE).then_some(id)
    }

    pub fn special_id(&self, special: Special) -> Option<TokenId> {
        let id = self.special_ids[special as usize];
        (id != NONE).then_some(id)
    }

    pub fn bos_id(&self) -> TokenId {
        self.special_ids[Special::Bos as usize]
    }

    pub fn eos_id(&self) -> TokenId {
        self.special_ids[Special::Eos as usize]
    }

    pub fn pad_id(&self) -> TokenId {
        self.special_ids[Special::Pad as usize]
    }

    pub fn bar_id(&self) -> TokenId {
        self.bar_id
    }

    pub fn time_signature_id(&self, ts: TimeSignature) -> Option<TokenId> {
        self.time_signature_ids
            .iter()
            .find(|(t, _)| *t == ts)
            .map(|&(_, id)| id)
    }

    /// Whether a meter has a `TimeSig` token.
    pub fn supports(&self, ts: TimeSignature) -> bool {
        self.time_signature_id(ts).is_some()
    }

    /// The position token ids, by grid step.
    pub fn position_ids(&self) -> &[TokenId] {
        &self.position_ids
    }

    /// Token strings of a sequence, as MidiTok prints them; unknown ids print as `<id?>`.
    pub fn token_strings(&self, ids: &[TokenId]) -> Vec<String> {
        ids.iter()
            .map(|&id| {
                self.token(id)
                    .map_or_else(|| format!("<{id}?>"), |t| t.to_string())
            })
            .collect()
    }

    /// Grid steps in one bar of the given meter.
    pub fn positions_per_bar(&self, ts: TimeSignature) -> u16 {
        u16::from(ts.numerator()) * u16::from(self.config.max_positions_per_beat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_vocabulary_matches_miditok_numbering() {
        let tok = Tokenizer::reference();
        assert_eq!(tok.vocab_size(), 373);
        let expected = [
            (0, "PAD_None"),
            (1, "BOS_None"),
            (2, "EOS_None"),
            (3, "Bar_None"),
            (4, "Pitch_21"),
            (91, "Pitch_108"),
            (92, "Velocity_3"),
            (123, "Velocity_127"),
            (124, "Duration_0.1.12"),
            (219, "Duration_12.0.6"),
            (220, "Position_0"),
            (363, "Position_143"),
            (364, "TimeSig_3/8"),
            (372, "TimeSig_4/4"),
        ];
        for (id, s) in expected {
            assert_eq!(tok.token(id).unwrap().to_string(), s, "id {id}");
            assert_eq!(tok.id(s.parse().unwrap()), Some(id), "token {s}");
        }
        assert_eq!(tok.id(Token::Pitch(20)), None);
        assert_eq!(tok.id(Token::Velocity(4)), None);
    }
}
