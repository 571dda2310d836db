//! The style adapter: a few transformer blocks on top of a frozen decoder, trained per style and
//! shipped as its own small `adapter.safetensors`, so that styles are swappable files.
//!
//! It reads the decoder's residual stream *before* the decoder's final norm, runs it through
//! its own blocks (the decoder's kind: pre-norm, rotary, GLU), then its own final norm and
//! logits head. A fresh adapter is an **exact pass-through**: every block's output projections
//! start at zero (so each residual block is the identity), and the final norm and head start as
//! copies of the decoder's — its logits are the decoder's logits, bit for bit in f32. Training
//! then only has to learn the difference a style makes, starting from a working model.
//!
//! When the adapter is narrower or wider than the decoder, `proj_in` maps into its width and a
//! zero-initialised `proj_out` maps its stream back and adds it to the decoder's, so the
//! pass-through still holds (the blocks then start random: with `proj_out` at zero they need not
//! be, and a second zero layer in series would starve both of gradient).
//!
//! Tensor names follow an x-transformers `Decoder` stack (`attn_layers.…`) plus `to_logits`,
//! and, for differing widths, `proj_in` / `proj_out` (no biases).

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::blocks::{default_attn_dim_head, default_ff_mult};
use super::blocks::{AttentionLayers, Kernels, Linear, StackConfig};
use super::decoder::{validate_shape, Decoder};
use super::error::ModelConfigError;
use super::kv_cache::KvCache;

fn default_depth() -> usize {
    4
}
fn default_heads() -> usize {
    8
}

/// The adapter's shape (`"adapter"` in `config.json`), in x-transformers' names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    /// Width of the adapter's stream (the decoder's width makes `proj_in`/`proj_out` vanish).
    pub dim: usize,
    /// Blocks (default 4).
    #[serde(default = "default_depth")]
    pub depth: usize,
    /// Heads (default 8).
    #[serde(default = "default_heads")]
    pub heads: usize,
    /// Features per head (default 64).
    #[serde(default = "default_attn_dim_head")]
    pub attn_dim_head: usize,
    /// Feed-forward multiple (default 4).
    #[serde(default = "default_ff_mult")]
    pub ff_mult: usize,
    /// Rotary features per head (default `attn_dim_head / 2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotary_emb_dim: Option<usize>,
}

impl AdapterConfig {
    /// The seed text's adapter: 4 blocks × 768, 8 heads.
    pub fn seed() -> Self {
        Self {
            dim: 768,
            depth: 4,
            heads: 8,
            attn_dim_head: 64,
            ff_mult: 4,
            rotary_emb_dim: None,
        }
    }

    /// Companion of the `small` decoder: 2 blocks × 256, 4 heads.
    pub fn small() -> Self {
        Self {
            dim: 256,
            depth: 2,
            heads: 4,
            ..Self::seed()
        }
    }

    /// For tests, matching [`super::DecoderConfig::tiny`].
    pub fn tiny() -> Self {
        Self {
            dim: 32,
            depth: 2,
            heads: 2,
            attn_dim_head: 8,
            ff_mult: 2,
            rotary_emb_dim: None,
        }
    }

    pub fn rot_dim(&self) -> usize {
        self.rotary_emb_dim.unwrap_or(self.attn_dim_head / 2)
    }

    pub fn validate(&self) -> std::result::Result<(), ModelConfigError> {
        validate_shape(
            "adapter",
            self.dim,
            self.depth,
            self.heads,
            self.attn_dim_head,
            self.ff_mult,
            self.rot_dim(),
        )
    }

    /// The final norm acts on the decoder-width stream (after `proj_out` when widths differ).
    fn stack(&self, decoder_dim: usize) -> StackConfig {
        StackConfig {
            final_dim: decoder_dim,
            dim: self.dim,
            depth: self.depth,
            heads: self.heads,
            dim_head: self.attn_dim_head,
            ff_inner: self.dim * self.ff_mult,
            rot_dim: Some(self.rot_dim()),
            causal: true,
            cross_attend: false,
            // One zero layer on the path suffices for the pass-through; two in series would
            // also zero each other's gradients. With `proj_out` (zero) the blocks start random.
            zero_init_branch_output: self.dim == decoder_dim,
        }
    }
}

/// A style adapter bound to a decoder of width `decoder_dim` and a vocabulary.
#[derive(Debug, Clone)]
pub struct Adapter {
    proj: Option<(Linear, Linear)>,
    layers: AttentionLayers,
    to_logits: Linear,
    cfg: AdapterConfig,
}

impl Adapter {
    /// Builds the adapter from `vb` (a loaded file, or a `VarMap` for fresh variables: output
    /// projections then start at zero). For an exact pass-through start use [`Adapter::fresh`].
    pub fn new(
        cfg: &AdapterConfig,
        decoder_dim: usize,
        num_tokens: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let stack = cfg.stack(decoder_dim);
        let proj = if cfg.dim != decoder_dim {
            Some((
                Linear::new(decoder_dim, cfg.dim, false, false, vb.pp("proj_in"))?,
                Linear::new(cfg.dim, decoder_dim, false, true, vb.pp("proj_out"))?,
            ))
        } else {
            None
        };
        let layers = AttentionLayers::new(&stack, vb.pp("attn_layers"))?;
        let to_logits = Linear::new(decoder_dim, num_tokens, false, false, vb.pp("to_logits"))?;
        Ok(Self {
            proj,
            layers,
            to_logits,
            cfg: cfg.clone(),
        })
    }

    /// A trainable adapter in `varmap` that starts as an exact pass-through of `decoder`: the
    /// final norm and logits head are copies of the decoder's, every branch output is zero.
    pub fn fresh(
        cfg: &AdapterConfig,
        decoder: &Decoder,
        varmap: &VarMap,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (gamma, head) = decoder.head()?;
        {
            let mut data = varmap.data().lock().expect("VarMap lock poisoned");
            data.insert(
                "attn_layers.final_norm.gamma".to_string(),
                candle_core::Var::from_tensor(&gamma.to_dtype(dtype)?.to_device(device)?)?,
            );
            data.insert(
                "to_logits.weight".to_string(),
                candle_core::Var::from_tensor(&head.to_dtype(dtype)?.to_device(device)?)?,
            );
        }
        let dim = decoder.config().dim;
        let vb = VarBuilder::from_varmap(varmap, dtype, device);
        Self::new(cfg, dim, decoder.num_tokens(), vb)
    }

    /// Every tensor of `adapter.safetensors` and its shape.
    pub fn tensor_specs(
        cfg: &AdapterConfig,
        decoder_dim: usize,
        num_tokens: usize,
    ) -> Vec<(String, Vec<usize>)> {
        let mut specs = Vec::new();
        if cfg.dim != decoder_dim {
            specs.push(("proj_in.weight".to_string(), vec![cfg.dim, decoder_dim]));
            specs.push(("proj_out.weight".to_string(), vec![decoder_dim, cfg.dim]));
        }
        specs.extend(
            cfg.stack(decoder_dim)
                .tensor_specs()
                .into_iter()
                .map(|(n, s)| (format!("attn_layers.{n}"), s)),
        );
        specs.push(("to_logits.weight".into(), vec![num_tokens, decoder_dim]));
        specs
    }

    pub fn config(&self) -> &AdapterConfig {
        &self.cfg
    }

    /// An empty KV cache for this adapter (it runs alongside the decoder's).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(self.cfg.depth, capacity)
    }

    /// Logits `(b, t, num_tokens)` from the decoder's pre-final-norm hidden state `(b, t, dim)`
    /// ([`Decoder::forward_hidden`]). With a cache, continues the cached positions.
    pub fn forward_with(
        &self,
        hidden: &Tensor,
        cache: Option<&mut KvCache>,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let x = match &self.proj {
            Some((proj_in, _)) => proj_in.forward(hidden, kernels)?,
            None => hidden.clone(),
        };
        let z = match cache {
            Some(c) => {
                if c.depth() != self.cfg.depth {
                    candle_core::bail!(
                        "cache has {} layers, adapter has {}",
                        c.depth(),
                        self.cfg.depth
                    );
                }
                let offset = c.len();
                self.layers
                    .forward(&x, None, None, offset, Some(c.layers_mut()), kernels)?
            }
            None => self.layers.forward(&x, None, None, 0, None, kernels)?,
        };
        let z = match &self.proj {
            Some((_, proj_out)) => (hidden + proj_out.forward(&z, kernels)?)?,
            None => z,
        };
        let z = self.layers.final_norm().forward(&z, kernels)?;
        self.to_logits.forward(&z, kernels)
    }

    /// Inference forward (fused kernels).
    pub fn forward(&self, hidden: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        self.forward_with(hidden, cache, Kernels::Inference)
    }

    /// Training forward (differentiable, no cache).
    pub fn forward_train(&self, hidden: &Tensor) -> Result<Tensor> {
        self.forward_with(hidden, None, Kernels::Training)
    }

    /// An 8-bit (Q8_0) copy for fast CPU inference.
    pub fn quantize(&self) -> Result<Self> {
        Ok(Self {
            proj: match &self.proj {
                Some((a, b)) => Some((a.quantize(GgmlDType::Q8_0)?, b.quantize(GgmlDType::Q8_0)?)),
                None => None,
            },
            layers: self.layers.quantize(GgmlDType::Q8_0)?,
            to_logits: self.to_logits.quantize(GgmlDType::Q8_0)?,
            cfg: self.cfg.clone(),
        })
    }
}
