//! The decoder: x-transformers 2.31's
//! `TransformerWrapper(num_tokens, max_seq_len, attn_layers = Decoder(dim, depth, heads,
//! rotary_pos_emb = True, ff_glu = True))`, tensor for tensor.
//!
//! What that module computes (read from x-transformers' source, pinned by the `tiny_xt`
//! fixture test):
//! - `token_emb.emb.weight`: a plain embedding, not scaled, no L2 norm.
//! - No absolute position embedding: rotary sets `disable_abs_pos_emb`, so `max_seq_len` only
//!   bounds the context.
//! - Per block, pre-norm: `x += attn(ln(x))`, `x += ff(ln(x))`; `ln` is a bias-free LayerNorm
//!   with a learned gain stored as `gamma` with a unit offset (gain = `gamma + 1`; eps 1e-5). Attention has no biases, `heads × attn_dim_head` inner
//!   width (64 per head by default, independent of `dim`), scale `attn_dim_head^-0.5`, rotary
//!   on the first `attn_dim_head / 2` features of q and k, interleaved pairs, base 10 000.
//! - GLU feed-forward with exact GELU on the gate, biases on both linears, inner `dim · ff_mult`.
//! - `attn_layers.final_norm`, then `to_logits` (untied, no bias).

use candle_core::quantized::GgmlDType;
use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::{Deserialize, Serialize};

use super::blocks::{
    default_attn_dim_head, default_ff_mult, AttentionLayers, Kernels, Linear, StackConfig, W_INIT,
};
use super::error::ModelConfigError;
use super::kv_cache::KvCache;

/// The `Decoder(...)` arguments of the x-transformers model, under x-transformers' own names.
/// Keys left out take x-transformers' defaults; other x-transformers options are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderConfig {
    /// Width of the residual stream.
    pub dim: usize,
    /// Number of blocks (attention + feed-forward).
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// Features per head (x-transformers' `attn_dim_head`, default 64).
    #[serde(default = "default_attn_dim_head")]
    pub attn_dim_head: usize,
    /// Feed-forward inner width as a multiple of `dim` (default 4).
    #[serde(default = "default_ff_mult")]
    pub ff_mult: usize,
    /// Must be `true`: the engine implements the GLU feed-forward only (x-transformers'
    /// default is `false`, so it must be stated).
    #[serde(default)]
    pub ff_glu: bool,
    /// Must be `true`: the engine implements rotary positions only.
    #[serde(default)]
    pub rotary_pos_emb: bool,
    /// Rotary features per head (default `attn_dim_head / 2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotary_emb_dim: Option<usize>,
}

impl DecoderConfig {
    fn new(dim: usize, depth: usize, heads: usize) -> Self {
        Self {
            dim,
            depth,
            heads,
            attn_dim_head: 64,
            ff_mult: 4,
            ff_glu: true,
            rotary_pos_emb: true,
            rotary_emb_dim: None,
        }
    }

    /// The seed text's model: 12 × 768, 12 heads (context 2048).
    pub fn seed() -> Self {
        Self::new(768, 12, 12)
    }

    /// The embedded default: small enough to decode well over 400 tokens/s on 2 CPU cores.
    pub fn small() -> Self {
        Self::new(256, 6, 4)
    }

    /// For tests: a few thousand parameters.
    pub fn tiny() -> Self {
        Self {
            attn_dim_head: 8,
            ..Self::new(32, 2, 4)
        }
    }

    /// Rotary features per head after defaults.
    pub fn rot_dim(&self) -> usize {
        self.rotary_emb_dim.unwrap_or(self.attn_dim_head / 2)
    }

    /// Refuses option values the engine does not implement, naming the key.
    pub fn validate(&self) -> std::result::Result<(), ModelConfigError> {
        if !self.ff_glu {
            return Err(ModelConfigError::NoGlu);
        }
        if !self.rotary_pos_emb {
            return Err(ModelConfigError::NoRotary);
        }
        validate_shape(
            "decoder",
            self.dim,
            self.depth,
            self.heads,
            self.attn_dim_head,
            self.ff_mult,
            self.rot_dim(),
        )
    }

    pub(crate) fn stack(&self) -> StackConfig {
        StackConfig {
            final_dim: self.dim,
            dim: self.dim,
            depth: self.depth,
            heads: self.heads,
            dim_head: self.attn_dim_head,
            ff_inner: self.dim * self.ff_mult,
            rot_dim: Some(self.rot_dim()),
            causal: true,
            cross_attend: false,
            zero_init_branch_output: false,
        }
    }
}

/// Shared range checks for the transformer shapes of all three networks.
pub(crate) fn validate_shape(
    network: &'static str,
    dim: usize,
    depth: usize,
    heads: usize,
    dim_head: usize,
    ff_mult: usize,
    rot_dim: usize,
) -> std::result::Result<(), ModelConfigError> {
    if dim == 0 || depth == 0 || heads == 0 || dim_head == 0 || ff_mult == 0 {
        return Err(ModelConfigError::EmptyShape { network });
    }
    if rot_dim == 0 || !rot_dim.is_multiple_of(2) || rot_dim > dim_head {
        return Err(ModelConfigError::RotaryDim {
            network,
            rot_dim,
            dim_head,
        });
    }
    Ok(())
}

/// The causal transformer language model over REMI tokens.
#[derive(Debug, Clone)]
pub struct Decoder {
    token_emb: Embedding,
    layers: AttentionLayers,
    to_logits: Linear,
    cfg: DecoderConfig,
    num_tokens: usize,
}

impl Decoder {
    /// Builds the decoder from `vb`, whose names are those of the PyTorch module's
    /// `state_dict()` (fresh variables, when `vb` is backed by a `VarMap`, get N(0, 0.02)).
    pub fn new(num_tokens: usize, cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let emb = vb.get_with_hints((num_tokens, cfg.dim), "token_emb.emb.weight", W_INIT)?;
        let stack = cfg.stack();
        let layers = AttentionLayers::new(&stack, vb.pp("attn_layers"))?;
        let to_logits = Linear::new(cfg.dim, num_tokens, false, false, vb.pp("to_logits"))?;
        Ok(Self {
            token_emb: Embedding::new(emb, cfg.dim),
            layers,
            to_logits,
            cfg: cfg.clone(),
            num_tokens,
        })
    }

    /// Every tensor of the PyTorch `state_dict()` and its shape.
    pub fn tensor_specs(num_tokens: usize, cfg: &DecoderConfig) -> Vec<(String, Vec<usize>)> {
        let mut specs = vec![(
            "token_emb.emb.weight".to_string(),
            vec![num_tokens, cfg.dim],
        )];
        specs.extend(
            cfg.stack()
                .tensor_specs()
                .into_iter()
                .map(|(n, s)| (format!("attn_layers.{n}"), s)),
        );
        specs.push(("to_logits.weight".into(), vec![num_tokens, cfg.dim]));
        specs
    }

    /// The non-trainable buffers x-transformers keeps in its `state_dict()` (the rotary
    /// `inv_freq`), for writers of `decoder.safetensors` that start from a `VarMap`: PyTorch's
    /// strict `load_state_dict` wants them.
    pub fn buffers(&self) -> Result<Vec<(String, Tensor)>> {
        let inv: Vec<f32> = self
            .layers
            .rotary()
            .map(|r| r.inv_freq().iter().map(|&f| f as f32).collect())
            .unwrap_or_default();
        let n = inv.len();
        Ok(vec![(
            "attn_layers.rotary_pos_emb.inv_freq".to_string(),
            Tensor::from_vec(inv, n, self.token_emb.embeddings().device())?,
        )])
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &candle_core::Device {
        self.token_emb.embeddings().device()
    }

    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }

    /// An empty KV cache with room for `capacity` positions (it grows past that if needed).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(self.cfg.depth, capacity)
    }

    /// Residual stream after the last block, *before* the final norm: `(b, t, dim)`. This is
    /// what the adapter reads. With a cache, `ids` continue the cached positions.
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let x = self.token_emb.forward(ids)?;
        match cache {
            Some(c) => {
                if c.depth() != self.cfg.depth {
                    candle_core::bail!(
                        "cache has {} layers, decoder has {}",
                        c.depth(),
                        self.cfg.depth
                    );
                }
                let offset = c.len();
                self.layers
                    .forward(&x, None, None, offset, Some(c.layers_mut()), kernels)
            }
            None => self.layers.forward(&x, None, None, 0, None, kernels),
        }
    }

    /// The token embedding table `(num_tokens, dim)`.
    pub(crate) fn embeddings(&self) -> &Tensor {
        self.token_emb.embeddings()
    }

    /// Final-normed hidden states `(b, t, dim)` of embedded positions `x` `(b, t, dim)` from
    /// position 0, no cache: what the discriminator reads when it reads the decoder. The
    /// weights are frozen tensors, so with [`Kernels::Training`] a gradient reaches `x` (and
    /// through it whoever weighted the embeddings) but no decoder parameter.
    pub(crate) fn features_of_embedded(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let h = self.layers.forward(x, None, None, 0, None, kernels)?;
        self.layers.final_norm().forward(&h, kernels)
    }

    /// Logits `(b, t, num_tokens)` from a pre-final-norm hidden state.
    pub fn logits_from_hidden(&self, hidden: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let h = self.layers.final_norm().forward(hidden, kernels)?;
        self.to_logits.forward(&h, kernels)
    }

    /// Inference forward: ids `(b, t)` (u32) → logits `(b, t, num_tokens)`. With a cache this
    /// processes `t` new positions after the cached ones (prefill with `t > 1`, then step with
    /// `t = 1`; every sequence in the batch advances together).
    pub fn forward(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let h = self.forward_hidden(ids, cache, Kernels::Inference)?;
        self.logits_from_hidden(&h, Kernels::Inference)
    }

    /// Training forward (differentiable, no cache): ids `(b, t)` → logits `(b, t, num_tokens)`.
    pub fn forward_train(&self, ids: &Tensor) -> Result<Tensor> {
        let h = self.forward_hidden(ids, None, Kernels::Training)?;
        self.logits_from_hidden(&h, Kernels::Training)
    }

    /// An 8-bit (Q8_0) copy for fast CPU inference: every projection is quantized; the
    /// embedding and norms stay in full precision. Inference only.
    pub fn quantize(&self) -> Result<Self> {
        Ok(Self {
            layers: self.layers.quantize(GgmlDType::Q8_0)?,
            to_logits: self.to_logits.quantize(GgmlDType::Q8_0)?,
            token_emb: Embedding::new(
                self.token_emb
                    .embeddings()
                    .to_dtype(candle_core::DType::F32)?,
                self.cfg.dim,
            ),
            ..self.clone()
        })
    }

    /// The final norm's gain and the logits head, which a fresh adapter copies.
    pub(crate) fn head(&self) -> Result<(Tensor, Tensor)> {
        Ok((
            self.layers.final_norm().gamma().clone(),
            self.to_logits.weight()?,
        ))
    }
}
