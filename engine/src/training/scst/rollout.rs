//! Sampling continuations with the generator (decoder + adapter, under the grammar) and scoring
//! sequences by teacher forcing: the adapter's log-probabilities with a gradient, the frozen
//! decoder's as plain values (the decoder's hidden states are computed once, without a graph,
//! and feed both heads, so nothing ever flows back into the decoder).

use std::ops::ControlFlow;

use candle_core::{DType, Tensor, D};

use crate::generation::{Generator, Prime, Settings, Start};
use crate::models::{Adapter, Decoder, Kernels};
use crate::steering::Steering;
use crate::tokenizer::TokenId;

use super::pairs::Pair;
use crate::training::Result;

/// How continuations are sampled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sampling {
    pub bars: u32,
    pub temperature: f32,
    pub top_p: f32,
}

impl Sampling {
    fn settings(&self, seed: u64, variations: usize, greedy: bool) -> Settings {
        Settings {
            bars: self.bars,
            temperature: if greedy { 0.0 } else { self.temperature },
            top_p: self.top_p,
            seed,
            variations,
            start: Start::NextBar,
            // The model alone: steering would change what the reward is about.
            steering: Steering {
                faithfulness: 0.0,
                ..Steering::default()
            },
        }
    }
}

/// The prime the generator continues for `pair`.
pub(crate) fn prime(gen: &Generator<'_>, pair: &Pair, sampling: &Sampling) -> Result<Prime> {
    let settings = sampling.settings(0, 1, false);
    Prime::from_ids(
        gen.tokenizer(),
        gen.grammar(),
        &pair.prime,
        Some(pair.end),
        &settings,
        gen.context(),
    )
    .map_err(|e| crate::training::Error::Generation(format!("a prime/continuation pair: {e}")))
}

/// `k` continuations of `prime` (temperature 0 with `greedy`), each from its own seed.
pub(crate) fn sample(
    gen: &Generator<'_>,
    prime: &Prime,
    sampling: &Sampling,
    k: usize,
    seed: u64,
    greedy: bool,
) -> Result<Vec<Vec<TokenId>>> {
    let settings = sampling.settings(seed, k, greedy);
    let (conts, _) = gen
        .generate(prime, &settings, None, |_| ControlFlow::Continue(()))
        .map_err(|e| crate::training::Error::Generation(e.to_string()))?;
    Ok(conts.into_iter().map(|c| c.ids).collect())
}

/// Teacher-forced scores of `(prefix, continuation)` sequences.
pub(crate) struct Scored {
    /// `(n, L)` the adapter's log-probability of each target (tracked when asked).
    pub logp: Tensor,
    /// `(n, L)` 1 on continuation targets.
    pub mask: Tensor,
    /// Per sequence, the adapter's and the decoder's log-probabilities of its continuation.
    pub adapter_values: Vec<Vec<f32>>,
    pub decoder_values: Vec<Vec<f32>>,
    /// Per sequence, the adapter's logits `(len, vocab)` at its continuation positions (for
    /// feature matching), when asked.
    pub continuation_logits: Vec<Tensor>,
}

/// The prefix to teacher-force `continuation` after within `context` tokens: the generator
/// slides its window past the context (dropping the oldest whole bars), so a sequence longer
/// than the context is scored after the prefix's oldest bars are dropped likewise (BOS kept),
/// which keeps the scored positions within the range the decoder was trained on.
pub(crate) fn fit_prefix<'a>(
    prefix: &'a [TokenId],
    continuation_len: usize,
    bar: TokenId,
    context: usize,
) -> std::borrow::Cow<'a, [TokenId]> {
    let total = prefix.len() + continuation_len;
    if total <= context || prefix.len() < 2 {
        return prefix.into();
    }
    let excess = total - context;
    let cut = (1 + excess..prefix.len())
        .find(|&i| prefix[i] == bar)
        .or_else(|| prefix.iter().rposition(|&id| id == bar).filter(|&i| i > 0));
    match cut {
        Some(i) => {
            let mut kept = Vec::with_capacity(1 + prefix.len() - i);
            kept.push(prefix[0]);
            kept.extend_from_slice(&prefix[i..]);
            kept.into()
        }
        None => prefix.into(),
    }
}

/// Scores sequences: `prefix` (what the generator was fed, BOS first) then `continuation`.
/// `train` selects the adapter's differentiable kernels. Prefixes are first fitted to
/// `context` ([`fit_prefix`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn score(
    decoder: &Decoder,
    adapter: &Adapter,
    seqs: &[(&[TokenId], &[TokenId])],
    pad: TokenId,
    bar: TokenId,
    context: usize,
    train: bool,
    want_logits: bool,
) -> Result<Scored> {
    let fitted: Vec<std::borrow::Cow<'_, [TokenId]>> = seqs
        .iter()
        .map(|(p, c)| fit_prefix(p, c.len(), bar, context))
        .collect();
    let seqs: Vec<(&[TokenId], &[TokenId])> = fitted
        .iter()
        .zip(seqs)
        .map(|(p, (_, c))| (&p[..], *c))
        .collect();
    let seqs = &seqs[..];
    let dev = decoder.device();
    let n = seqs.len();
    let len = seqs
        .iter()
        .map(|(p, c)| p.len() + c.len() - 1)
        .max()
        .unwrap_or(1);
    let mut inputs = Vec::with_capacity(n * len);
    let mut targets = Vec::with_capacity(n * len);
    let mut mask = vec![0f32; n * len];
    for (i, (p, c)) in seqs.iter().enumerate() {
        let full: Vec<TokenId> = p.iter().chain(c.iter()).copied().collect();
        let l = full.len() - 1;
        inputs.extend_from_slice(&full[..l]);
        inputs.extend(std::iter::repeat_n(pad, len - l));
        targets.extend_from_slice(&full[1..]);
        targets.extend(std::iter::repeat_n(pad, len - l));
        for m in &mut mask[i * len + p.len() - 1..i * len + l] {
            *m = 1.0;
        }
    }
    let inputs = Tensor::from_vec(inputs, (n, len), dev)?;
    let targets = Tensor::from_vec(targets, (n, len, 1), dev)?;
    // The decoder is frozen: its hidden states are inputs, computed without a graph.
    let hidden = decoder
        .forward_hidden(&inputs, None, Kernels::Inference)?
        .detach();
    let kernels = if train {
        Kernels::Training
    } else {
        Kernels::Inference
    };
    let logits = adapter.forward_with(&hidden, None, kernels)?;
    let logp_all = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let logp = logp_all.gather(&targets, D::Minus1)?.squeeze(D::Minus1)?;
    let ref_logits = decoder.logits_from_hidden(&hidden, Kernels::Inference)?;
    let ref_logp = candle_nn::ops::log_softmax(&ref_logits, D::Minus1)?
        .gather(&targets, D::Minus1)?
        .squeeze(D::Minus1)?;
    let a_rows: Vec<Vec<f32>> = logp.detach().to_dtype(DType::F32)?.to_vec2()?;
    let d_rows: Vec<Vec<f32>> = ref_logp.to_dtype(DType::F32)?.to_vec2()?;
    let mut adapter_values = Vec::with_capacity(n);
    let mut decoder_values = Vec::with_capacity(n);
    let mut continuation_logits = Vec::new();
    for (i, (p, c)) in seqs.iter().enumerate() {
        let range = p.len() - 1..p.len() - 1 + c.len();
        adapter_values.push(a_rows[i][range.clone()].to_vec());
        decoder_values.push(d_rows[i][range.clone()].to_vec());
        if want_logits {
            continuation_logits.push(logits.get(i)?.narrow(0, range.start, c.len())?);
        }
    }
    Ok(Scored {
        logp,
        mask: Tensor::from_vec(mask, (n, len), dev)?,
        adapter_values,
        decoder_values,
        continuation_logits,
    })
}

#[cfg(test)]
mod tests {
    use super::fit_prefix;

    #[test]
    fn a_long_prefix_loses_its_oldest_whole_bars() {
        const BAR: u32 = 4;
        let prefix = [1, BAR, 10, 11, BAR, 12, 13, BAR, 14];
        assert_eq!(&fit_prefix(&prefix, 3, BAR, 20)[..], &prefix[..]);
        // 12 tokens in a context of 10: two must go, so the first two bars go.
        assert_eq!(
            &fit_prefix(&prefix, 3, BAR, 10)[..],
            &[1, BAR, 12, 13, BAR, 14]
        );
        assert_eq!(&fit_prefix(&prefix, 3, BAR, 8)[..], &[1, BAR, 14]);
    }
}
