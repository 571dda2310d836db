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
//! Lookup is one pass over the memory: for every place the memory could continue from, the
//! length of the match between what precedes it and the end of the history is counted
//! backwards, and the places with the longest match (up to `max_order`) vote for their next
//! token. Most places fail at the first comparison, so a step costs about one read of the
//! memory: microseconds for a prime, well under the model's step for the bounded playing memory.

use crate::tokenizer::TokenId;

/// Separates remembered sequences, so no context spans two of them.
const SEPARATOR: TokenId = TokenId::MAX;

/// Contexts matched, in tokens: two notes (`Position Pitch Velocity Duration`). Longer contexts
/// make the memory replay whole bars; shorter ones lose the rhythm a note belongs to.
pub const DEFAULT_ORDER: usize = 8;

/// Tokens a memory keeps by default before forgetting its oldest: about two hundred dense bars.
pub const DEFAULT_CAPACITY: usize = 16_384;

/// A bounded store of token sequences with variable-order lookup.
#[derive(Clone, Debug, PartialEq)]
pub struct PhraseMemory {
    tokens: Vec<TokenId>,
    max_order: usize,
    capacity: usize,
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
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.tokens.clear();
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
    /// the memory has nothing to say (then `out` is empty).
    pub fn predict(&self, history: &[TokenId], out: &mut Vec<(TokenId, u32)>) -> usize {
        out.clear();
        let order = self.max_order.min(history.len());
        if order == 0 {
            return 0;
        }
        let mut best = 0usize;
        for next in 1..self.tokens.len() {
            let follower = self.tokens[next];
            if follower == SEPARATOR {
                continue;
            }
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
            match out.iter_mut().find(|(id, _)| *id == follower) {
                Some((_, count)) => *count += 1,
                None => out.push((follower, 1)),
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_matching_context_votes() {
        let mut memory = PhraseMemory::new(3, 100);
        memory.remember(&[1, 2, 3, 1, 2, 4, 5, 2, 6]);
        let mut out = Vec::new();
        // "1 2" was followed by 3 and by 4; "5 2" by 6 only.
        assert_eq!(memory.predict(&[9, 1, 2], &mut out), 2);
        out.sort();
        assert_eq!(out, [(3, 1), (4, 1)]);
        assert_eq!(memory.predict(&[5, 2], &mut out), 2);
        assert_eq!(out, [(6, 1)]);
        // Only "2" matches: every follower of 2 votes.
        assert_eq!(memory.predict(&[7, 2], &mut out), 1);
        out.sort();
        assert_eq!(out, [(3, 1), (4, 1), (6, 1)]);
        // Nothing to say.
        assert_eq!(memory.predict(&[7], &mut out), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn sequences_do_not_run_into_each_other_and_the_oldest_is_forgotten() {
        let mut memory = PhraseMemory::new(4, 7);
        memory.remember(&[1, 2]);
        memory.remember(&[3, 4]);
        let mut out = Vec::new();
        assert_eq!(memory.predict(&[2], &mut out), 0, "2 ended its phrase");
        memory.remember(&[5, 6]);
        // [1, 2, |, 3, 4, |, 5, 6] holds 8 > 7: the 1 went.
        assert_eq!(memory.len(), 7);
        assert_eq!(memory.predict(&[1], &mut out), 0);
        assert_eq!(memory.predict(&[3], &mut out), 1);
        assert_eq!(out, [(4, 1)]);
        memory.clear();
        assert!(memory.is_empty());
    }
}
