//! The transformer pieces all three networks share, laid out exactly as x-transformers 2.31 lays
//! out an `AttentionLayers` stack, so that every tensor name matches a PyTorch `state_dict()`.
//!
//! x-transformers flattens a stack of `depth` blocks into one `layers` list: each block
//! contributes an attention layer (`'a'`), optionally a cross-attention layer (`'c'`), then a
//! feed-forward layer (`'f'`). Entry `j` of that list is `[norms, branch, residual]`, so its
//! pre-norm gain is `layers.{j}.0.0.gamma` and its weights live under `layers.{j}.1`.
//!
//! Every block runs one of two sets of kernels, chosen once per forward call ([`Kernels`]) and
//! passed down to every layer. [`Kernels::Inference`] uses candle's fast kernels (`rope_i`,
//! `layer_norm`, `softmax_last_dim`), the one-query decoding attention and the small-batch
//! matmul: those silently return no gradient (see `docs/candle-cpu-training.md`).
//! [`Kernels::Training`] is what every training loop must use: on the CPU in f32/f64 it runs the
//! custom ops of [`super::training_ops`], which carry their own backward, and elsewhere the same
//! layers built from ordinary tensor ops that candle can differentiate (`*_plain` below, also
//! the training ops' reference in tests).

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use super::decode_attention::decode_attention;
use super::kv_cache::LayerCache;
use super::small_matmul::{self, SmallMatmul};
use super::training_ops;

/// Which kernels a forward pass runs, decided once by its entry point (`forward` or
/// `forward_train` of each network) and passed down unchanged to every layer, so that no layer
/// guesses on its own (for instance from whether a gradient happens to be recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// The fastest kernels: candle's fused normalisation, rotary and softmax, the one-query
    /// decoding attention and the small-batch matmul. Why inference only: candle's fused kernels
    /// silently produce no gradient, so a loss computed through them cannot train anything.
    Inference,
    /// Kernels with a full backward pass: the custom training ops on the CPU (f32/f64), plain
    /// differentiable tensor ops elsewhere. Required for training.
    Training,
}

/// The epsilon of `torch.nn.LayerNorm`, which x-transformers' `LayerNorm` wraps.
pub const LN_EPS: f64 = 1e-5;

/// x-transformers' default `attn_dim_head`, for configs that leave it out.
pub(crate) fn default_attn_dim_head() -> usize {
    64
}

/// x-transformers' default `ff_mult`, for configs that leave it out.
pub(crate) fn default_ff_mult() -> usize {
    4
}

/// Initialisation used for fresh (not loaded) projection weights: GPT-2's N(0, 0.02).
pub(crate) const W_INIT: Init = Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

/// A linear layer that is either ordinary (any float dtype) or 8-bit quantized (Q8_0).
///
/// Quantization exists for the CPU inference path: candle's quantized matmul reads a quarter of
/// the bytes of an f32 weight, and batch-1 decoding is memory-bound.
#[derive(Debug, Clone)]
pub(crate) enum Linear {
    Plain {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    Quantized {
        weight: QMatMul,
        bias: Option<Tensor>,
    },
}

impl Linear {
    pub(crate) fn new(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        zero_init: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let init = if zero_init { Init::Const(0.0) } else { W_INIT };
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
        let bias = if bias {
            Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self::Plain { weight, bias })
    }

    /// The weight as a dense tensor (dequantized if need be).
    pub(crate) fn weight(&self) -> Result<Tensor> {
        match self {
            Self::Plain { weight, .. } => Ok(weight.clone()),
            Self::Quantized { weight, .. } => match weight {
                QMatMul::QTensor(q) => q.dequantize(&q.device()),
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => Ok(t.clone()),
            },
        }
    }

    /// Quantizes the weight (the bias stays f32: it is tiny and added after the matmul).
    pub(crate) fn quantize(&self, dtype: GgmlDType) -> Result<Self> {
        match self {
            Self::Plain { weight, bias } => {
                let q = QTensor::quantize(&weight.to_dtype(DType::F32)?, dtype)?;
                Ok(Self::Quantized {
                    weight: QMatMul::from_qtensor(q)?,
                    bias: bias.as_ref().map(|b| b.to_dtype(DType::F32)).transpose()?,
                })
            }
            Self::Quantized { .. } => Ok(self.clone()),
        }
    }
}

/// Whether a decoding-step matmul can take the [`SmallMatmul`] kernel: a few f32 rows on the
/// CPU against a frozen (non-variable) contiguous weight. Training variables always take
/// candle's matmul, which has a backward pass.
fn small_batch(x: &Tensor, weight: &Tensor) -> bool {
    x.dim(0).is_ok_and(|rows| rows <= small_matmul::MAX_ROWS)
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && weight.is_contiguous()
        && !weight.is_variable()
}

impl Linear {
    /// `x · weightᵀ + bias`. With [`Kernels::Training`] a dense weight takes
    /// [`training_ops::linear`] where it runs: a single autograd node with a fast bias gradient.
    pub(crate) fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let (y, bias) = match self {
            Self::Plain { weight, bias } if trains(x, weight, kernels) => {
                return training_ops::linear(x, weight, bias.as_ref());
            }
            Self::Plain { weight, bias } => (plain_matmul(x, weight)?, bias),
            Self::Quantized { weight, bias } => {
                let dtype = x.dtype();
                let y = weight.forward(&x.to_dtype(DType::F32)?)?.to_dtype(dtype)?;
                (y, bias)
            }
        };
        match bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?),
            None => Ok(y),
        }
    }
}

/// Whether a product with a dense weight takes the training op [`training_ops::linear`]: training
/// kernels, and an input and weight that op runs on.
fn trains(x: &Tensor, weight: &Tensor, kernels: Kernels) -> bool {
    kernels == Kernels::Training && training_ops::supports(x) && weight.dtype() == x.dtype()
}

/// `x · weightᵀ` for a dense weight, without bias.
fn plain_matmul(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    match x.dims() {
        [b, t, k] => {
            let x2 = x.reshape((b * t, *k))?;
            let y2 = if small_batch(&x2, weight) {
                x2.contiguous()?.apply_op2_no_bwd(weight, &SmallMatmul)?
            } else {
                x2.matmul(&weight.t()?)?
            };
            y2.reshape((*b, *t, ()))
        }
        _ => x.broadcast_matmul(&weight.t()?),
    }
}

/// x-transformers' `LayerNorm` as `AttentionLayers` builds it: `torch.nn.LayerNorm` without
/// affine parameters (eps 1e-5), times a learned gain stored *with a unit offset*
/// (`norm_add_unit_offset = True`, the default): the tensor `gamma` starts at 0 and the gain is
/// `gamma + 1`, so weight decay pulls the gain towards 1, not 0. No bias.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    /// The stored parameter (what a `state_dict` holds; trainable).
    gamma: Tensor,
    /// Zeros, because candle's fused kernel insists on a bias.
    zero_bias: Tensor,
}

impl LayerNorm {
    pub(crate) fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let gamma = vb.get_with_hints(dim, "gamma", Init::Const(0.0))?;
        Self::from_gamma(gamma)
    }

    pub(crate) fn from_gamma(gamma: Tensor) -> Result<Self> {
        let zero_bias = gamma.zeros_like()?.detach();
        Ok(Self { gamma, zero_bias })
    }

    pub(crate) fn gamma(&self) -> &Tensor {
        &self.gamma
    }

    pub(crate) fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let dtype = x.dtype();
        if kernels == Kernels::Inference && dtype == DType::F32 {
            let x = x.contiguous()?;
            // The gain is recomputed each call (a few hundred elements) rather than cached, so
            // that it follows `gamma` when an optimiser updates the variable in place.
            let gain = (&self.gamma + 1.0)?;
            return candle_nn::ops::layer_norm(&x, &gain, &self.zero_bias, LN_EPS as f32);
        }
        if training_ops::supports(x) && self.gamma.dtype() == dtype {
            return training_ops::layer_norm(x, &self.gamma, LN_EPS);
        }
        layer_norm_plain(x, &self.gamma)
    }
}

/// [`LayerNorm`] from plain tensor ops (differentiable): the fallback where the training op does
/// not run, and its reference in tests.
pub(crate) fn layer_norm_plain(x: &Tensor, gamma: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    // Reduced precision is normalised in f32: f16 sums of squares overflow easily.
    let internal = match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    };
    let x = x.to_dtype(internal)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xc.broadcast_div(&(var + LN_EPS)?.sqrt()?)?;
    let gain = (gamma.to_dtype(internal)? + 1.0)?;
    normed.broadcast_mul(&gain)?.to_dtype(dtype)
}

/// Numerically stable softmax over the last dimension from plain ops (differentiable).
pub(crate) fn softmax_plain(x: &Tensor) -> Result<Tensor> {
    // The max is only a shift for stability; detaching it leaves the gradient exact.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Attention weights: softmax over the keys of `scores + mask` (the mask is additive).
fn softmax(scores: &Tensor, mask: Option<&Tensor>, kernels: Kernels) -> Result<Tensor> {
    // The training op takes the mask too, so that the `(b, heads, t, t)` sum is never
    // materialised and differentiated (candle would compute a gradient for the constant mask).
    if kernels == Kernels::Training && training_ops::supports(scores) {
        return training_ops::softmax_last_dim(scores, mask);
    }
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores.clone(),
    };
    match kernels {
        Kernels::Inference => candle_nn::ops::softmax_last_dim(&scores),
        Kernels::Training => softmax_plain(&scores),
    }
}

/// x-transformers' `RotaryEmbedding`: GPT-J style *interleaved* pairs `(x0, x1), (x2, x3), …`
/// rotated by `t · base^(-2i/rot_dim)`, applied to the first `rot_dim` features of each head
/// only (partial rotary; the default `rot_dim` is `dim_head / 2`), base 10 000, no xpos.
#[derive(Debug, Clone)]
pub(crate) struct Rotary {
    inv_freq: Vec<f64>,
}

impl Rotary {
    pub(crate) fn new(rot_dim: usize) -> Self {
        let inv_freq = (0..rot_dim)
            .step_by(2)
            .map(|i| 1.0 / 10000f64.powf(i as f64 / rot_dim as f64))
            .collect();
        Self { inv_freq }
    }

    /// The `inv_freq` buffer x-transformers keeps in its `state_dict`.
    pub(crate) fn inv_freq(&self) -> &[f64] {
        &self.inv_freq
    }

    /// cos and sin tables, shape `(t, dim_head / 2)`, for positions `offset..offset + t`.
    /// Pairs beyond `rot_dim` get cos 1 and sin 0: rotating them is the identity, so partial
    /// rotary becomes one full-width rotation (one fused kernel call, no split and concat).
    pub(crate) fn tables(
        &self,
        offset: usize,
        t: usize,
        dim_head: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<RotaryTables> {
        let half = dim_head / 2;
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in offset..offset + t {
            for i in 0..half {
                match self.inv_freq.get(i) {
                    Some(f) => {
                        // torch computes the angle in f32; do the same, then cos/sin in f64.
                        let a = (p as f32 * *f as f32) as f64;
                        cos.push(a.cos());
                        sin.push(a.sin());
                    }
                    None => {
                        cos.push(1.0);
                        sin.push(0.0);
                    }
                }
            }
        }
        Ok(RotaryTables {
            cos: Tensor::from_vec(cos, (t, half), dev)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (t, half), dev)?.to_dtype(dtype)?,
        })
    }
}

/// Precomputed rotary angles for one forward call (shared by every layer).
#[derive(Debug, Clone)]
pub(crate) struct RotaryTables {
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
}

impl RotaryTables {
    /// Rotates `x` of shape `(b, heads, t, dim_head)`.
    fn apply(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        match kernels {
            Kernels::Inference => {
                candle_nn::rotary_emb::rope_i(&x.contiguous()?, &self.cos, &self.sin)
            }
            Kernels::Training if training_ops::supports(x) => {
                training_ops::rotary(x, &self.cos, &self.sin)
            }
            Kernels::Training => rotary_plain(x, &self.cos, &self.sin),
        }
    }
}

/// Interleaved rotary embedding of `x` (`(b, heads, t, dim_head)`) from plain tensor ops
/// (differentiable): the fallback where the training op does not run, and its reference in tests.
pub(crate) fn rotary_plain(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    let half = d / 2;
    let cos = cos.reshape((1, 1, t, half, 1))?;
    let sin = sin.reshape((1, 1, t, half, 1))?;
    let r = x.reshape((b, h, t, half, 2))?;
    let x0 = r.narrow(D::Minus1, 0, 1)?;
    let x1 = r.narrow(D::Minus1, 1, 1)?;
    let y0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
    let y1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
    Tensor::cat(&[y0, y1], D::Minus1)?.reshape((b, h, t, d))
}

/// Shape of one `AttentionLayers` stack, resolved from a network's config.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StackConfig {
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub dim_head: usize,
    pub ff_inner: usize,
    /// Rotary features per head; `None` for no positional encoding at all.
    pub rot_dim: Option<usize>,
    pub causal: bool,
    pub cross_attend: bool,
    /// Whether the residual branches' output projections start at zero, so that a fresh stack
    /// is the identity function (how the adapter starts as an exact pass-through).
    pub zero_init_branch_output: bool,
    /// Width of the final norm: `dim`, except in an adapter whose stream is projected back to
    /// the decoder's width before it.
    pub final_dim: usize,
}

impl StackConfig {
    /// Entries of the flattened x-transformers `layers` list per block.
    fn layers_per_block(&self) -> usize {
        if self.cross_attend {
            3
        } else {
            2
        }
    }

    /// Every tensor the stack owns (relative to its `attn_layers` prefix) and its shape, in
    /// x-transformers' names: the contract checked when loading files.
    pub(crate) fn tensor_specs(&self) -> Vec<(String, Vec<usize>)> {
        let inner = self.heads * self.dim_head;
        let mut specs = Vec::new();
        let per = self.layers_per_block();
        for block in 0..self.depth {
            let mut j = block * per;
            for attn in std::iter::once(false).chain(self.cross_attend.then_some(true)) {
                let _ = attn;
                let p = format!("layers.{j}");
                specs.push((format!("{p}.0.0.gamma"), vec![self.dim]));
                specs.push((format!("{p}.1.to_q.weight"), vec![inner, self.dim]));
                specs.push((format!("{p}.1.to_k.weight"), vec![inner, self.dim]));
                specs.push((format!("{p}.1.to_v.weight"), vec![inner, self.dim]));
                specs.push((format!("{p}.1.to_out.weight"), vec![self.dim, inner]));
                j += 1;
            }
            let p = format!("layers.{j}");
            specs.push((format!("{p}.0.0.gamma"), vec![self.dim]));
            specs.push((
                format!("{p}.1.ff.0.proj.weight"),
                vec![2 * self.ff_inner, self.dim],
            ));
            specs.push((format!("{p}.1.ff.0.proj.bias"), vec![2 * self.ff_inner]));
            specs.push((format!("{p}.1.ff.2.weight"), vec![self.dim, self.ff_inner]));
            specs.push((format!("{p}.1.ff.2.bias"), vec![self.dim]));
        }
        if let Some(r) = self.rot_dim {
            specs.push(("rotary_pos_emb.inv_freq".into(), vec![r / 2]));
        }
        specs.push(("final_norm.gamma".into(), vec![self.final_dim]));
        specs
    }
}

/// Multi-head attention without biases (x-transformers' `Attention` defaults).
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    dim_head: usize,
    scale: f64,
}

impl Attention {
    fn new(cfg: &StackConfig, vb: VarBuilder) -> Result<Self> {
        let inner = cfg.heads * cfg.dim_head;
        Ok(Self {
            to_q: Linear::new(cfg.dim, inner, false, false, vb.pp("to_q"))?,
            to_k: Linear::new(cfg.dim, inner, false, false, vb.pp("to_k"))?,
            to_v: Linear::new(cfg.dim, inner, false, false, vb.pp("to_v"))?,
            to_out: Linear::new(
                inner,
                cfg.dim,
                false,
                cfg.zero_init_branch_output,
                vb.pp("to_out"),
            )?,
            heads: cfg.heads,
            dim_head: cfg.dim_head,
            scale: 1.0 / (cfg.dim_head as f64).sqrt(),
        })
    }

    fn quantize(&self, dtype: GgmlDType) -> Result<Self> {
        Ok(Self {
            to_q: self.to_q.quantize(dtype)?,
            to_k: self.to_k.quantize(dtype)?,
            to_v: self.to_v.quantize(dtype)?,
            to_out: self.to_out.quantize(dtype)?,
            ..self.clone()
        })
    }

    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        x.reshape((b, t, self.heads, self.dim_head))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// `x`: `(b, t, dim)`. `context`: keys/values source for cross-attention (no rotary, as in
    /// x-transformers). `mask`: additive, broadcastable to `(b, heads, t, t_keys)`.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        mask: Option<&Tensor>,
        rotary: Option<&RotaryTables>,
        mut cache: Option<&mut LayerCache>,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let kv_src = context.unwrap_or(x);
        if kernels == Kernels::Training && cache.is_none() && training_ops::supports(x) {
            // Training: everything between the projections as one node with its own backward.
            let tables = match (rotary, context) {
                (Some(r), None) => Some((&r.cos, &r.sin)),
                _ => None,
            };
            let out = training_ops::attention(
                &self.to_q.forward(x, kernels)?,
                &self.to_k.forward(kv_src, kernels)?,
                &self.to_v.forward(kv_src, kernels)?,
                self.heads,
                tables,
                mask,
                self.scale,
            )?;
            return self.to_out.forward(&out, kernels);
        }
        let mut q = self.split_heads(&self.to_q.forward(x, kernels)?)?;
        let mut k = self.split_heads(&self.to_k.forward(kv_src, kernels)?)?;
        let v = self.split_heads(&self.to_v.forward(kv_src, kernels)?)?;
        if let (Some(rot), None) = (rotary, context) {
            q = rot.apply(&q, kernels)?;
            k = rot.apply(&k, kernels)?;
        }
        if let Some(c) = cache.as_deref_mut() {
            if kernels == Kernels::Inference && t == 1 && mask.is_none() && one_query_kernel(&q) {
                c.push(&k, &v)?;
                let out = decode_attention(&q, &c.segments()?, self.scale as f32)?;
                return self.to_out.forward(&out, kernels);
            }
        }
        let (k, v) = match cache {
            Some(c) => c.append(&k, &v)?,
            None => (k, v),
        };
        let q = (q * self.scale)?;
        let scores = q.matmul(&k.t()?)?;
        let attn = softmax(&scores, mask, kernels)?;
        let out = attn.matmul(&v)?;
        let out = out
            .transpose(1, 2)?
            .reshape((b, t, self.heads * self.dim_head))?;
        self.to_out.forward(&out, kernels)
    }
}

/// Whether a decoding step's attention can take the [`decode_attention`] kernel (f32 on the CPU).
fn one_query_kernel(q: &Tensor) -> bool {
    q.device().is_cpu() && q.dtype() == DType::F32
}

/// x-transformers' GLU feed-forward: `proj` to `2 · inner`, split into value and gate halves,
/// `value · GELU(gate)` (exact, erf-based GELU), then `ff.2` back to `dim`. Both have biases.
#[derive(Debug, Clone)]
pub(crate) struct FeedForward {
    proj: Linear,
    out: Linear,
    inner: usize,
}

impl FeedForward {
    fn new(cfg: &StackConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            proj: Linear::new(cfg.dim, 2 * cfg.ff_inner, true, false, vb.pp("ff.0.proj"))?,
            out: Linear::new(
                cfg.ff_inner,
                cfg.dim,
                true,
                cfg.zero_init_branch_output,
                vb.pp("ff.2"),
            )?,
            inner: cfg.ff_inner,
        })
    }

    fn quantize(&self, dtype: GgmlDType) -> Result<Self> {
        Ok(Self {
            proj: self.proj.quantize(dtype)?,
            out: self.out.quantize(dtype)?,
            inner: self.inner,
        })
    }

    fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let act = match &self.proj {
            // Training: the projection's bias and the activation in one op with one backward.
            Linear::Plain {
                weight,
                bias: Some(bias),
            } if trains(x, weight, kernels) => {
                training_ops::gelu_glu(&training_ops::linear(x, weight, None)?, bias)?
            }
            _ => gelu_glu_plain(&self.proj.forward(x, kernels)?, self.inner)?,
        };
        self.out.forward(&act, kernels)
    }
}

/// `value · gelu(gate)` from the two halves of `h` (`(…, 2 · inner)`) with plain tensor ops:
/// the inference path, the fallback where the training op does not run, and its reference in
/// tests.
pub(crate) fn gelu_glu_plain(h: &Tensor, inner: usize) -> Result<Tensor> {
    let value = h.narrow(D::Minus1, 0, inner)?;
    // gelu_erf is single-threaded on strided input; a copy first is much faster.
    let gate = h.narrow(D::Minus1, inner, inner)?.contiguous()?;
    value * gate.gelu_erf()?
}

#[derive(Debug, Clone)]
struct Block {
    attn_norm: LayerNorm,
    attn: Attention,
    cross: Option<(LayerNorm, Attention)>,
    ff_norm: LayerNorm,
    ff: FeedForward,
}

/// x-transformers' `AttentionLayers` in its pre-norm configuration: `x + attn(norm(x))`,
/// [`x + cross_attn(norm(x), context)`], `x + ff(norm(x))`, repeated `depth` times, then a final
/// norm. The final norm is kept separate ([`AttentionLayers::final_norm`]) because the adapter
/// reads the residual stream *before* it.
#[derive(Debug, Clone)]
pub(crate) struct AttentionLayers {
    blocks: Vec<Block>,
    final_norm: LayerNorm,
    rotary: Option<Rotary>,
    cfg: StackConfig,
}

impl AttentionLayers {
    pub(crate) fn new(cfg: &StackConfig, vb: VarBuilder) -> Result<Self> {
        let mut blocks = Vec::with_capacity(cfg.depth);
        let per = cfg.layers_per_block();
        let layers = vb.pp("layers");
        for i in 0..cfg.depth {
            let j = i * per;
            let attn_norm = LayerNorm::new(cfg.dim, layers.pp(format!("{j}.0.0")))?;
            let attn = Attention::new(cfg, layers.pp(format!("{j}.1")))?;
            let cross = if cfg.cross_attend {
                Some((
                    LayerNorm::new(cfg.dim, layers.pp(format!("{}.0.0", j + 1)))?,
                    Attention::new(cfg, layers.pp(format!("{}.1", j + 1)))?,
                ))
            } else {
                None
            };
            let f = j + per - 1;
            let ff_norm = LayerNorm::new(cfg.dim, layers.pp(format!("{f}.0.0")))?;
            let ff = FeedForward::new(cfg, layers.pp(format!("{f}.1")))?;
            blocks.push(Block {
                attn_norm,
                attn,
                cross,
                ff_norm,
                ff,
            });
        }
        let final_norm = LayerNorm::new(cfg.final_dim, vb.pp("final_norm"))?;
        Ok(Self {
            blocks,
            final_norm,
            rotary: cfg.rot_dim.map(Rotary::new),
            cfg: cfg.clone(),
        })
    }

    pub(crate) fn rotary(&self) -> Option<&Rotary> {
        self.rotary.as_ref()
    }

    pub(crate) fn final_norm(&self) -> &LayerNorm {
        &self.final_norm
    }

    pub(crate) fn quantize(&self, dtype: GgmlDType) -> Result<Self> {
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                Ok(Block {
                    attn_norm: b.attn_norm.clone(),
                    attn: b.attn.quantize(dtype)?,
                    cross: match &b.cross {
                        Some((n, a)) => Some((n.clone(), a.quantize(dtype)?)),
                        None => None,
                    },
                    ff_norm: b.ff_norm.clone(),
                    ff: b.ff.quantize(dtype)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            blocks,
            ..self.clone()
        })
    }

    /// Runs the blocks on `x` (`(b, t, dim)`) and returns the residual stream *before* the final
    /// norm. `self_mask` is additive over keys (padding); causality is added here when the
    /// stack is causal. `caches`, when given, holds one entry per block and makes this call
    /// continue at position `offset`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        self_mask: Option<&Tensor>,
        context: Option<(&Tensor, Option<&Tensor>)>,
        offset: usize,
        mut caches: Option<&mut [LayerCache]>,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let (_, t, _) = x.dims3()?;
        let causal = if self.cfg.causal && t > 1 {
            Some(causal_mask(t, offset, x.dtype(), x.device())?)
        } else {
            None
        };
        let mask = match (causal, self_mask) {
            (Some(c), Some(m)) => Some(c.broadcast_add(m)?),
            (Some(c), None) => Some(c),
            (None, Some(m)) => Some(m.clone()),
            (None, None) => None,
        };
        let tables = match &self.rotary {
            Some(r) => Some(r.tables(offset, t, self.cfg.dim_head, x.dtype(), x.device())?),
            None => None,
        };
        let mut x = x.clone();
        for (i, block) in self.blocks.iter().enumerate() {
            let cache = caches.as_deref_mut().map(|c| &mut c[i]);
            let h = block.attn_norm.forward(&x, kernels)?;
            let h = block
                .attn
                .forward(&h, None, mask.as_ref(), tables.as_ref(), cache, kernels)?;
            x = (x + h)?;
            if let (Some((norm, attn)), Some((ctx, ctx_mask))) = (&block.cross, context) {
                let h = norm.forward(&x, kernels)?;
                let h = attn.forward(&h, Some(ctx), ctx_mask, None, None, kernels)?;
                x = (x + h)?;
            }
            let h = block.ff_norm.forward(&x, kernels)?;
            x = (x + block.ff.forward(&h, kernels)?)?;
        }
        Ok(x)
    }
}

/// Additive causal mask `(t, offset + t)`: query `i` (at absolute position `offset + i`) sees
/// keys `0..=offset + i`.
pub(crate) fn causal_mask(t: usize, offset: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let total = offset + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (t, total), dev)?.to_dtype(dtype)
}

/// Additive key-padding mask `(b, 1, 1, t)` from a `(b, t)` 0/1 mask: padded keys get a large
/// negative value (finite, so that an all-padding row stays finite rather than NaN).
pub(crate) fn key_padding_mask(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, t) = mask.dims2()?;
    let m = mask.to_dtype(DType::F32)?;
    let additive = ((m - 1.0)? * 1e9)?;
    additive.reshape((b, 1, 1, t))?.to_dtype(dtype)
}
