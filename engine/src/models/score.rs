//! Scoring a token sequence: mean negative log-likelihood per token, in nats.
//!
//! The sequence scored is `BOS + ids` (as in training), so every id of the piece is predicted,
//! the first one from BOS alone. Sequences longer than the model's context are scored in
//! overlapping windows: each window after the first keeps half a context of preceding tokens
//! and scores only the tokens the previous windows did not, so every token is scored exactly
//! once and always with at least half a context (except the first few of the piece).

use candle_core::{DType, Device, Result, Tensor, D};

use super::{Adapter, Decoder, Kernels};

/// Result of [`mean_nll`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NllScore {
    /// Mean NLL per scored token, nats.
    pub mean_nll: f64,
    /// Number of scored tokens (`ids.len()`).
    pub tokens: usize,
}

impl NllScore {
    /// Perplexity, `exp(mean_nll)`.
    pub fn perplexity(&self) -> f64 {
        self.mean_nll.exp()
    }
}

/// Mean NLL of `ids` after `bos`, decoder alone or decoder + adapter, in windows of
/// `context` positions (the config's `max_seq_len`).
pub fn mean_nll(
    decoder: &Decoder,
    adapter: Option<&Adapter>,
    ids: &[u32],
    bos: u32,
    context: usize,
    device: &Device,
) -> Result<NllScore> {
    if ids.is_empty() {
        candle_core::bail!("nothing to score: the sequence has no tokens");
    }
    if context < 2 {
        candle_core::bail!("context {context} is too short to score with");
    }
    let mut seq = Vec::with_capacity(ids.len() + 1);
    seq.push(bos);
    seq.extend_from_slice(ids);
    let n = seq.len();
    let keep = context / 2;
    let mut total = 0f64;
    let mut next_target = 1;
    let mut start = 0;
    loop {
        let end = (start + context).min(n);
        let window = Tensor::from_slice(&seq[start..end], (1, end - start), device)?;
        let logits = match adapter {
            Some(a) => a.forward(
                &decoder.forward_hidden(&window, None, Kernels::Inference)?,
                None,
            )?,
            None => decoder.forward(&window, None)?,
        };
        let logp =
            candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?.squeeze(0)?, D::Minus1)?;
        // Row i predicts position start + i + 1.
        let first_row = next_target - 1 - start;
        let rows = end - next_target;
        let targets = Tensor::from_slice(&seq[next_target..end], (rows, 1), device)?;
        let picked = logp.narrow(0, first_row, rows)?.gather(&targets, 1)?;
        total -= picked.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        next_target = end;
        if end == n {
            break;
        }
        start = end - keep;
    }
    Ok(NllScore {
        mean_nll: total / ids.len() as f64,
        tokens: ids.len(),
    })
}

impl super::Model {
    /// Mean NLL of `ids` (no BOS: it is added) with the loaded adapter if any, in windows of
    /// the config's `max_seq_len`.
    pub fn score(&self, ids: &[u32]) -> Result<NllScore> {
        mean_nll(
            &self.decoder,
            self.adapter.as_ref(),
            ids,
            self.tokenizer.bos_id(),
            self.config.max_seq_len,
            self.decoder_device(),
        )
    }

    /// Mean NLL of `ids` with the decoder alone (ignoring any adapter).
    pub fn score_decoder(&self, ids: &[u32]) -> Result<NllScore> {
        mean_nll(
            &self.decoder,
            None,
            ids,
            self.tokenizer.bos_id(),
            self.config.max_seq_len,
            self.decoder_device(),
        )
    }
}
