//! The discriminator (training only): how likely is a continuation, given its prime, to be real
//! music rather than the generator's?
//!
//! Why three heads: a single pooled score is easy to satisfy locally and blind to structure.
//! The *token* head judges the continuation as a whole; the *bar* head scores each bar on its
//! own (so the generator gets told *which* bar is off); the *bar order* head runs the bar
//! embeddings through a small transformer to judge whether the bars make sense in sequence. A
//! learned linear layer fuses the three sub-scores into one logit; `sigmoid(logit)` is P(real).
//!
//! Layout: a token embedding; a bidirectional `prime_encoder` stack over the prime; an `encoder`
//! stack over the continuation whose blocks also cross-attend to the encoded prime (the
//! x-transformers `Encoder(cross_attend = True)` layout); bar embeddings are attention-weighted
//! sums of the continuation's token states within each bar (tokens are grouped by the `Bar`
//! token; tokens before the first `Bar` form a bar of their own); `order_encoder` is a small
//! stack over bar embeddings with rotary positions = bar index.
//!
//! What it reads ([`DiscriminatorInput`]): its own token embedding (the default), or the
//! frozen decoder's hidden states. The decoder's states carry what pretraining learnt about
//! music, and each continuation position's state has already attended to the prime, so a critic
//! on top of them starts from features that tell a coherent continuation from a stray one, as
//! reward models for language models start from the language model. In that mode the prime
//! encoder reads the prime's states and the encoder the continuation's, both projected to the
//! critic's width by `proj_in`; the rest is unchanged. Measured on the piano corpus (see
//! `docs/adapter-training.md`), it learns to reject mismatched pairs sooner than the token
//! critic, but tells the decoder's own continuations from real ones no better: both stay near
//! chance there, so the token critic, which costs no decoder pass, stays the default.
//!
//! Sequences in a batch may have different lengths: [`DiscriminatorBatch`] pads them and
//! carries masks, and padding never changes a sequence's scores.

use candle_core::{Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, VarBuilder};
use serde::{Deserialize, Serialize};

use super::blocks::{
    default_attn_dim_head, default_ff_mult, key_padding_mask, softmax_plain, AttentionLayers,
    Kernels, Linear, StackConfig, W_INIT,
};
use super::decoder::{validate_shape, Decoder};
use super::error::ModelConfigError;

fn d_depth() -> usize {
    6
}
fn d_heads() -> usize {
    8
}
fn d_prime_depth() -> usize {
    2
}
fn d_order_depth() -> usize {
    2
}
fn d_bar() -> u32 {
    3
}
fn d_pad() -> u32 {
    0
}
fn d_bos() -> u32 {
    1
}

/// What the discriminator reads (`"input"` in its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscriminatorInput {
    /// Its own token embedding (`token_emb.weight`).
    #[default]
    Tokens,
    /// The frozen decoder's final-normed hidden states of `BOS`, prime and continuation in one
    /// causal pass, projected by `proj_in.weight`. The decoder is not part of the file: the
    /// discriminator is built on the decoder it was trained with.
    Decoder,
}

/// The discriminator's shape (`"discriminator"` in `config.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscriminatorConfig {
    pub dim: usize,
    /// Continuation encoder blocks (default 6).
    #[serde(default = "d_depth")]
    pub depth: usize,
    #[serde(default = "d_heads")]
    pub heads: usize,
    #[serde(default = "default_attn_dim_head")]
    pub attn_dim_head: usize,
    #[serde(default = "default_ff_mult")]
    pub ff_mult: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotary_emb_dim: Option<usize>,
    /// Prime encoder blocks (default 2).
    #[serde(default = "d_prime_depth")]
    pub prime_depth: usize,
    /// Bar-order transformer blocks (default 2).
    #[serde(default = "d_order_depth")]
    pub order_depth: usize,
    /// Id of the `Bar` token that starts each bar (3 in the reference vocabulary).
    #[serde(default = "d_bar")]
    pub bar_token_id: u32,
    /// Id used to pad sequences in a batch (`PAD_None`, 0 in MidiTok vocabularies).
    #[serde(default = "d_pad")]
    pub pad_token_id: u32,
    /// Its own embedding or the decoder's states (default: its own embedding, as files written
    /// before the choice existed).
    #[serde(default)]
    pub input: DiscriminatorInput,
    /// `BOS`, which opens the decoder's view of a pair (1 in MidiTok vocabularies).
    #[serde(default = "d_bos")]
    pub bos_token_id: u32,
}

impl DiscriminatorConfig {
    /// The seed text's discriminator: 6 blocks × 512, 8 heads.
    pub fn seed() -> Self {
        Self {
            dim: 512,
            depth: 6,
            heads: 8,
            attn_dim_head: 64,
            ff_mult: 4,
            rotary_emb_dim: None,
            prime_depth: 2,
            order_depth: 2,
            bar_token_id: 3,
            pad_token_id: 0,
            input: DiscriminatorInput::Tokens,
            bos_token_id: 1,
        }
    }

    /// Companion of the `small` decoder.
    pub fn small() -> Self {
        Self {
            dim: 256,
            depth: 4,
            heads: 4,
            prime_depth: 1,
            ..Self::seed()
        }
    }

    /// For tests.
    pub fn tiny() -> Self {
        Self {
            dim: 16,
            depth: 2,
            heads: 2,
            attn_dim_head: 8,
            ff_mult: 2,
            prime_depth: 1,
            order_depth: 1,
            ..Self::seed()
        }
    }

    pub fn rot_dim(&self) -> usize {
        self.rotary_emb_dim.unwrap_or(self.attn_dim_head / 2)
    }

    pub fn validate(&self) -> std::result::Result<(), ModelConfigError> {
        validate_shape(
            "discriminator",
            self.dim,
            self.depth,
            self.heads,
            self.attn_dim_head,
            self.ff_mult,
            self.rot_dim(),
        )?;
        if self.prime_depth == 0 || self.order_depth == 0 {
            return Err(ModelConfigError::DiscriminatorDepth);
        }
        Ok(())
    }

    fn stack(&self, depth: usize, cross_attend: bool) -> StackConfig {
        StackConfig {
            dim: self.dim,
            depth,
            heads: self.heads,
            dim_head: self.attn_dim_head,
            ff_inner: self.dim * self.ff_mult,
            rot_dim: Some(self.rot_dim()),
            causal: false,
            cross_attend,
            zero_init_branch_output: false,
            final_dim: self.dim,
        }
    }
}

/// A padded batch of (prime, continuation) pairs ready for the discriminator.
#[derive(Debug, Clone)]
pub struct DiscriminatorBatch {
    /// `(b, t_prime)` u32, padded with the pad id.
    pub prime: Tensor,
    /// `(b, t_prime)` f32, 1 for real tokens.
    pub prime_mask: Tensor,
    /// `(b, t)` u32.
    pub continuation: Tensor,
    /// `(b, t)` f32.
    pub continuation_mask: Tensor,
    /// `(b, bars, t)` f32: 1 where token `t` belongs to bar `bars`.
    pub bar_membership: Tensor,
    /// `(b, bars)` f32: 1 for real bars.
    pub bar_mask: Tensor,
    /// Number of bars of each continuation.
    pub bars: Vec<usize>,
    /// The decoder's view of each pair, for a discriminator that reads the decoder.
    joint: Option<Joint>,
}

/// Each pair as the decoder reads it: `BOS`, the prime, the continuation's opening bar line
/// (which pairs and rollouts leave to the prime) and the continuation, right-padded (the decoder
/// is causal, so padding after a sequence changes none of its states).
#[derive(Debug, Clone)]
struct Joint {
    /// `(b, t_joint)` u32.
    ids: Tensor,
    /// Per pair: where the continuation starts, and the prime's and continuation's lengths.
    lead: Vec<usize>,
    prime_len: Vec<usize>,
    continuation_len: Vec<usize>,
}

/// The continuation's opening bar line as the generator writes it after a prime: `Bar`, and the
/// token that follows `Bar` in every bar of the prime when there is one (the time signature;
/// pairs keep one meter), so the decoder sees a well-formed sequence.
fn bar_line(prime: &[u32], bar: u32) -> Vec<u32> {
    let starts: Vec<usize> = (0..prime.len()).filter(|&i| prime[i] == bar).collect();
    let after = |i: usize| prime.get(i + 1).copied();
    match starts[..] {
        [first, .., last] if after(first).is_some() && after(first) == after(last) => {
            vec![bar, prime[last + 1]]
        }
        _ => vec![bar],
    }
}

impl Joint {
    fn new(
        primes: &[&[u32]],
        continuations: &[&[u32]],
        cfg: &DiscriminatorConfig,
        device: &Device,
    ) -> Result<Self> {
        let seqs: Vec<Vec<u32>> = primes
            .iter()
            .zip(continuations)
            .map(|(p, c)| {
                let mut s = Vec::with_capacity(p.len() + c.len() + 3);
                s.push(cfg.bos_token_id);
                s.extend_from_slice(p);
                s.extend(bar_line(p, cfg.bar_token_id));
                s.extend_from_slice(c);
                s
            })
            .collect();
        let continuation_len: Vec<usize> = continuations.iter().map(|c| c.len()).collect();
        let lead = seqs
            .iter()
            .zip(&continuation_len)
            .map(|(s, c)| s.len() - c)
            .collect();
        let refs: Vec<&[u32]> = seqs.iter().map(|s| &s[..]).collect();
        let (ids, _, t) = pad_batch(&refs, cfg.pad_token_id);
        Ok(Self {
            ids: Tensor::from_vec(ids, (seqs.len(), t), device)?,
            lead,
            prime_len: primes.iter().map(|p| p.len()).collect(),
            continuation_len,
        })
    }

    /// Embeds the pairs with `emb` `(num_tokens, d)`; `continuation` `(b, t, d)`, when given,
    /// replaces each continuation's embeddings (the relaxed path).
    fn embed(&self, emb: &Tensor, continuation: Option<&Tensor>) -> Result<Tensor> {
        let (b, t) = self.ids.dims2()?;
        let e = emb
            .index_select(&self.ids.flatten_all()?, 0)?
            .reshape((b, t, ()))?;
        let Some(c) = continuation else {
            return Ok(e);
        };
        let rows = (0..b)
            .map(|i| {
                let (lead, n) = (self.lead[i], self.continuation_len[i]);
                let row = e.get(i)?;
                Tensor::cat(
                    &[
                        row.narrow(0, 0, lead)?,
                        c.get(i)?.narrow(0, 0, n)?,
                        row.narrow(0, lead + n, t - lead - n)?,
                    ],
                    0,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&rows, 0)
    }

    /// The prime's and the continuation's states out of the joint states `(b, t_joint, d)`,
    /// each padded with zeros to the batch's own prime and continuation lengths.
    fn split(&self, states: &Tensor, t_prime: usize, t: usize) -> Result<(Tensor, Tensor)> {
        let cut = |i: usize, from: usize, len: usize, to: usize| {
            states
                .get(i)?
                .narrow(0, from, len)?
                .pad_with_zeros(0, 0, to - len)
        };
        let b = self.lead.len();
        let prime = (0..b)
            .map(|i| cut(i, 1, self.prime_len[i], t_prime))
            .collect::<Result<Vec<_>>>()?;
        let cont = (0..b)
            .map(|i| cut(i, self.lead[i], self.continuation_len[i], t))
            .collect::<Result<Vec<_>>>()?;
        Ok((Tensor::stack(&prime, 0)?, Tensor::stack(&cont, 0)?))
    }
}

/// Bar index of every token: tokens before the first `Bar` form bar 0, each `Bar` token
/// (except one at position 0, which opens bar 0) starts the next bar.
pub fn bar_indices(tokens: &[u32], bar_token_id: u32) -> Vec<usize> {
    let mut cur = 0;
    tokens
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            if i > 0 && t == bar_token_id {
                cur += 1;
            }
            cur
        })
        .collect()
}

impl DiscriminatorBatch {
    /// Pads `primes` and `continuations` (same count, none empty) into one batch.
    pub fn new(
        primes: &[&[u32]],
        continuations: &[&[u32]],
        cfg: &DiscriminatorConfig,
        device: &Device,
    ) -> super::Result<Self> {
        let b = primes.len();
        if b == 0 || continuations.len() != b {
            return Err(super::Error::Input(format!(
                "discriminator batch: {b} primes and {} continuations (need the same, non-zero, count)",
                continuations.len()
            )));
        }
        if primes.iter().chain(continuations).any(|s| s.is_empty()) {
            return Err(super::Error::Input(
                "discriminator batch: primes and continuations must not be empty".into(),
            ));
        }
        let pad = cfg.pad_token_id;
        let (ids_p, mask_p, tp) = pad_batch(primes, pad);
        let (ids_c, mask_c, tc) = pad_batch(continuations, pad);
        let bar_idx: Vec<Vec<usize>> = continuations
            .iter()
            .map(|c| bar_indices(c, cfg.bar_token_id))
            .collect();
        let bars: Vec<usize> = bar_idx
            .iter()
            .map(|v| v.last().map_or(0, |l| l + 1))
            .collect();
        let nb = bars.iter().copied().max().unwrap_or(0);
        let mut membership = vec![0f32; b * nb * tc];
        let mut bar_mask = vec![0f32; b * nb];
        for (i, idx) in bar_idx.iter().enumerate() {
            for (t, &bar) in idx.iter().enumerate() {
                membership[(i * nb + bar) * tc + t] = 1.0;
            }
            for m in &mut bar_mask[i * nb..i * nb + bars[i]] {
                *m = 1.0;
            }
        }
        Ok(Self {
            prime: Tensor::from_vec(ids_p, (b, tp), device)?,
            prime_mask: Tensor::from_vec(mask_p, (b, tp), device)?,
            continuation: Tensor::from_vec(ids_c, (b, tc), device)?,
            continuation_mask: Tensor::from_vec(mask_c, (b, tc), device)?,
            bar_membership: Tensor::from_vec(membership, (b, nb, tc), device)?,
            bar_mask: Tensor::from_vec(bar_mask, (b, nb), device)?,
            bars,
            joint: match cfg.input {
                DiscriminatorInput::Tokens => None,
                DiscriminatorInput::Decoder => {
                    Some(Joint::new(primes, continuations, cfg, device)?)
                }
            },
        })
    }
}

fn pad_batch(seqs: &[&[u32]], pad: u32) -> (Vec<u32>, Vec<f32>, usize) {
    let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(seqs.len() * t);
    let mut mask = Vec::with_capacity(seqs.len() * t);
    for s in seqs {
        ids.extend_from_slice(s);
        ids.extend(std::iter::repeat_n(pad, t - s.len()));
        mask.extend(std::iter::repeat_n(1f32, s.len()));
        mask.extend(std::iter::repeat_n(0f32, t - s.len()));
    }
    (ids, mask, t)
}

/// Everything the discriminator computes for a batch.
#[derive(Debug, Clone)]
pub struct DiscriminatorOutput {
    /// `(b,)` fused logit; `sigmoid` gives P(real).
    pub logit: Tensor,
    /// `(b,)` token-level sub-score (a logit).
    pub token_score: Tensor,
    /// `(b,)` bar-level sub-score: mean of the per-bar scores over real bars.
    pub bar_score: Tensor,
    /// `(b,)` bar-order sub-score.
    pub order_score: Tensor,
    /// `(b, bars)` score of each bar (meaningless where `bar_mask` is 0).
    pub bar_scores: Tensor,
    /// `(b, bars, dim)` bar embeddings.
    pub bar_embeddings: Tensor,
    /// `(b, bars)` 1 for real bars.
    pub bar_mask: Tensor,
}

impl DiscriminatorOutput {
    /// P(real) per sequence, `(b,)`.
    pub fn p_real(&self) -> Result<Tensor> {
        // 1 / (1 + e^-x) from plain ops, so it is differentiable too.
        (self.logit.neg()?.exp()? + 1.0)?.recip()
    }
}

/// Where the discriminator's input states come from.
#[derive(Debug, Clone)]
enum Reads {
    Tokens(Embedding),
    /// The frozen decoder (never trained here) and the projection to the critic's width.
    Decoder {
        decoder: Box<Decoder>,
        proj_in: Linear,
    },
}

/// The discriminator network.
#[derive(Debug, Clone)]
pub struct Discriminator {
    reads: Reads,
    prime_encoder: AttentionLayers,
    encoder: AttentionLayers,
    order_encoder: AttentionLayers,
    token_head: Linear,
    bar_attn: Linear,
    bar_head: Linear,
    order_head: Linear,
    fuse: Linear,
    cfg: DiscriminatorConfig,
}

impl Discriminator {
    /// A discriminator that reads its own token embedding ([`DiscriminatorInput::Tokens`]).
    pub fn new(num_tokens: usize, cfg: &DiscriminatorConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.input != DiscriminatorInput::Tokens {
            candle_core::bail!("a discriminator that reads the decoder is built with its decoder");
        }
        let emb = vb.get_with_hints((num_tokens, cfg.dim), "token_emb.weight", W_INIT)?;
        Self::build(Reads::Tokens(Embedding::new(emb, cfg.dim)), cfg, vb)
    }

    /// A discriminator for `decoder`'s vocabulary, reading the decoder's states when `cfg` says
    /// so (the decoder is shared, not copied: its tensors are reference-counted).
    pub fn with_decoder(
        decoder: &Decoder,
        cfg: &DiscriminatorConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        match cfg.input {
            DiscriminatorInput::Tokens => Self::new(decoder.num_tokens(), cfg, vb),
            DiscriminatorInput::Decoder => {
                let proj_in = Linear::new(
                    decoder.config().dim,
                    cfg.dim,
                    false,
                    false,
                    vb.pp("proj_in"),
                )?;
                let reads = Reads::Decoder {
                    decoder: Box::new(decoder.clone()),
                    proj_in,
                };
                Self::build(reads, cfg, vb)
            }
        }
    }

    fn build(reads: Reads, cfg: &DiscriminatorConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.dim;
        Ok(Self {
            reads,
            prime_encoder: AttentionLayers::new(
                &cfg.stack(cfg.prime_depth, false),
                vb.pp("prime_encoder"),
            )?,
            encoder: AttentionLayers::new(&cfg.stack(cfg.depth, true), vb.pp("encoder"))?,
            order_encoder: AttentionLayers::new(
                &cfg.stack(cfg.order_depth, false),
                vb.pp("order_encoder"),
            )?,
            token_head: Linear::new(d, 1, true, false, vb.pp("token_head"))?,
            bar_attn: Linear::new(d, 1, true, false, vb.pp("bar_attn"))?,
            bar_head: Linear::new(d, 1, true, false, vb.pp("bar_head"))?,
            order_head: Linear::new(d, 1, true, false, vb.pp("order_head"))?,
            fuse: Linear::new(3, 1, true, false, vb.pp("fuse"))?,
            cfg: cfg.clone(),
        })
    }

    /// Every tensor of `discriminator.safetensors` and its shape, for a decoder of width
    /// `decoder_dim` over `num_tokens` tokens.
    pub fn tensor_specs(
        num_tokens: usize,
        decoder_dim: usize,
        cfg: &DiscriminatorConfig,
    ) -> Vec<(String, Vec<usize>)> {
        let d = cfg.dim;
        let mut specs = vec![match cfg.input {
            DiscriminatorInput::Tokens => ("token_emb.weight".to_string(), vec![num_tokens, d]),
            DiscriminatorInput::Decoder => ("proj_in.weight".to_string(), vec![d, decoder_dim]),
        }];
        for (name, depth, cross) in [
            ("prime_encoder", cfg.prime_depth, false),
            ("encoder", cfg.depth, true),
            ("order_encoder", cfg.order_depth, false),
        ] {
            specs.extend(
                cfg.stack(depth, cross)
                    .tensor_specs()
                    .into_iter()
                    // The rotary buffer is not stored: it is not a parameter of this network.
                    .filter(|(n, _)| !n.starts_with("rotary_pos_emb"))
                    .map(|(n, s)| (format!("{name}.{n}"), s)),
            );
        }
        for head in ["token_head", "bar_attn", "bar_head", "order_head"] {
            specs.push((format!("{head}.weight"), vec![1, d]));
            specs.push((format!("{head}.bias"), vec![1]));
        }
        specs.push(("fuse.weight".into(), vec![1, 3]));
        specs.push(("fuse.bias".into(), vec![1]));
        specs
    }

    pub fn config(&self) -> &DiscriminatorConfig {
        &self.cfg
    }

    /// Builds a padded batch with this network's bar and pad ids.
    pub fn batch(
        &self,
        primes: &[&[u32]],
        continuations: &[&[u32]],
        device: &Device,
    ) -> super::Result<DiscriminatorBatch> {
        DiscriminatorBatch::new(primes, continuations, &self.cfg, device)
    }

    /// Scores a batch. `kernels` is [`Kernels::Training`] when training (candle's fused
    /// kernels have no gradient), [`Kernels::Inference`] for evaluation only.
    pub fn forward(
        &self,
        batch: &DiscriminatorBatch,
        kernels: Kernels,
    ) -> Result<DiscriminatorOutput> {
        self.score(batch, None, kernels)
    }

    /// Scores a batch whose continuation tokens are given as weights over the vocabulary,
    /// `(b, t, num_tokens)`, instead of ids: each position's embedding is the weighted sum of
    /// token embeddings. One-hot weights give exactly [`Discriminator::forward`]; weights that
    /// carry a generator's probabilities (straight-through, or its expected token) let a
    /// gradient reach the generator through the sampled tokens, which ids cannot (feature
    /// matching in training). `batch.continuation` is then used only for its shape and masks.
    pub fn forward_relaxed(
        &self,
        batch: &DiscriminatorBatch,
        weights: &Tensor,
        kernels: Kernels,
    ) -> Result<DiscriminatorOutput> {
        self.score(batch, Some(weights), kernels)
    }

    /// Embeds the batch as the discriminator reads it (the continuation from its ids, or from
    /// `weights` over the vocabulary when given) and scores it.
    fn score(
        &self,
        batch: &DiscriminatorBatch,
        weights: Option<&Tensor>,
        kernels: Kernels,
    ) -> Result<DiscriminatorOutput> {
        match &self.reads {
            Reads::Tokens(emb) => {
                let p = emb.forward(&batch.prime)?;
                let x = match weights {
                    None => emb.forward(&batch.continuation)?,
                    Some(w) => w.broadcast_matmul(emb.embeddings())?,
                };
                self.forward_embedded(batch, &p, &x, kernels)
            }
            Reads::Decoder { decoder, proj_in } => {
                // Ids carry no gradient, so nothing flows back into the frozen decoder; weighted
                // embeddings go through it with its differentiable kernels, so the gradient
                // reaches the weights.
                let joint = joint_of(batch)?;
                let soft = weights
                    .map(|w| w.broadcast_matmul(decoder.embeddings()))
                    .transpose()?;
                let e = joint.embed(decoder.embeddings(), soft.as_ref())?;
                let states = decoder.features_of_embedded(&e, kernels)?;
                let (p, x) =
                    joint.split(&states, batch.prime.dim(1)?, batch.continuation.dim(1)?)?;
                let p = proj_in.forward(&p, kernels)?;
                let x = proj_in.forward(&x, kernels)?;
                self.forward_embedded(batch, &p, &x, kernels)
            }
        }
    }

    /// Scores embedded primes `p` `(b, t_prime, dim)` and continuations `x` `(b, t, dim)`.
    fn forward_embedded(
        &self,
        batch: &DiscriminatorBatch,
        p: &Tensor,
        x: &Tensor,
        kernels: Kernels,
    ) -> Result<DiscriminatorOutput> {
        let emb_dtype = x.dtype();
        let pm = key_padding_mask(&batch.prime_mask, emb_dtype)?;
        let cm = key_padding_mask(&batch.continuation_mask, emb_dtype)?;

        let ctx = self
            .prime_encoder
            .forward(p, Some(&pm), None, 0, None, kernels)?;
        let ctx = self.prime_encoder.final_norm().forward(&ctx, kernels)?;

        let h = self
            .encoder
            .forward(x, Some(&cm), Some((&ctx, Some(&pm))), 0, None, kernels)?;
        let h = self.encoder.final_norm().forward(&h, kernels)?;

        // Token head: masked mean of the token states.
        let cmask = batch.continuation_mask.to_dtype(emb_dtype)?;
        let pooled = masked_mean(&h, &cmask)?;
        let token_score = self
            .token_head
            .forward(&pooled, kernels)?
            .squeeze(D::Minus1)?;

        // Bar head: attention weights within each bar (additive mask keeps other bars' and
        // padding tokens out), weighted sums of token states, one score per bar.
        let (b, t, _) = h.dims3()?;
        let s = self.bar_attn.forward(&h, kernels)?.reshape((b, 1, t))?;
        let member = batch.bar_membership.to_dtype(emb_dtype)?;
        let outside = ((&member - 1.0)? * 1e9)?;
        let w = softmax_plain(&s.broadcast_add(&outside)?)?;
        let w = (w * &member)?; // empty (padding) bars get all-zero weights rather than uniform
        let bar_embeddings = w.matmul(&h)?;
        let bmask = batch.bar_mask.to_dtype(emb_dtype)?;
        let bar_scores = self
            .bar_head
            .forward(&bar_embeddings, kernels)?
            .squeeze(D::Minus1)?;
        let bar_score = ((&bar_scores * &bmask)?.sum(D::Minus1)? / bmask.sum(D::Minus1)?)?;

        // Bar order head: bar embeddings through a small bidirectional transformer.
        let om = key_padding_mask(&batch.bar_mask, emb_dtype)?;
        let o = self
            .order_encoder
            .forward(&bar_embeddings, Some(&om), None, 0, None, kernels)?;
        let o = self.order_encoder.final_norm().forward(&o, kernels)?;
        let order_score = self
            .order_head
            .forward(&masked_mean(&o, &bmask)?, kernels)?
            .squeeze(D::Minus1)?;

        let scores = Tensor::stack(&[&token_score, &bar_score, &order_score], D::Minus1)?;
        let logit = self.fuse.forward(&scores, kernels)?.squeeze(D::Minus1)?;
        Ok(DiscriminatorOutput {
            logit,
            token_score,
            bar_score,
            order_score,
            bar_scores,
            bar_embeddings,
            bar_mask: bmask,
        })
    }
}

/// The batch's decoder view, which only a batch built for a decoder-reading discriminator has.
fn joint_of(batch: &DiscriminatorBatch) -> Result<&Joint> {
    match &batch.joint {
        Some(j) => Ok(j),
        None => candle_core::bail!(
            "this batch was built for a discriminator that reads tokens, not the decoder"
        ),
    }
}

/// Mean over dim 1 of `x` `(b, t, d)` where `mask` `(b, t)` is 1.
fn masked_mean(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.unsqueeze(D::Minus1)?;
    let sum = x.broadcast_mul(&m)?.sum(1)?;
    let n = m.sum(1)?.clamp(1.0, f64::INFINITY)?;
    sum.broadcast_div(&n)
}
