//! The token grammar: a finite-state machine that says which tokens may come next.
//!
//! `Bar → TimeSig → (Position → (Pitch Velocity Duration)+)*`, positions strictly increasing
//! inside a bar and below the bar's length, `EOS` only where a bar could end. Sampling masks the
//! model's logits with it at every step, so every generated sequence decodes to valid MIDI.
//!
//! Token ids of one kind are contiguous in MidiTok's vocabulary (checked when the grammar is
//! built), so the allowed set is always a handful of id ranges: computing it allocates nothing
//! and costs a few comparisons.

use std::fmt;
use std::ops::Range;

use crate::time::TimeSignature;
use crate::tokenizer::{Token, TokenId, TokenKind, Tokenizer};

/// The grammar cannot be built for a vocabulary, or a token broke it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    #[error("the vocabulary's {0:?} tokens are not contiguous ids")]
    NotContiguous(TokenKind),
    #[error("the vocabulary has no {0:?} token")]
    Missing(TokenKind),
    #[error("token {token} (id {id}) is not allowed {state}")]
    NotAllowed {
        id: TokenId,
        token: String,
        state: String,
    },
}

/// Where in the grammar a sequence is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Nothing yet: `BOS` or `Bar`.
    Start,
    /// After `BOS`: `Bar`.
    AfterBos,
    /// After `Bar`: `TimeSig`.
    AfterBar,
    /// After `TimeSig`, before any note of the bar.
    BarOpen,
    AfterPosition,
    AfterPitch,
    AfterVelocity,
    /// A note is complete.
    AfterDuration,
    /// After `EOS`: only padding.
    Ended,
}

/// The state after some tokens: small and `Copy`, one per sequence being generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrammarState {
    phase: Phase,
    /// Grid steps in the current bar.
    bar_positions: u16,
    /// The last position in the current bar.
    position: Option<u16>,
    time_signature: Option<TimeSignature>,
    /// When set, every `TimeSig` must be this one (a continuation keeps the prime's meter).
    meter_lock: Option<TimeSignature>,
    /// No `Position` below this in the current bar (a continuation starts where the prime
    /// stopped, possibly mid-bar); reset by `Bar`.
    min_position: u16,
    bars: u32,
}

impl GrammarState {
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// `Bar` tokens seen so far.
    pub fn bars(&self) -> u32 {
        self.bars
    }

    /// The meter of the current bar.
    pub fn time_signature(&self) -> Option<TimeSignature> {
        self.time_signature
    }

    /// The current position in the bar, if a note position was given.
    pub fn position(&self) -> Option<u16> {
        self.position
    }

    /// From now on only this meter may follow a `Bar`.
    pub fn lock_meter(&mut self, ts: TimeSignature) {
        self.meter_lock = Some(ts);
    }

    /// From now on, in the current bar, no onset before this grid step.
    pub fn require_position_at_least(&mut self, position: u16) {
        self.min_position = position;
    }

    /// Grid steps in the current bar.
    pub fn bar_positions(&self) -> u16 {
        self.bar_positions
    }

    /// The earliest onset allowed in the current bar (nonzero only in a bar the prime started).
    pub fn min_position(&self) -> u16 {
        self.min_position
    }

    /// Whether the sequence could end (or a new bar start) here.
    pub fn at_bar_boundary(&self) -> bool {
        matches!(self.phase, Phase::BarOpen | Phase::AfterDuration)
    }
}

impl fmt::Display for GrammarState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.phase {
            Phase::Start => f.write_str("at the start"),
            Phase::AfterBos => f.write_str("after BOS"),
            Phase::AfterBar => f.write_str("after Bar"),
            Phase::BarOpen => f.write_str("after TimeSig"),
            Phase::AfterPosition => f.write_str("after Position"),
            Phase::AfterPitch => f.write_str("after Pitch"),
            Phase::AfterVelocity => f.write_str("after Velocity"),
            Phase::AfterDuration => write!(
                f,
                "after a note at position {} of a {}-step bar",
                self.position.unwrap_or(0),
                self.bar_positions
            ),
            Phase::Ended => f.write_str("after EOS"),
        }
    }
}

/// A few id ranges: the tokens allowed next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allowed {
    ranges: [(TokenId, TokenId); 6],
    len: u8,
}

impl Allowed {
    fn push(&mut self, range: Range<TokenId>) {
        if range.start < range.end {
            self.ranges[usize::from(self.len)] = (range.start, range.end);
            self.len += 1;
        }
    }

    fn single(&mut self, id: TokenId) {
        self.push(id..id + 1);
    }

    /// Takes one id out of the set (a caller's extra rule, e.g. no `EOS` before the last bar).
    pub fn remove(&mut self, id: TokenId) {
        let n = usize::from(self.len);
        let Some(i) = self.ranges[..n]
            .iter()
            .position(|&(a, b)| (a..b).contains(&id))
        else {
            return;
        };
        let (a, b) = self.ranges[i];
        if a == id {
            self.ranges[i].0 += 1;
        } else if b == id + 1 {
            self.ranges[i].1 -= 1;
        } else {
            // Split: there is always room, since the grammar uses at most four ranges.
            self.ranges[i] = (a, id);
            self.ranges[n] = (id + 1, b);
            self.len += 1;
        }
        if self.ranges[i].0 == self.ranges[i].1 {
            self.ranges.copy_within(i + 1..usize::from(self.len), i);
            self.len -= 1;
        }
    }

    /// The members of this set among `ids` (at most four of them).
    pub fn restricted_to(&self, ids: &[TokenId]) -> Allowed {
        let mut out = Allowed::default();
        for &id in ids.iter().take(4) {
            if self.contains(id) {
                out.single(id);
            }
        }
        out
    }

    pub fn ranges(&self) -> impl Iterator<Item = Range<TokenId>> + '_ {
        self.ranges[..usize::from(self.len)]
            .iter()
            .map(|&(a, b)| a..b)
    }

    pub fn contains(&self, id: TokenId) -> bool {
        self.ranges().any(|r| r.contains(&id))
    }

    /// Number of allowed ids.
    pub fn count(&self) -> usize {
        self.ranges().map(|r| r.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All allowed ids, in increasing order within each range.
    pub fn ids(&self) -> impl Iterator<Item = TokenId> + '_ {
        self.ranges().flatten()
    }
}

/// The grammar of one vocabulary.
#[derive(Clone, Debug)]
pub struct Grammar {
    kinds: Vec<TokenKind>,
    tokens: Vec<Token>,
    bos: TokenId,
    eos: TokenId,
    pad: TokenId,
    bar: TokenId,
    pitches: Range<TokenId>,
    velocities: Range<TokenId>,
    durations: Range<TokenId>,
    /// Id of `Position_0`; position `p` is `positions.start + p`.
    positions: Range<TokenId>,
    time_signatures: Range<TokenId>,
    positions_per_beat: u16,
}

fn contiguous(tok: &Tokenizer, kind: TokenKind) -> Result<Range<TokenId>, GrammarError> {
    let ids: Vec<TokenId> = (0..tok.vocab_size() as TokenId)
        .filter(|&id| tok.kind(id) == Some(kind))
        .collect();
    let (first, last) = match (ids.first(), ids.last()) {
        (Some(&a), Some(&b)) => (a, b),
        _ => return Err(GrammarError::Missing(kind)),
    };
    if (last - first) as usize + 1 != ids.len() {
        return Err(GrammarError::NotContiguous(kind));
    }
    Ok(first..last + 1)
}

impl Grammar {
    pub fn new(tok: &Tokenizer) -> Result<Self, GrammarError> {
        let positions = contiguous(tok, TokenKind::Position)?;
        // Position ids must also be in grid order for "strictly increasing" to be a range.
        if tok
            .position_ids()
            .iter()
            .enumerate()
            .any(|(p, &id)| id != positions.start + p as TokenId)
        {
            return Err(GrammarError::NotContiguous(TokenKind::Position));
        }
        Ok(Grammar {
            kinds: tok.kinds().to_vec(),
            tokens: tok.vocab().to_vec(),
            bos: tok.bos_id(),
            eos: tok.eos_id(),
            pad: tok.pad_id(),
            bar: tok.bar_id(),
            pitches: contiguous(tok, TokenKind::Pitch)?,
            velocities: contiguous(tok, TokenKind::Velocity)?,
            durations: contiguous(tok, TokenKind::Duration)?,
            positions,
            time_signatures: contiguous(tok, TokenKind::TimeSig)?,
            positions_per_beat: u16::from(tok.config().max_positions_per_beat()),
        })
    }

    /// The state before any token.
    pub fn start(&self) -> GrammarState {
        GrammarState {
            phase: Phase::Start,
            bar_positions: 0,
            position: None,
            time_signature: None,
            meter_lock: None,
            min_position: 0,
            bars: 0,
        }
    }

    /// The tokens allowed next.
    pub fn allowed(&self, state: &GrammarState) -> Allowed {
        let mut a = Allowed::default();
        match state.phase {
            Phase::Start => {
                a.single(self.bos);
                a.single(self.bar);
            }
            Phase::AfterBos => a.single(self.bar),
            Phase::AfterBar => match state.meter_lock {
                Some(ts) => {
                    if let Some(id) = self.time_signature_id(ts) {
                        a.single(id);
                    }
                }
                None => a.push(self.time_signatures.clone()),
            },
            Phase::BarOpen | Phase::AfterDuration => {
                // More notes at this onset, unless it lies before a required start.
                let at_or_after_start = state.position.is_some_and(|p| p >= state.min_position);
                if state.phase == Phase::AfterDuration && at_or_after_start {
                    a.push(self.pitches.clone());
                }
                let first = state.position.map_or(0, |p| p + 1).max(state.min_position);
                let end = state.bar_positions.min(self.positions.len() as u16);
                if first < end {
                    a.push(
                        self.positions.start + TokenId::from(first)
                            ..self.positions.start + TokenId::from(end),
                    );
                }
                a.single(self.bar);
                a.single(self.eos);
            }
            Phase::AfterPosition => a.push(self.pitches.clone()),
            Phase::AfterPitch => a.push(self.velocities.clone()),
            Phase::AfterVelocity => a.push(self.durations.clone()),
            Phase::Ended => a.single(self.pad),
        }
        a
    }

    /// Moves the state past one token, or says why the token is not allowed there.
    ///
    /// One tolerance beyond [`Grammar::allowed`]: after a note, the *same* `Position` again is
    /// accepted. MidiTok emits it when a file's onsets are finer than the grid in a meter whose
    /// grid it does not snap to (a dropped `/8` signature leaves */4 onsets unsnapped, so two
    /// onsets one tick apart share a position), and a prime read from such a file must still be
    /// usable. Generation never proposes it: it is redundant, not wrong.
    pub fn advance(&self, state: &mut GrammarState, id: TokenId) -> Result<(), GrammarError> {
        let repeated_position = state.phase == Phase::AfterDuration
            && state
                .position
                .is_some_and(|p| id == self.positions.start + TokenId::from(p));
        if !repeated_position && !self.allowed(state).contains(id) {
            return Err(GrammarError::NotAllowed {
                id,
                token: self
                    .tokens
                    .get(id as usize)
                    .map_or_else(|| "<unknown>".to_string(), |t| t.to_string()),
                state: state.to_string(),
            });
        }
        self.advance_unchecked(state, id);
        Ok(())
    }

    /// Moves the state past a token already known to be allowed (e.g. sampled from
    /// [`Grammar::allowed`]).
    pub fn advance_unchecked(&self, state: &mut GrammarState, id: TokenId) {
        let kind = self
            .kinds
            .get(id as usize)
            .copied()
            .unwrap_or(TokenKind::Pad);
        state.phase = match kind {
            TokenKind::Bos => Phase::AfterBos,
            TokenKind::Bar => {
                state.bars += 1;
                state.position = None;
                state.min_position = 0;
                Phase::AfterBar
            }
            TokenKind::TimeSig => {
                if let Some(Token::TimeSig(ts)) = self.tokens.get(id as usize) {
                    state.time_signature = Some(*ts);
                    state.bar_positions = u16::from(ts.numerator()) * self.positions_per_beat;
                }
                Phase::BarOpen
            }
            TokenKind::Position => {
                state.position = Some((id - self.positions.start) as u16);
                Phase::AfterPosition
            }
            TokenKind::Pitch => Phase::AfterPitch,
            TokenKind::Velocity => Phase::AfterVelocity,
            TokenKind::Duration => Phase::AfterDuration,
            TokenKind::Eos | TokenKind::Pad => Phase::Ended,
            TokenKind::Mask => state.phase,
        };
    }

    /// The state after a whole sequence, checking every token.
    pub fn state_after(&self, ids: &[TokenId]) -> Result<GrammarState, GrammarError> {
        let mut state = self.start();
        for &id in ids {
            self.advance(&mut state, id)?;
        }
        Ok(state)
    }

    /// Sets the logits of disallowed tokens to negative infinity.
    pub fn mask_logits(&self, state: &GrammarState, logits: &mut [f32]) {
        let allowed = self.allowed(state);
        let len = logits.len();
        let mut next = 0usize;
        for r in allowed_sorted(&allowed) {
            let (start, end) = ((r.start as usize).min(len), (r.end as usize).min(len));
            if start > next {
                logits[next..start].fill(f32::NEG_INFINITY);
            }
            next = next.max(end);
        }
        if next < logits.len() {
            logits[next..].fill(f32::NEG_INFINITY);
        }
    }

    pub fn time_signature_id(&self, ts: TimeSignature) -> Option<TokenId> {
        self.time_signatures
            .clone()
            .find(|&id| self.tokens.get(id as usize) == Some(&Token::TimeSig(ts)))
    }

    pub fn bar_id(&self) -> TokenId {
        self.bar
    }

    pub fn eos_id(&self) -> TokenId {
        self.eos
    }
}

/// The ranges of an allowed set in id order (at most four: a tiny insertion sort).
fn allowed_sorted(allowed: &Allowed) -> impl Iterator<Item = Range<TokenId>> {
    let mut ranges = allowed.ranges;
    let n = usize::from(allowed.len);
    for i in 1..n {
        let mut j = i;
        while j > 0 && ranges[j - 1].0 > ranges[j].0 {
            ranges.swap(j - 1, j);
            j -= 1;
        }
    }
    ranges.into_iter().take(n).map(|(a, b)| a..b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(tok: &Tokenizer, tokens: &[&str]) -> Vec<TokenId> {
        tokens
            .iter()
            .map(|s| tok.id(s.parse().unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn accepts_a_well_formed_bar_and_rejects_breaks() {
        let tok = Tokenizer::reference();
        let g = Grammar::new(&tok).unwrap();
        let good = ids(
            &tok,
            &[
                "BOS_None",
                "Bar_None",
                "TimeSig_3/4",
                "Position_0",
                "Pitch_60",
                "Velocity_63",
                "Duration_1.0.12",
                "Pitch_64",
                "Velocity_63",
                "Duration_1.0.12",
                "Position_35",
                "Pitch_67",
                "Velocity_63",
                "Duration_0.1.12",
                "Bar_None",
                "TimeSig_3/4",
                "EOS_None",
            ],
        );
        let state = g.state_after(&good).unwrap();
        assert_eq!(state.phase(), Phase::Ended);
        assert_eq!(state.bars(), 2);

        for bad in [
            vec!["Bar_None", "Position_0"],
            vec!["Bar_None", "TimeSig_3/4", "Position_36"],
            vec![
                "Bar_None",
                "TimeSig_4/4",
                "Position_5",
                "Pitch_60",
                "Velocity_63",
                "Duration_1.0.12",
                "Position_4",
            ],
            vec![
                "Bar_None",
                "TimeSig_4/4",
                "Position_5",
                "Pitch_60",
                "EOS_None",
            ],
            vec![
                "Bar_None",
                "TimeSig_4/4",
                "Position_5",
                "Pitch_60",
                "Velocity_63",
                "EOS_None",
                "Pitch_60",
            ],
            vec!["Pitch_60"],
        ] {
            assert!(g.state_after(&ids(&tok, &bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn meter_lock_allows_only_that_time_signature() {
        let tok = Tokenizer::reference();
        let g = Grammar::new(&tok).unwrap();
        let mut state = g.state_after(&ids(&tok, &["Bar_None"])).unwrap();
        assert_eq!(g.allowed(&state).count(), 9);
        let three_four = TimeSignature::new(3, 4).unwrap();
        state.lock_meter(three_four);
        let allowed = g.allowed(&state);
        assert_eq!(
            allowed.ids().collect::<Vec<_>>(),
            vec![tok.time_signature_id(three_four).unwrap()]
        );
    }

    #[test]
    fn mask_keeps_exactly_the_allowed_ids() {
        let tok = Tokenizer::reference();
        let g = Grammar::new(&tok).unwrap();
        let state = g
            .state_after(&ids(
                &tok,
                &[
                    "Bar_None",
                    "TimeSig_4/4",
                    "Position_10",
                    "Pitch_60",
                    "Velocity_63",
                    "Duration_1.0.12",
                ],
            ))
            .unwrap();
        let mut logits = vec![0.0f32; tok.vocab_size()];
        g.mask_logits(&state, &mut logits);
        let allowed = g.allowed(&state);
        for (id, l) in logits.iter().enumerate() {
            assert_eq!(l.is_finite(), allowed.contains(id as TokenId), "id {id}");
        }
        // 88 pitches, positions 11..48, Bar, EOS.
        assert_eq!(allowed.count(), 88 + 37 + 2);
    }
}
