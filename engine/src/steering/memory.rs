//! The phrase memory: a variable-order Markov model of the tokens a musician played, after
//! Pachet's Continuator (2003), used as a second voice inside sampling (see
//! [`super::Steering::faithfulness`]).
//!
//! Pachet's Continuator indexes every context of a player's phrases and continues with what
//! followed the longest context matching what was just played. Here the "phrases" are REMI token
//! sequences (the prime, or everything played since a project opened), so a prediction covers
//! rhythm (`Position`), pitch, velocity and duration at once, and can be mixed with the model's
//! next-token distribution at every step.
//!
//! Lookup visits only the places that follow the history's last token (an index from each token
//! to the places after it, rebuilt when sequences are remembered): for each, the length of the
//! match between what precedes it and the end of the history is counted backwards, and the
//! places with the longest match (up to `max_order`) vote for their next token. A step thus
//! reads a small part of the memory, even of a full playing memory: microseconds against the
//! model's step.

use std::collections::HashMap;

use crate::tokenizer::TokenId;

/// Separates remembered sequences, so no context spans two of them.
const SEPARATOR: TokenId = TokenId::MAX;

/// Contexts matched, in tokens: two notes (`Position Pitch Velocity Duration`). Longer contexts
/// make the memory replay whole bars; shorter ones lose the rhythm a note belongs to.
pub const DEFAULT_ORDER: usize = 8;

/// Shortest context the memory answers from: one whole note (`Position Pitch Velocity Duration`,
/// or a note and what led to it). A shorter match, a lone `Duration` say, says nothing about
/// where in the bar the phrase is, and its followers (often the `Bar` that ended some other
/// bar) would cut bars short.
pub const MIN_ORDER: usize = 4;

/// Tokens a memory keeps by default before forgetting its oldest: about two hundred dense bars.
pub const DEFAULT_CAPACITY: usize = 16_384;

/// A bounded store of token sequences with variable-order lookup.
#[derive(Clone, Debug, PartialEq)]
pub struct PhraseMemory {
    tokens: Vec<TokenId>,
    max_order: usize,
    capacity: usize,
    /// For each token, the places `i` (in order) with `tokens[i - 1]` that token and
    /// `tokens[i]` a token (not a separator): where the memory can continue after it.
    after: HashMap<TokenId, Vec<usize>>,
}

impl Default for PhraseMemory {
    fn default() -> Self {
        Self::new(DEFAULT_ORDER, DEFAULT_CAPACITY)
    }
}

impl PhraseMemory {
    /// An empty memory matching contexts of up to `max_order` tokens (at least 1) and keeping
    /// at most `capacity` tokens.
    pub fn new(max_order: usize, capacity: usize) -> Self {
        PhraseMemory {
            tokens: Vec::new(),
            max_order: max_order.max(1),
            capacity: capacity.max(1),
            after: HashMap::new(),
        }
    }

    /// Remembers one sequence (its own phrase: contexts never run into the one before). When
    /// the memory is full the oldest tokens are forgotten.
    pub fn remember(&mut self, ids: &[TokenId]) {
        if ids.is_empty() {
            return;
        }
        if !self.tokens.is_empty() {
            self.tokens.push(SEPARATOR);
        }
        self.tokens.extend_from_slice(ids);
        if self.tokens.len() > self.capacity {
            let cut = self.tokens.len() - self.capacity;
            self.tokens.drain(..cut);
        }
        self.after.clear();
        for next in 1..self.tokens.len() {
            let (before, follower) = (self.tokens[next - 1], self.tokens[next]);
            if before != SEPARATOR && follower != SEPARATOR {
                self.after.entry(before).or_default().push(next);
            }
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.after.clear();
    }

    /// Tokens remembered (separators included).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The remembered tokens, sequences separated by `u32::MAX` (for saving).
    pub fn tokens(&self) -> &[TokenId] {
        &self.tokens
    }

    /// What followed the longest context (up to the order) that matches the end of `history`,
    /// as `(token, count)` votes in `out` (cleared first). Returns the matched length, 0 when
    /// the memory has nothing to say (then `out` is empty): no match of at least
    /// [`MIN_ORDER`] tokens (or of the whole history, when it is shorter).
    pub fn predict(&self, history: &[TokenId], out: &mut Vec<(TokenId, u32)>) -> usize {
        self.predict_anchored(history, 0, out)
    }

    /// [`PhraseMemory::predict`] with a context of at least `anchor` tokens (the order grows to
    /// it if needed): generation anchors the context at the bar position of the note being
    /// written, so that what the memory says about onsets is said from the same place in a bar.
    pub fn predict_anchored(
        &self,
        history: &[TokenId],
        anchor: usize,
        out: &mut Vec<(TokenId, u32)>,
    ) -> usize {
        out.clear();
        let least = MIN_ORDER.max(anchor).min(history.len());
        let order = self.max_order.max(anchor).min(history.len());
        if order == 0 {
            return 0;
        }
        let Some(places) = self.after.get(&history[history.len() - 1]) else {
            return 0;
        };
        let mut best = 0usize;
        for &next in places {
            let follower = self.tokens[next];
            let mut m = 0;
            while m < order
                && m < next
                && self.tokens[next - 1 - m] == history[history.len() - 1 - m]
            {
                m += 1;
            }
            if m == 0 || m < best {
                continue;
            }
            if m > best {
                best = m;
                out.clear();
            }
            if m < least {
                continue;
            }
            match out.iter_mut().find(|(id, _)| *id == follower) {
                Some((_, count)) => *count += 1,
                None => out.push((follower, 1)),
            }
        }
        if out.is_empty() {
            return 0;
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_matching_context_votes() {
        let mut memory = PhraseMemory::new(6, 100);
        let (a, b, c, d) = (10, 11, 12, 13);
        memory.remember(&[a, b, c, d, 1, a, b, c, d, 2, 9, b, c, d, 3]);
        let mut out = Vec::new();
        // "a b c d" was followed by 1 and by 2; "9 b c d" by 3 only.
        assert_eq!(memory.predict(&[7, a, b, c, d], &mut out), 4);
        out.sort();
        assert_eq!(out, [(1, 1), (2, 1)]);
        assert_eq!(memory.predict(&[9, b, c, d], &mut out), 4);
        assert_eq!(out, [(3, 1)]);
        // Only "b c d" matches: too short to say anything.
        assert_eq!(memory.predict(&[7, b, c, d], &mut out), 0);
        assert!(out.is_empty());
        // A history shorter than the minimum matches as a whole.
        assert_eq!(memory.predict(&[c, d], &mut out), 2);
        out.sort();
        assert_eq!(out, [(1, 1), (2, 1), (3, 1)]);
    }

    #[test]
    fn sequences_do_not_run_into_each_other_and_the_oldest_is_forgotten() {
        let mut memory = PhraseMemory::new(4, 13);
        memory.remember(&[1, 2, 3, 4]);
        memory.remember(&[5, 6, 7, 8]);
        let mut out = Vec::new();
        assert_eq!(
            memory.predict(&[1, 2, 3, 4], &mut out),
            0,
            "4 ended its phrase"
        );
        memory.remember(&[1, 2, 3, 9, 9]);
        // [1 2 3 4 | 5 6 7 8 | 1 2 3 9 9] holds 15 > 13: the first 1 and 2 went.
        assert_eq!(memory.len(), 13);
        assert_eq!(memory.predict(&[1, 2, 3], &mut out), 3);
        assert_eq!(out, [(9, 1)]);
        assert_eq!(memory.predict(&[5, 6, 7], &mut out), 3);
        assert_eq!(out, [(8, 1)]);
        memory.clear();
        assert!(memory.is_empty());
    }

    #[test]
    fn an_anchored_context_must_reach_back_to_its_anchor() {
        let mut memory = PhraseMemory::new(4, 100);
        memory.remember(&[1, 5, 6, 7, 8, 2, 2, 5, 6, 7, 8, 3]);
        let mut out = Vec::new();
        // Four tokens match both places; anchored five back, only the one after `2` does.
        assert_eq!(memory.predict(&[9, 5, 6, 7, 8], &mut out), 4);
        assert_eq!(out.len(), 2);
        assert_eq!(memory.predict_anchored(&[2, 5, 6, 7, 8], 5, &mut out), 5);
        assert_eq!(out, [(3, 1)]);
        assert_eq!(memory.predict_anchored(&[9, 5, 6, 7, 8], 5, &mut out), 0);
    }
}
