//! Choosing the next token: temperature and nucleus (top-p) sampling over the tokens the grammar
//! allows.
//!
//! Only the allowed ids are looked at (a few dozen to a hundred of the vocabulary), so a step's
//! sampling costs microseconds next to the model's milliseconds, and the scratch buffer is
//! reused so a step allocates nothing.

use rand::Rng;

use crate::grammar::Allowed;
use crate::tokenizer::TokenId;

/// Reusable sampling state.
#[derive(Debug, Default)]
pub struct Sampler {
    /// `(logit or probability, id)` of the allowed tokens.
    scratch: Vec<(f32, TokenId)>,
}

impl Sampler {
    pub fn new(vocab_size: usize) -> Self {
        Sampler {
            scratch: Vec::with_capacity(vocab_size),
        }
    }

    /// Picks one of the `allowed` ids from a row of logits.
    ///
    /// `temperature == 0` is greedy (ties go to the lowest id). Otherwise logits are divided by
    /// the temperature, the smallest set of most likely tokens whose probability reaches
    /// `top_p` is kept, and one is drawn from it. Non-finite logits count as impossible; if
    /// every allowed token is impossible, the lowest allowed id is returned, so the result is
    /// always allowed. Returns `None` only when nothing is allowed.
    pub fn sample<R: Rng + ?Sized>(
        &mut self,
        logits: &[f32],
        allowed: &Allowed,
        temperature: f32,
        top_p: f32,
        rng: &mut R,
    ) -> Option<TokenId> {
        let first = allowed.ids().next()?;
        if !self.collect(logits, allowed) {
            return Some(first);
        }
        if temperature <= 0.0 {
            return Some(self.scratch[self.best()].1);
        }
        // Most likely first; equal logits in id order, so a seed always gives the same draw.
        self.sort();
        let total = self.exponentiate(self.scratch[0].0, temperature);
        Some(self.draw_nucleus(top_p.clamp(0.0, 1.0) * total, rng))
    }

    /// [`Sampler::sample`] with a second opinion mixed in: the model's tempered distribution
    /// over the allowed tokens `p` and the `votes` `(id, count)` normalised over the allowed
    /// tokens `q` (a phrase memory's prediction) make `(1 − weight)·p + weight·q`, from which the
    /// nucleus is drawn as usual. Votes for tokens that are not allowed (or whose logit is not
    /// finite, i.e. masked) are ignored; when none is left, or `weight` is 0, this is exactly
    /// [`Sampler::sample`]. With temperature 0 the model's part is its single best token and
    /// the mixture's most likely token is taken.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_mixed<R: Rng + ?Sized>(
        &mut self,
        logits: &[f32],
        allowed: &Allowed,
        temperature: f32,
        top_p: f32,
        votes: &[(TokenId, u32)],
        weight: f32,
        rng: &mut R,
    ) -> Option<TokenId> {
        let usable = |id: TokenId| {
            allowed.contains(id) && logits.get(id as usize).is_some_and(|l| l.is_finite())
        };
        let total_votes: u32 = votes
            .iter()
            .filter(|(id, _)| usable(*id))
            .map(|(_, c)| c)
            .sum();
        if weight <= 0.0 || total_votes == 0 {
            return self.sample(logits, allowed, temperature, top_p, rng);
        }
        let weight = weight.min(1.0);
        // At least one vote is usable, so something was collected.
        self.collect(logits, allowed);
        // The model's probabilities, in place of the logits.
        if temperature <= 0.0 {
            let best = self.best();
            for (k, entry) in self.scratch.iter_mut().enumerate() {
                entry.0 = if k == best { 1.0 } else { 0.0 };
            }
        } else {
            let max = self
                .scratch
                .iter()
                .map(|e| e.0)
                .fold(f32::NEG_INFINITY, f32::max);
            let total = self.exponentiate(max, temperature);
            for entry in &mut self.scratch {
                entry.0 /= total;
            }
        }
        let inv_votes = 1.0 / total_votes as f32;
        for entry in &mut self.scratch {
            let q = votes
                .iter()
                .filter(|(id, _)| *id == entry.1)
                .map(|(_, c)| *c as f32 * inv_votes)
                .sum::<f32>();
            entry.0 = (1.0 - weight) * entry.0 + weight * q;
        }
        self.sort();
        if temperature <= 0.0 {
            return Some(self.scratch[0].1);
        }
        Some(self.draw_nucleus(top_p.clamp(0.0, 1.0), rng))
    }

    /// Fills the scratch with `(logit, id)` of the allowed ids whose logit is finite; false
    /// when there is none.
    fn collect(&mut self, logits: &[f32], allowed: &Allowed) -> bool {
        self.scratch.clear();
        for id in allowed.ids() {
            let l = logits
                .get(id as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY);
            if l.is_finite() {
                self.scratch.push((l, id));
            }
        }
        !self.scratch.is_empty()
    }

    /// Replaces the scratch's logits by `exp((logit − max) / temperature)`, unnormalised, and
    /// returns their sum.
    fn exponentiate(&mut self, max: f32, temperature: f32) -> f32 {
        let inv_t = 1.0 / temperature;
        let mut total = 0.0f32;
        for entry in &mut self.scratch {
            entry.0 = ((entry.0 - max) * inv_t).exp();
            total += entry.0;
        }
        total
    }

    /// Index of the highest value in the scratch, the lowest id among equals.
    fn best(&self) -> usize {
        let mut best = 0;
        for (k, &(l, id)) in self.scratch.iter().enumerate() {
            let (bl, bid) = self.scratch[best];
            if l > bl || (l == bl && id < bid) {
                best = k;
            }
        }
        best
    }

    /// Sorts the scratch most likely first, equal values in id order.
    fn sort(&mut self) {
        self.scratch
            .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    }

    /// Draws from the nucleus of the sorted scratch (weights, not necessarily normalised): the
    /// shortest prefix whose weight reaches `threshold` (always at least one entry).
    fn draw_nucleus<R: Rng + ?Sized>(&self, threshold: f32, rng: &mut R) -> TokenId {
        let mut kept = 0usize;
        let mut mass = 0.0f32;
        while kept < self.scratch.len() {
            mass += self.scratch[kept].0;
            kept += 1;
            if mass >= threshold {
                break;
            }
        }
        let mut u = rng.random::<f32>() * mass;
        for &(p, id) in &self.scratch[..kept] {
            if u < p {
                return id;
            }
            u -= p;
        }
        self.scratch[kept - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grammar::Grammar;
    use crate::tokenizer::Tokenizer;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn allowed_after(tokens: &[&str]) -> (Tokenizer, Allowed) {
        let tok = Tokenizer::reference();
        let g = Grammar::new(&tok).unwrap();
        let ids: Vec<u32> = tokens
            .iter()
            .map(|s| tok.id(s.parse().unwrap()).unwrap())
            .collect();
        let state = g.state_after(&ids).unwrap();
        let a = g.allowed(&state);
        (tok, a)
    }

    #[test]
    fn greedy_takes_the_best_allowed_token() {
        let (tok, allowed) = allowed_after(&["Bar_None", "TimeSig_4/4", "Position_0"]);
        let mut logits = vec![0.0f32; tok.vocab_size()];
        logits[tok.bar_id() as usize] = 100.0; // not allowed after a Position
        let c4 = tok.id("Pitch_60".parse().unwrap()).unwrap();
        logits[c4 as usize] = 5.0;
        let mut s = Sampler::new(tok.vocab_size());
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(s.sample(&logits, &allowed, 0.0, 1.0, &mut rng), Some(c4));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let (tok, allowed) = allowed_after(&["Bar_None", "TimeSig_4/4", "Position_0"]);
        let mut logits = vec![f32::NEG_INFINITY; tok.vocab_size()];
        let a = tok.id("Pitch_60".parse().unwrap()).unwrap();
        let b = tok.id("Pitch_64".parse().unwrap()).unwrap();
        let c = tok.id("Pitch_67".parse().unwrap()).unwrap();
        logits[a as usize] = 2.0; // p ≈ 0.66
        logits[b as usize] = 1.0; // p ≈ 0.24
        logits[c as usize] = 0.0; // p ≈ 0.09
        let mut s = Sampler::new(tok.vocab_size());
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut seen = [0usize; 3];
        for _ in 0..2000 {
            let id = s.sample(&logits, &allowed, 1.0, 0.8, &mut rng).unwrap();
            seen[[a, b, c].iter().position(|&x| x == id).unwrap()] += 1;
        }
        assert_eq!(seen[2], 0, "a token outside the 0.8 nucleus was drawn");
        assert!(seen[0] > 1200 && seen[1] > 400, "{seen:?}");
        // With top_p = 1 every token can come up.
        let hits = (0..2000)
            .filter(|_| s.sample(&logits, &allowed, 1.0, 1.0, &mut rng) == Some(c))
            .count();
        assert!(hits > 50, "{hits}");
    }

    #[test]
    fn impossible_logits_still_give_an_allowed_token() {
        let (tok, allowed) = allowed_after(&["Bar_None", "TimeSig_4/4", "Position_0"]);
        let logits = vec![f32::NAN; tok.vocab_size()];
        let mut s = Sampler::new(tok.vocab_size());
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let id = s.sample(&logits, &allowed, 1.0, 0.9, &mut rng).unwrap();
        assert!(allowed.contains(id));
    }

    #[test]
    fn a_mixed_in_opinion_shifts_the_draw_and_weight_zero_changes_nothing() {
        let (tok, allowed) = allowed_after(&["Bar_None", "TimeSig_4/4", "Position_0"]);
        let mut logits = vec![f32::NEG_INFINITY; tok.vocab_size()];
        let a = tok.id("Pitch_60".parse().unwrap()).unwrap();
        let b = tok.id("Pitch_64".parse().unwrap()).unwrap();
        logits[a as usize] = 3.0;
        logits[b as usize] = 0.0;
        let mut s = Sampler::new(tok.vocab_size());
        let bar = tok.bar_id(); // a vote for a token the grammar forbids is ignored
        let votes = [(b, 3), (bar, 5)];
        // Weight 0: the very same draws as plain sampling.
        let mut r1 = ChaCha8Rng::seed_from_u64(4);
        let mut r2 = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..200 {
            assert_eq!(
                s.sample_mixed(&logits, &allowed, 1.0, 0.9, &votes, 0.0, &mut r1),
                s.sample(&logits, &allowed, 1.0, 0.9, &mut r2)
            );
        }
        // Weight 1: only what the votes say (b), wherever they say something allowed.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..200 {
            assert_eq!(
                s.sample_mixed(&logits, &allowed, 1.0, 1.0, &votes, 1.0, &mut rng),
                Some(b)
            );
        }
        // Half and half: b goes from about 5 % to about half of the draws.
        let hits = (0..2000)
            .filter(|_| {
                s.sample_mixed(&logits, &allowed, 1.0, 1.0, &votes, 0.5, &mut rng) == Some(b)
            })
            .count();
        assert!((850..1150).contains(&hits), "{hits}");
        // Votes only for forbidden tokens: the model alone.
        let mut r1 = ChaCha8Rng::seed_from_u64(6);
        let mut r2 = ChaCha8Rng::seed_from_u64(6);
        assert_eq!(
            s.sample_mixed(&logits, &allowed, 1.0, 0.9, &[(bar, 1)], 1.0, &mut r1),
            s.sample(&logits, &allowed, 1.0, 0.9, &mut r2)
        );
    }
}
