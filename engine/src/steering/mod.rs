//! Steering beyond temperature: what a musician asks of a continuation ("stay closer to what I
//! played", "follow my key", "not so busy", "stay in this register"), applied at sampling time
//! on top of the token grammar, so every output still decodes and ends on time.
//!
//! - **Faithfulness** mixes the model's next-token distribution with a variable-order Markov
//!   model of the musician's own tokens ([`PhraseMemory`], after Pachet's Continuator):
//!   `p = (1 − f)·p_model + f·p_memory`, after temperature and before top-p. The memory answers
//!   from the longest context that matches the end of what was played, reaching back at least
//!   to the current note's onset (so it speaks from the same place in the bar). Where no such
//!   context matches, it falls back to a reduced viewpoint, as Pachet's does: the model's pitch
//!   distribution is tilted towards the player's pitch classes, `p ∝ p_model · share^f`. So
//!   `f = 1` follows the player's statistics as far as they reach, and the model fills in the
//!   rest. `f = 0` never touches the distribution: the output is the model's, bit for bit.
//! - **Key** masks pitch tokens outside the scale ([`Key::contains`]: major, or minor with its
//!   leading tone). `auto` takes the prime's key (Krumhansl–Kessler on duration-weighted pitch
//!   classes).
//! - **Register** masks pitch tokens outside a range.
//! - **Density** sets the notes a bar holds. The grammar leaves two decisions that make a bar
//!   busy or sparse: after a note, whether the bar ends (`Bar`/`EOS`) or another note comes, and
//!   how far the next onset (`Position`) jumps. With a target of N notes, a bar cannot end
//!   before its N-th note and must end at it (a first bar that starts mid-bar gets its share
//!   of N); and while a bar is behind, onsets beyond an even spacing of the notes still owed
//!   over the steps left are made less likely (their logits lowered in proportion to how far
//!   past that spacing they lie), so the notes spread over the bar instead of piling up at its
//!   end. Which notes, where exactly and how they group into chords stays the model's choice.

mod memory;
mod register;

pub use memory::{PhraseMemory, DEFAULT_CAPACITY, DEFAULT_ORDER};
pub use register::{note_name, parse_pitch, PitchRange, RangeError};

use crate::grammar::{Allowed, GrammarState};
use crate::key::Key;
use crate::tokenizer::{Token, TokenId, Tokenizer};

/// The faithfulness `continue`, `eval` and the plugin start from (see the README's steering
/// table for the measurement behind it).
pub const DEFAULT_FAITHFULNESS: f32 = 0.25;

/// Most notes a density target may ask for in a bar (generation's own ceiling).
pub const MAX_DENSITY: u32 = crate::generation::MAX_NOTES_PER_BAR as u32;

/// How much a `Position` past the even spacing is penalised, in logits per spacing.
const SPREAD_STRENGTH: f32 = 3.0;

/// Which key the continuation keeps to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyLock {
    /// No lock.
    #[default]
    Off,
    /// The prime's own key, estimated from its notes.
    Auto,
    Fixed(Key),
}

/// The steering controls of one generation; the default steers nothing but faithfulness (at
/// [`DEFAULT_FAITHFULNESS`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Steering {
    /// How closely the continuation follows the musician's own material, 0 (the model alone)
    /// to 1 (the phrase memory wherever it has something to say).
    pub faithfulness: f32,
    pub key: KeyLock,
    /// Notes per bar, 1..=[`MAX_DENSITY`].
    pub density: Option<u32>,
    /// Pitches allowed.
    pub range: Option<PitchRange>,
}

impl Default for Steering {
    fn default() -> Self {
        Steering {
            faithfulness: DEFAULT_FAITHFULNESS,
            key: KeyLock::Off,
            density: None,
            range: None,
        }
    }
}

impl Steering {
    /// Checks the controls on their own (see [`Plan::new`] for checks against a prime).
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.faithfulness) {
            return Err(format!(
                "faithfulness must be within 0..=1, not {}",
                self.faithfulness
            ));
        }
        if let Some(d) = self.density {
            if d == 0 || d > MAX_DENSITY {
                return Err(format!(
                    "density must be within 1..={MAX_DENSITY} notes a bar, not {d}"
                ));
            }
        }
        if let Some(r) = self.range {
            if r.low > r.high {
                return Err(RangeError::Empty(r).to_string());
            }
        }
        Ok(())
    }

    /// Checks the controls against a vocabulary and a prime's key (for `KeyLock::Auto`): the
    /// error generation would give, before generating.
    pub fn check(&self, tok: &Tokenizer, prime_key: Option<Key>) -> Result<(), String> {
        Plan::new(self, tok, prime_key).map(|_| ())
    }
}

/// Steering made concrete for one prime and vocabulary: the key resolved, the pitch tokens to
/// mask, the position of every `Position` token.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    faithfulness: f32,
    /// Pitch token ids the key or the range forbids.
    blocked: Vec<TokenId>,
    density: Option<u32>,
    /// `(id, grid step)` of every `Position` token.
    positions: Vec<(TokenId, u16)>,
    /// `(id, pitch)` of every `Pitch` token.
    pitches: Vec<(TokenId, u8)>,
}

impl Plan {
    /// Resolves `steering` for a prime whose estimated key is `prime_key`. Fails when the key
    /// and the range leave no pitch of the vocabulary to play.
    pub(crate) fn new(
        steering: &Steering,
        tok: &Tokenizer,
        prime_key: Option<Key>,
    ) -> Result<Plan, String> {
        steering.validate()?;
        let key = match steering.key {
            KeyLock::Off => None,
            KeyLock::Auto => Some(prime_key.ok_or("key auto: the prime has no key to find")?),
            KeyLock::Fixed(k) => Some(k),
        };
        let mut blocked = Vec::new();
        let mut playable = 0usize;
        let mut in_range = 0usize;
        let mut positions = Vec::new();
        let mut pitches = Vec::new();
        for (id, token) in tok.vocab().iter().enumerate() {
            match *token {
                Token::Pitch(p) => {
                    pitches.push((id as TokenId, p));
                    let range_ok = steering.range.is_none_or(|r| r.contains(p));
                    let key_ok = key.is_none_or(|k| k.contains(p));
                    in_range += usize::from(range_ok);
                    if range_ok && key_ok {
                        playable += 1;
                    } else {
                        blocked.push(id as TokenId);
                    }
                }
                Token::Position(q) => positions.push((id as TokenId, q.0)),
                _ => {}
            }
        }
        if in_range == 0 {
            let range = steering
                .range
                .expect("only a range can exclude every pitch");
            return Err(format!(
                "range {range} holds none of the pitches this model can play"
            ));
        }
        if playable == 0 {
            let key = key.expect("only a key can exclude the rest");
            return Err(match steering.range {
                Some(range) => format!("key {key} has no pitch in range {range}"),
                None => format!("key {key} has no pitch this model can play"),
            });
        }
        Ok(Plan {
            faithfulness: steering.faithfulness,
            blocked,
            density: steering.density,
            positions,
            pitches,
        })
    }

    /// Faithfulness's reduced viewpoint, as Pachet's Continuator falls back to one when no
    /// context matches: how often the memory plays each pitch class, as a logit offset per
    /// pitch token, `f · T · ln(12 · share)` (shares smoothed by one count each), so that the
    /// model's distribution over pitches is tilted towards the player's pitch classes,
    /// `p ∝ p_model · share^f`, whatever the temperature `T` (greedy: `T` = 1). `None` when
    /// faithfulness is 0 or the memory holds no pitch.
    pub(crate) fn pitch_class_tilt(
        &self,
        memory: &PhraseMemory,
        temperature: f32,
    ) -> Option<Vec<(TokenId, f32)>> {
        if self.faithfulness <= 0.0 {
            return None;
        }
        let mut counts = [0u32; 12];
        for &id in memory.tokens() {
            if let Ok(k) = self.pitches.binary_search_by_key(&id, |&(i, _)| i) {
                counts[usize::from(self.pitches[k].1 % 12)] += 1;
            }
        }
        let total: u32 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let scale = self.faithfulness * if temperature > 0.0 { temperature } else { 1.0 };
        Some(
            self.pitches
                .iter()
                .map(|&(id, p)| {
                    let share = (counts[usize::from(p % 12)] as f32 + 1.0) / (total as f32 + 12.0);
                    (id, scale * (12.0 * share).ln())
                })
                .collect(),
        )
    }

    /// Whether the logits need changing at all (otherwise sampling reads the model's row).
    pub(crate) fn shapes_logits(&self) -> bool {
        !self.blocked.is_empty() || self.density.is_some()
    }

    pub(crate) fn faithfulness(&self) -> f32 {
        self.faithfulness
    }

    /// Notes the current bar must hold: the target, or for a first bar that starts part-way
    /// (the only bar with a minimum onset) its share of the target, at least one. `None`
    /// without a density target.
    pub(crate) fn bar_target(&self, state: &GrammarState) -> Option<usize> {
        let n = f64::from(self.density?);
        let steps = f64::from(state.bar_positions().max(1));
        let share = (steps - f64::from(state.min_position())) / steps;
        Some(((n * share).round() as usize).max(1))
    }

    /// Masks the forbidden pitches and, while the bar owes notes, lowers onsets that jump past
    /// an even spacing of what is owed.
    pub(crate) fn shape(
        &self,
        logits: &mut [f32],
        allowed: &Allowed,
        state: &GrammarState,
        owed: usize,
    ) {
        for &id in &self.blocked {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        if owed == 0 || self.density.is_none() {
            return;
        }
        let from = state
            .position()
            .map_or(state.min_position(), |p| p.saturating_add(1));
        let left = state.bar_positions().saturating_sub(from);
        if left == 0 {
            return;
        }
        let spacing = f32::from(left) / owed as f32;
        let ideal = f32::from(from) + spacing - 1.0;
        for &(id, q) in &self.positions {
            let late = f32::from(q) - ideal;
            if late > 0.0 && allowed.contains(id) {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= SPREAD_STRENGTH * late / spacing.max(1.0);
                }
            }
        }
    }
}
