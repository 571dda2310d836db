//! Custom ops that carry their own backward, for the training ([`Path::Plain`]) path on the CPU.
//!
//! Why they exist: candle differentiates the plain-op versions of these layers (blocks.rs)
//! correctly, but slowly. Every plain op is a separate pass over memory into a fresh
//! allocation; in the backward every op input gets a zeros tensor plus an add; and reductions
//! over leading dimensions (bias and norm-gain gradients) are strided and single-threaded
//! (~50 ms each for an `(8, 512, 2048)` gradient). Each op here is one pass forward and one
//! backward, row by row, split over rows with rayon, and reduces gradients of shared
//! parameters through per-task partial sums.
//!
//! Two ops are whole stretches of a layer rather than one function: [`linear`] and
//! [`attention`] (projections to output projection). They exist because each candle autograd
//! node costs a zeros tensor and an add of its size in the backward, whatever it computes;
//! their backwards run the chain rule by hand with candle ops on detached tensors.
//!
//! Three rules every backward here keeps: gradients are never themselves tracked (built from
//! detached tensors or fresh buffers; a tracked gradient keeps the step's whole graph alive
//! through the optimiser's state); results do not depend on the thread count (tasks are fixed
//! row ranges and their partial sums are added in task order, so a run resumed on another
//! machine stays bit-exact: `tests/training.rs`); and every op is checked against the plain-op
//! version, values and gradients, in f32 and f64 (tests below).
//!
//! candle's own fused kernels (`candle_nn::ops::layer_norm`, `softmax_last_dim`, `rope_i`)
//! are no substitute: they silently return no gradient (`shared/notes/candle-cpu-training.md`).
//!
//! Scope: contiguous f32 and f64 tensors on the CPU ([`supports`]); inputs are made contiguous
//! here. f64 is supported, not just f32, so that the f64 finite-difference tests of the models
//! check this very code. Callers keep the plain-op version for anything else (GPU, f16/bf16).
//!
//! [`Path::Plain`]: super::Path::Plain

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape,
    Storage, Tensor, WithDType,
};
use rayon::prelude::*;

/// Whether the ops of this module can run on `t` (CPU, f32 or f64).
pub(crate) fn supports(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// x-transformers' `LayerNorm` (see `blocks::LayerNorm`): `torch.nn.LayerNorm` without affine
/// parameters over the last dimension, times `gamma + 1`. Differentiable in `x` and `gamma`.
pub(crate) fn layer_norm(x: &Tensor, gamma: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&gamma.contiguous()?, LayerNormOp { eps })
}

/// Softmax over the last dimension of `x + mask` (the additive attention mask, broadcastable
/// to `x`; it gets no gradient). Differentiable in `x`.
pub(crate) fn softmax_last_dim(x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let x = x.contiguous()?;
    match mask {
        None => x.apply_op1(Softmax),
        Some(m) => x.apply_op2(&broadcast_mask(m, &x)?, MaskedSoftmax),
    }
}

/// Rotates interleaved pairs `(x0, x1), (x2, x3), …` of `x` (`(…, t, d)`) by the angles whose
/// cosines and sines `cos`/`sin` (`(t, d / 2)`) hold: GPT-J style rotary embedding.
/// Differentiable in `x` (the tables are constants).
pub(crate) fn rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    x.contiguous()?.apply_op3(
        &cos.to_dtype(dtype)?.contiguous()?.detach(),
        &sin.to_dtype(dtype)?.contiguous()?.detach(),
        Rotary,
    )
}

/// x-transformers' GLU activation with its projection's bias folded in: with
/// `z = h + bias` (`h`: `(…, 2n)`), returns `z[..n] · gelu(z[n..])` (exact, erf-based GELU).
/// Differentiable in `h` and `bias`.
pub(crate) fn gelu_glu(h: &Tensor, bias: &Tensor) -> Result<Tensor> {
    h.contiguous()?
        .apply_op2(&bias.to_dtype(h.dtype())?.contiguous()?, GeluGlu)
}

/// A linear layer, `x · weightᵀ + bias` (`x`: `(…, k)`, `weight`: `(n, k)`, `bias`: `(n)`), as
/// one graph node. Differentiable in all three.
///
/// Why: built from tensor ops this is four or five autograd nodes (flatten `x` to 2-D, the
/// weight's transpose, the matmul, the reshape back, the bias add), each of which costs a zeros
/// tensor and an add of its size in the backward, `(b, t, 2 · inner)` for the feed-forward's
/// projection; and the bias gradient is candle's strided sum over the leading dimensions.
/// The forward is candle's own matmul kernel, so its values are those of the tensor-op version.
pub(crate) fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    match bias {
        None => x.apply_op2(&weight, LinearOp),
        Some(b) => x.apply_op3(&weight, &b.to_dtype(x.dtype())?.contiguous()?, LinearOp),
    }
}

/// Multi-head attention between the projections and the output projection, as one graph node:
/// `xq` (`(b, t, heads · d)`), `xk`, `xv` (`(b, t_k, heads · d)`) are split into heads, `q` and
/// `k` rotated when `rotary` gives `(cos, sin)` tables (see [`rotary`]), then
/// `softmax(q · scale · kᵀ + mask) · v`, heads merged back to `(b, t, heads · d)`.
/// Differentiable in `xq`, `xk` and `xv`.
///
/// Why one node: in candle's autograd every node costs a zeros tensor plus an add of its full
/// size in the backward, and this stretch has some seventeen of them per layer (head split
/// views and copies, rotary, scaling, the key transpose, both matmuls, softmax, the merge),
/// two of them `(b, heads, t, t_k)` in size. Here the forward runs on detached tensors, keeps
/// what the backward needs (the rotated and scaled `q`, `k`, `v` and the attention weights),
/// and the backward runs the chain rule through them by hand, also with plain tensor ops.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    xq: &Tensor,
    xk: &Tensor,
    xv: &Tensor,
    heads: usize,
    rotary: Option<(&Tensor, &Tensor)>,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (b, t, inner) = xq.dims3()?;
    let tk = xk.dim(1)?;
    let d = inner / heads;
    let dtype = xq.dtype();
    let split = |x: &Tensor, t: usize| {
        x.detach()
            .reshape((b, t, heads, d))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (mut q, mut k, v) = (split(xq, t)?, split(xk, tk)?, split(xv, tk)?);
    let rotary = match rotary {
        Some((cos, sin)) => {
            let cos = cos.to_dtype(dtype)?.contiguous()?.detach();
            let sin = sin.to_dtype(dtype)?.contiguous()?.detach();
            q = q.apply_op3_no_bwd(&cos, &sin, &Rotary)?;
            k = k.apply_op3_no_bwd(&cos, &sin, &Rotary)?;
            Some((cos, sin))
        }
        None => None,
    };
    let q = (q * scale)?;
    let scores = q.matmul(&k.t()?)?;
    let p = match mask {
        None => scores.apply_op1_no_bwd(&Softmax)?,
        Some(m) => scores.apply_op2_no_bwd(&broadcast_mask(m, &scores)?, &MaskedSoftmax)?,
    };
    let out = p
        .matmul(&v)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, t, inner))?;
    xq.contiguous()?.apply_op3(
        &xk.contiguous()?,
        &xv.contiguous()?,
        Attention {
            out,
            q,
            k,
            v,
            p,
            rotary,
            scale,
        },
    )
}

/// The additive mask as a view broadcast to `x`, last dimension contiguous: the softmax kernel
/// walks it by its strides, so the full `(b, heads, t, t_k)` mask is never materialised.
fn broadcast_mask(m: &Tensor, x: &Tensor) -> Result<Tensor> {
    let m = m.to_dtype(x.dtype())?.detach();
    if m.dim(candle_core::D::Minus1)? == x.dim(candle_core::D::Minus1)? {
        m.contiguous()?.broadcast_as(x.shape())
    } else {
        m.broadcast_as(x.shape())?.contiguous()
    }
}

/// The floating-point types the kernels run on.
trait Real: WithDType {
    fn sqrt_(self) -> Self;
    /// `exp`; for f32 a polynomial that vectorises (libm's `expf` is an opaque scalar call).
    fn exp_(self) -> Self;
    /// `erf`; for f32 a rational approximation that vectorises (see [`erf_f32`]).
    fn erf_(self) -> Self;
    fn neg_infinity() -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn sqrt_(self) -> Self {
        self.sqrt()
    }
    #[inline(always)]
    fn exp_(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn erf_(self) -> Self {
        erf_f32(self)
    }
    fn neg_infinity() -> Self {
        f32::NEG_INFINITY
    }
}

impl Real for f64 {
    #[inline(always)]
    fn sqrt_(self) -> Self {
        self.sqrt()
    }
    #[inline(always)]
    fn exp_(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn erf_(self) -> Self {
        candle_core::cpu::erf::erf_f64(self)
    }
    fn neg_infinity() -> Self {
        f64::NEG_INFINITY
    }
}

/// `e^x` in f32 to within a few ulp, written so that loops over it vectorise: `x = n·ln 2 + r`
/// with `|r| ≤ ln 2 / 2`, `e^r` by its degree-7 Taylor polynomial (truncation error < 1e-8),
/// `2^n` built in the exponent bits. Returns exactly 0 below −87 (masked attention scores are
/// −∞) instead of a subnormal.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that `n · LN2_HI` is exact for |n| < 256 (LN2_HI has 16 significant bits).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 · 2^23 rounds to an integer (no `round`, which is a libm call without SSE4.1)
    // and leaves that integer in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let k = xc * LOG2E + MAGIC;
    let n = k - MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let e = (k.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32) + 127;
    let scale = f32::from_bits((e << 23) as u32);
    if x < -87.0 {
        0.0
    } else {
        p * scale
    }
}

/// `erf` for f32 inputs, within 6e-8 of the true value (under one f32 ulp) everywhere.
///
/// `erf(x) = x · P(x²) / Q(x²)` on `|x| ≤ 3.92` (beyond it erf rounds to ±1 in f32), with
/// degree-5/6 polynomials fitted for this module (weighted least squares against mpmath's
/// erf, P's constant term pinned to 2/√π). Evaluated in f64 so that the f32 result carries only
/// the fit's error, not f32 rounding of the evaluation (which alone costs ~3e-7). Branch-free
/// and call-free, so it vectorises; libm's `erff`, which candle's `gelu_erf` uses, does not.
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    const P: [f64; 6] = [
        std::f64::consts::FRAC_2_SQRT_PI,
        0.188_115_346_822_431_14,
        0.054_179_955_506_979_06,
        0.003_909_121_901_986_895,
        0.000_363_628_551_969_782_77,
        5.051_524_439_979_998_6e-6,
    ];
    const Q: [f64; 7] = [
        1.0,
        0.500_046_248_069_165_4,
        0.114_697_602_563_120_24,
        0.015_502_391_918_585_002,
        0.001_295_340_582_533_667_4,
        6.022_413_519_683_224e-5,
        1.602_592_967_844_818e-7,
    ];
    let a = (x as f64).abs().min(3.92);
    let t = a * a;
    let p = P[0] + t * (P[1] + t * (P[2] + t * (P[3] + t * (P[4] + t * P[5]))));
    let q = Q[0] + t * (Q[1] + t * (Q[2] + t * (Q[3] + t * (Q[4] + t * (Q[5] + t * Q[6])))));
    ((a * p / q).min(1.0) as f32).copysign(x)
}

/// Independent accumulators for a sum, so that the loop vectorises (float addition is not
/// associative, so the compiler will not split one accumulator itself).
const LANES: usize = 8;

#[inline(always)]
fn lanes_total<T: Real>(acc: [T; LANES]) -> T {
    let mut s = T::zero();
    for v in acc {
        s += v;
    }
    s
}

/// `Σ f(a_i, b_i)` over two equally long slices, vectorisable.
#[inline(always)]
fn sum2<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    let (ac, at) = a.as_chunks::<LANES>();
    let (bc, bt) = b.as_chunks::<LANES>();
    let mut acc = [T::zero(); LANES];
    for (x, y) in ac.iter().zip(bc) {
        for l in 0..LANES {
            acc[l] += f(x[l], y[l]);
        }
    }
    let mut s = lanes_total(acc);
    for (&x, &y) in at.iter().zip(bt) {
        s += f(x, y);
    }
    s
}

/// Defines a generic kernel compiled twice: for the build's baseline x86-64 target (SSE2, four
/// f32 lanes) and for AVX2 + FMA (eight), picked at run time. Why: these loops are element-wise
/// work that vectorises, and the workspace builds for baseline x86-64. Rust never fuses a
/// multiply and an add into an FMA on its own, so both versions compute the same bits.
macro_rules! multiversion {
    ($(#[$m:meta])* fn $name:ident<$T:ident>($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        fn $name<$T: Real>($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn imp<$T: Real>($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<$T: Real>($($a: $t),*) $(-> $r)? {
                    imp::<$T>($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2::<$T>($($a),*) };
                }
            }
            imp::<$T>($($a),*)
        }
    };
}

/// Rows per task: ~32 K elements, enough work to amortise scheduling.
fn rows_per_task(row_len: usize) -> usize {
    (32 * 1024 / row_len.max(1)).max(1)
}

/// Whether to split `len` elements of work over rayon's threads. Only with more than one
/// thread and more than one task's worth: a parallel iterator started outside the pool hands
/// its work to a pool thread and sleeps until it is done, two context switches for nothing when
/// there is a single thread (`RAYON_NUM_THREADS=1`, as in the benchmarks) or a single task.
fn parallel(len: usize) -> bool {
    len > 32 * 1024 && rayon::current_num_threads() > 1
}

/// `f(task, out, a, b)` on consecutive chunks of `out`, `a` and `b` (chunk lengths `oc`, `ac`,
/// `bc`: the same rows in each), in parallel when [`parallel`].
#[allow(clippy::too_many_arguments)]
fn for_chunks<T: Send, A: Sync, B: Sync>(
    out: &mut [T],
    oc: usize,
    a: &[A],
    ac: usize,
    b: &[B],
    bc: usize,
    f: impl Fn(usize, &mut [T], &[A], &[B]) + Sync + Send,
) {
    if parallel(out.len()) {
        out.par_chunks_mut(oc)
            .zip(a.par_chunks(ac))
            .zip(b.par_chunks(bc))
            .enumerate()
            .for_each(|(i, ((o, a), b))| f(i, o, a, b));
    } else {
        for (i, ((o, a), b)) in out
            .chunks_mut(oc)
            .zip(a.chunks(ac))
            .zip(b.chunks(bc))
            .enumerate()
        {
            f(i, o, a, b);
        }
    }
}

/// [`for_chunks`] where each chunk also returns a partial sum of width `width` (a parameter's
/// gradient): the partials are added up, so a reduction over all rows costs one row per task
/// instead of a strided pass over the whole tensor.
#[allow(clippy::too_many_arguments)]
fn for_chunks_sum<T: Real, A: Sync, B: Sync>(
    out: &mut [T],
    oc: usize,
    a: &[A],
    ac: usize,
    b: &[B],
    bc: usize,
    width: usize,
    f: impl Fn(&mut [T], &[A], &[B]) -> Vec<T> + Sync + Send,
) -> Vec<T> {
    if parallel(out.len()) {
        let partials: Vec<Vec<T>> = out
            .par_chunks_mut(oc)
            .zip(a.par_chunks(ac))
            .zip(b.par_chunks(bc))
            .map(|((o, a), b)| f(o, a, b))
            .collect();
        sum_in_order(partials, width)
    } else {
        let partials = out
            .chunks_mut(oc)
            .zip(a.chunks(ac))
            .zip(b.chunks(bc))
            .map(|((o, a), b)| f(o, a, b));
        sum_in_order(partials, width)
    }
}

/// Adds per-task partial sums (each of `width`) first to last. Every path, parallel or not, adds
/// them in this one order: rayon's `reduce` would pair them in a tree shaped by the thread count
/// and work stealing, and float addition is not associative, so a run would not be reproducible
/// across (or even within) thread counts.
fn sum_in_order<T: Real>(partials: impl IntoIterator<Item = Vec<T>>, width: usize) -> Vec<T> {
    partials
        .into_iter()
        .fold(vec![T::zero(); width], |mut acc, p| {
            for (a, b) in acc.iter_mut().zip(p) {
                *a += b;
            }
            acc
        })
}

/// The data of a contiguous layout as a slice.
fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s.as_slice::<T>()?[start..end]),
        None => bail!("{op}: the input must be contiguous"),
    }
}

/// Runs `f` on the (contiguous) CPU data of `t`, for the backward passes.
fn read<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(slice(s, layout, "fused op backward")?),
        _ => bail!("fused ops run on the CPU only"),
    }
}

fn last_dim(l: &Layout) -> Result<usize> {
    match l.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => bail!("fused ops need a non-empty last dimension"),
    }
}

fn tensor<T: WithDType>(v: Vec<T>, shape: &Shape) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Dispatches a generic kernel on the dtype of a CPU storage.
macro_rules! by_dtype {
    ($storage:expr, $op:expr, |$t:ident| $body:expr) => {
        match $storage {
            CpuStorage::F32(_) => {
                type $t = f32;
                $body
            }
            CpuStorage::F64(_) => {
                type $t = f64;
                $body
            }
            _ => bail!("{}: only f32 and f64 are supported", $op),
        }
    };
}

/// Dispatches a generic kernel on a tensor's dtype (backward passes).
macro_rules! by_tensor_dtype {
    ($tensor:expr, $op:expr, |$t:ident| $body:expr) => {
        match $tensor.dtype() {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::F64 => {
                type $t = f64;
                $body
            }
            d => bail!("{}: unsupported dtype {:?}", $op, d),
        }
    };
}

// ---------------------------------------------------------------------------------------------
// LayerNorm with a unit-offset gain

struct LayerNormOp {
    eps: f64,
}

/// Mean and `1 / sqrt(var + eps)` of one row (two passes: the row is in L1 anyway, and the
/// centred variance avoids the cancellation of `E[x²] − E[x]²`).
#[inline(always)]
fn moments<T: Real>(x: &[T], eps: T) -> (T, T) {
    let n = T::from_f64(x.len() as f64);
    let mean = sum2(x, x, |a, _| a) / n;
    let var = sum2(x, x, |a, _| (a - mean) * (a - mean)) / n;
    (mean, T::one() / (var + eps).sqrt_())
}

multiversion! {
    /// Rows of `x` normalised and scaled by `gain` into `y`.
    fn layer_norm_rows<T>(y: &mut [T], x: &[T], gain: &[T], eps: T) {
        let d = gain.len();
        for (yr, xr) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            let (mean, rstd) = moments(xr, eps);
            for ((y, &x), &g) in yr.iter_mut().zip(xr).zip(gain) {
                *y = (x - mean) * rstd * g;
            }
        }
    }
}

multiversion! {
    /// The backward of [`layer_norm_rows`] on rows of `x` with output gradients `g`: writes
    /// `dx` and returns these rows' share of the gain gradient.
    fn layer_norm_grad_rows<T>(dx: &mut [T], x: &[T], g: &[T], gain: &[T], eps: T) -> Vec<T> {
        let d = gain.len();
        let inv_d = T::one() / T::from_f64(d as f64);
        let mut acc = vec![T::zero(); d];
        let mut xhat = vec![T::zero(); d];
        let mut gg = vec![T::zero(); d];
        for ((dxr, xr), gr) in dx
            .chunks_exact_mut(d)
            .zip(x.chunks_exact(d))
            .zip(g.chunks_exact(d))
        {
            let (mean, rstd) = moments(xr, eps);
            for ((((h, v), a), (&x, &g)), &gain) in xhat
                .iter_mut()
                .zip(gg.iter_mut())
                .zip(acc.iter_mut())
                .zip(xr.iter().zip(gr))
                .zip(gain)
            {
                *h = (x - mean) * rstd;
                *v = g * gain;
                *a += g * *h;
            }
            let a = sum2(&gg, &gg, |v, _| v) * inv_d;
            let b = sum2(&gg, &xhat, |v, h| v * h) * inv_d;
            for ((dx, &v), &h) in dxr.iter_mut().zip(&gg).zip(&xhat) {
                *dx = rstd * (v - a - h * b);
            }
        }
        acc
    }
}

fn layer_norm_fwd<T: Real>(x: &[T], gamma: &[T], eps: f64) -> Vec<T> {
    let d = gamma.len();
    let eps = T::from_f64(eps);
    let gain: Vec<T> = gamma.iter().map(|&g| g + T::one()).collect();
    let mut y = vec![T::zero(); x.len()];
    let chunk = d * rows_per_task(d);
    for_chunks(&mut y, chunk, x, chunk, x, chunk, |_, yc, xc, _| {
        layer_norm_rows(yc, xc, &gain, eps)
    });
    y
}

/// `dx = rstd · (g' − mean(g') − x̂ · mean(g' · x̂))` with `g' = g · (γ + 1)`, and
/// `dγ = Σ_rows g · x̂`. Mean and rstd are recomputed (cheaper than storing them).
fn layer_norm_bwd<T: Real>(x: &[T], gamma: &[T], g: &[T], eps: f64) -> (Vec<T>, Vec<T>) {
    let d = gamma.len();
    let eps = T::from_f64(eps);
    let gain: Vec<T> = gamma.iter().map(|&g| g + T::one()).collect();
    let mut dx = vec![T::zero(); x.len()];
    let chunk = d * rows_per_task(d);
    let dgamma = for_chunks_sum(&mut dx, chunk, x, chunk, g, chunk, d, |dxc, xc, gc| {
        layer_norm_grad_rows(dxc, xc, gc, &gain, eps)
    });
    (dx, dgamma)
}

impl CustomOp2 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(l1)?;
        if l2.shape().elem_count() != d {
            bail!("{}: gain of {:?} for rows of {d}", self.name(), l2.shape());
        }
        let out = by_dtype!(s1, self.name(), |T| {
            let y = layer_norm_fwd::<T>(
                slice(s1, l1, self.name())?,
                slice(s2, l2, self.name())?,
                self.eps,
            );
            T::to_cpu_storage_owned(y)
        });
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        by_tensor_dtype!(x, self.name(), |T| {
            let (dx, dgamma) = read::<T, _>(x, |x| {
                read::<T, _>(gamma, |gamma| {
                    read::<T, _>(g, |g| Ok(layer_norm_bwd(x, gamma, g, self.eps)))
                })
            })?;
            Ok((
                Some(tensor(dx, x.shape())?),
                Some(tensor(dgamma, gamma.shape())?),
            ))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Softmax over the last dimension, with an optional additive mask

struct Softmax;

/// [`Softmax`] of `x + mask`, the mask a second (gradient-free) input.
struct MaskedSoftmax;

multiversion! {
    /// Rows of `softmax(x + m)` into `y` (rows of `n`; `mask`: the mask and the offset of each
    /// of these rows' mask row in it). A row that is entirely −∞ gives zeros (the plain-op
    /// version would give NaN); attention rows always see at least their own position.
    fn softmax_rows<T>(y: &mut [T], x: &[T], n: usize, mask: Option<(&[T], &[usize])>) {
        for (i, (y, x)) in y.chunks_exact_mut(n).zip(x.chunks_exact(n)).enumerate() {
            match mask {
                Some((m, offsets)) => {
                    let m = &m[offsets[i]..offsets[i] + n];
                    for ((y, &x), &m) in y.iter_mut().zip(x).zip(m) {
                        *y = x + m;
                    }
                }
                None => y.copy_from_slice(x),
            }
            let (yc, yt) = y.as_chunks::<LANES>();
            let mut lanes = [T::neg_infinity(); LANES];
            for c in yc {
                for (l, &v) in lanes.iter_mut().zip(c) {
                    if v > *l {
                        *l = v;
                    }
                }
            }
            let mut max = T::neg_infinity();
            for &v in lanes.iter().chain(yt) {
                if v > max {
                    max = v;
                }
            }
            if max == T::neg_infinity() {
                y.fill(T::zero());
                continue;
            }
            // Separate passes, so that each is a loop the compiler vectorises.
            for v in y.iter_mut() {
                *v = (*v - max).exp_();
            }
            let inv = T::one() / sum2(y, y, |v, _| v);
            for v in y.iter_mut() {
                *v *= inv;
            }
        }
    }
}

multiversion! {
    /// `dx = y · (g − Σ g · y)` on rows of `n`.
    fn softmax_grad_rows<T>(dx: &mut [T], y: &[T], g: &[T], n: usize) {
        for ((dr, yr), gr) in dx
            .chunks_exact_mut(n)
            .zip(y.chunks_exact(n))
            .zip(g.chunks_exact(n))
        {
            let s = sum2(yr, gr, |y, g| y * g);
            for ((d, &y), &g) in dr.iter_mut().zip(yr).zip(gr) {
                *d = y * (g - s);
            }
        }
    }
}

/// Start offsets of each row (all dimensions but the last) of a strided layout whose last
/// dimension has stride 1: how the kernel walks a broadcast mask without copying it.
fn row_offsets(l: &Layout) -> Result<Vec<usize>> {
    let dims = l.dims();
    let stride = l.stride();
    let rank = dims.len();
    if rank == 0 || stride[rank - 1] != 1 {
        bail!("fused softmax: the mask's last dimension must be contiguous");
    }
    let rows: usize = dims[..rank - 1].iter().product();
    let mut out = Vec::with_capacity(rows);
    let mut idx = vec![0usize; rank - 1];
    for _ in 0..rows {
        let off: usize = idx.iter().zip(stride).map(|(i, s)| i * s).sum();
        out.push(l.start_offset() + off);
        for k in (0..rank - 1).rev() {
            idx[k] += 1;
            if idx[k] < dims[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    Ok(out)
}

fn softmax_fwd<T: Real>(x: &[T], n: usize, mask: Option<(&[T], &[usize])>) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    let rows = rows_per_task(n);
    let chunk = n * rows;
    for_chunks(&mut y, chunk, x, chunk, x, chunk, |task, yc, xc, _| {
        let mask = mask.map(|(m, offsets)| (m, &offsets[task * rows..]));
        softmax_rows(yc, xc, n, mask)
    });
    y
}

/// `dx = y · (g − Σ g · y)` per row, from the saved output.
fn softmax_bwd<T: Real>(y: &[T], g: &[T], n: usize) -> Vec<T> {
    let mut dx = vec![T::zero(); y.len()];
    let chunk = n * rows_per_task(n);
    for_chunks(&mut dx, chunk, y, chunk, g, chunk, |_, dc, yc, gc| {
        softmax_grad_rows(dc, yc, gc, n)
    });
    dx
}

impl Softmax {
    fn backward(y: &Tensor, g: &Tensor) -> Result<Tensor> {
        let n = y.dim(candle_core::D::Minus1)?;
        by_tensor_dtype!(y, "fused-softmax", |T| {
            let dx = read::<T, _>(y, |y| read::<T, _>(g, |g| Ok(softmax_bwd(y, g, n))))?;
            tensor(dx, y.shape())
        })
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = last_dim(l)?;
        let out = by_dtype!(s, self.name(), |T| {
            T::to_cpu_storage_owned(softmax_fwd::<T>(slice(s, l, self.name())?, n, None))
        });
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(Softmax::backward(y, g)?))
    }
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "fused-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = last_dim(l1)?;
        if l1.dims() != l2.dims() {
            bail!(
                "{}: mask {:?} for scores {:?}",
                self.name(),
                l2.dims(),
                l1.dims()
            );
        }
        let offsets = row_offsets(l2)?;
        let out = by_dtype!(s1, self.name(), |T| {
            let m = s2.as_slice::<T>()?;
            T::to_cpu_storage_owned(softmax_fwd::<T>(
                slice(s1, l1, self.name())?,
                n,
                Some((m, &offsets)),
            ))
        });
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _mask: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(Softmax::backward(y, g)?), None))
    }
}

// ---------------------------------------------------------------------------------------------
// Rotary embedding (interleaved pairs)

struct Rotary;

multiversion! {
    /// Rotates the pairs of rows of `x` (rows of `d`, the first at position `first % t`) by
    /// the angles whose `(cos, sin)` tables are given, or by the opposite angles when `inverse`
    /// (the backward: the transpose of a rotation is the rotation by −θ).
    fn rotary_rows<T>(
        y: &mut [T],
        x: &[T],
        tables: (&[T], &[T]),
        d: usize,
        t: usize,
        first: usize,
        inverse: bool,
    ) {
        let (cos, sin) = tables;
        let half = d / 2;
        for (i, (yr, xr)) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
            let p = (first + i) % t;
            let c = &cos[p * half..(p + 1) * half];
            let s = &sin[p * half..(p + 1) * half];
            let (yp, _) = yr.as_chunks_mut::<2>();
            let (xp, _) = xr.as_chunks::<2>();
            if inverse {
                for (((y, x), &c), &s) in yp.iter_mut().zip(xp).zip(c).zip(s) {
                    y[0] = x[0] * c + x[1] * s;
                    y[1] = x[1] * c - x[0] * s;
                }
            } else {
                for (((y, x), &c), &s) in yp.iter_mut().zip(xp).zip(c).zip(s) {
                    y[0] = x[0] * c - x[1] * s;
                    y[1] = x[0] * s + x[1] * c;
                }
            }
        }
    }
}

fn rotary_kernel<T: Real>(
    x: &[T],
    cos: &[T],
    sin: &[T],
    d: usize,
    t: usize,
    inverse: bool,
) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    let rows = rows_per_task(d);
    let chunk = d * rows;
    for_chunks(&mut y, chunk, x, chunk, x, chunk, |task, yc, xc, _| {
        rotary_rows(yc, xc, (cos, sin), d, t, task * rows, inverse)
    });
    y
}

impl CustomOp3 for Rotary {
    fn name(&self) -> &'static str {
        "fused-rotary"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(l1)?;
        let dims = l1.dims();
        let t = if dims.len() >= 2 {
            dims[dims.len() - 2]
        } else {
            1
        };
        if d % 2 != 0 || l2.dims() != [t, d / 2] || l3.dims() != [t, d / 2] {
            bail!(
                "{}: tables {:?}/{:?} for input {:?}",
                self.name(),
                l2.dims(),
                l3.dims(),
                dims
            );
        }
        let out = by_dtype!(s1, self.name(), |T| {
            T::to_cpu_storage_owned(rotary_kernel::<T>(
                slice(s1, l1, self.name())?,
                slice(s2, l2, self.name())?,
                slice(s3, l3, self.name())?,
                d,
                t,
                false,
            ))
        });
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Ok((Some(rotary_backward(g, cos, sin)?), None, None))
    }
}

// ---------------------------------------------------------------------------------------------
// GLU with exact GELU, bias folded in

struct GeluGlu;

const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// 1 / √(2π), the standard normal density at 0.
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

multiversion! {
    /// `(v + bv) · gelu(z + bg)` on rows `[v | z]` of `h` (rows of `2n`, `n = bias.len() / 2`).
    fn gelu_glu_rows<T>(y: &mut [T], h: &[T], bias: &[T]) {
        let n = bias.len() / 2;
        let half = T::from_f64(0.5);
        let k = T::from_f64(FRAC_1_SQRT_2);
        let (bv, bg) = bias.split_at(n);
        for (yr, hr) in y.chunks_exact_mut(n).zip(h.chunks_exact(2 * n)) {
            let (hv, hg) = hr.split_at(n);
            for ((((y, &v), &z), &bv), &bg) in yr.iter_mut().zip(hv).zip(hg).zip(bv).zip(bg) {
                let z = z + bg;
                *y = (v + bv) * (half * z * (T::one() + (z * k).erf_()));
            }
        }
    }
}

multiversion! {
    /// The backward of [`gelu_glu_rows`]: writes `dh` and returns these rows' share of the
    /// bias gradient. With `z` the gate and `v` the value (bias included),
    /// `d value = g · gelu(z)` and `d gate = g · v · (Φ(z) + z · φ(z))`.
    fn gelu_glu_grad_rows<T>(dh: &mut [T], h: &[T], g: &[T], bias: &[T]) -> Vec<T> {
        let n = bias.len() / 2;
        let half = T::from_f64(0.5);
        let k = T::from_f64(FRAC_1_SQRT_2);
        let neg_half = T::from_f64(-0.5);
        let c = T::from_f64(INV_SQRT_2PI);
        let (bv, bg) = bias.split_at(n);
        let mut acc = vec![T::zero(); 2 * n];
        for ((dr, hr), gr) in dh
            .chunks_exact_mut(2 * n)
            .zip(h.chunks_exact(2 * n))
            .zip(g.chunks_exact(n))
        {
            let (dv, dg) = dr.split_at_mut(n);
            let (hv, hg) = hr.split_at(n);
            for (((((dv, dg), &v), &z), &bv), (&bg, &g)) in dv
                .iter_mut()
                .zip(dg.iter_mut())
                .zip(hv)
                .zip(hg)
                .zip(bv)
                .zip(bg.iter().zip(gr))
            {
                let v = v + bv;
                let z = z + bg;
                let cdf = half * (T::one() + (z * k).erf_());
                let pdf = c * (neg_half * z * z).exp_();
                *dv = g * z * cdf;
                *dg = g * v * (cdf + z * pdf);
            }
            for (a, &d) in acc.iter_mut().zip(dr.iter()) {
                *a += d;
            }
        }
        acc
    }
}

fn gelu_glu_fwd<T: Real>(h: &[T], bias: &[T]) -> Vec<T> {
    let n = bias.len() / 2;
    let mut y = vec![T::zero(); h.len() / 2];
    let rows = rows_per_task(2 * n);
    for_chunks(&mut y, n * rows, h, 2 * n * rows, h, 1, |_, yc, hc, _| {
        gelu_glu_rows(yc, hc, bias)
    });
    y
}

fn gelu_glu_bwd<T: Real>(h: &[T], bias: &[T], g: &[T]) -> (Vec<T>, Vec<T>) {
    let n = bias.len() / 2;
    let mut dh = vec![T::zero(); h.len()];
    let rows = rows_per_task(2 * n);
    let (dc, gc) = (2 * n * rows, n * rows);
    let dbias = for_chunks_sum(&mut dh, dc, h, dc, g, gc, 2 * n, |dc, hc, gc| {
        gelu_glu_grad_rows(dc, hc, gc, bias)
    });
    (dh, dbias)
}

impl CustomOp2 for GeluGlu {
    fn name(&self) -> &'static str {
        "fused-gelu-glu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(l1)?;
        if d % 2 != 0 || l2.shape().elem_count() != d {
            bail!("{}: bias {:?} for rows of {d}", self.name(), l2.shape());
        }
        let out = by_dtype!(s1, self.name(), |T| {
            T::to_cpu_storage_owned(gelu_glu_fwd::<T>(
                slice(s1, l1, self.name())?,
                slice(s2, l2, self.name())?,
            ))
        });
        let mut dims = l1.dims().to_vec();
        *dims.last_mut().expect("rank ≥ 1") = d / 2;
        Ok((out, Shape::from(dims)))
    }

    fn bwd(
        &self,
        h: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        by_tensor_dtype!(h, self.name(), |T| {
            let (dh, db) = read::<T, _>(h, |h| {
                read::<T, _>(bias, |b| read::<T, _>(g, |g| Ok(gelu_glu_bwd(h, b, g))))
            })?;
            Ok((
                Some(tensor(dh, h.shape())?),
                Some(tensor(db, bias.shape())?),
            ))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Linear

struct LinearOp;

impl LinearOp {
    /// `x · weightᵀ (+ bias)` through candle's CPU matmul, with the weight's transpose as a
    /// strided layout (as `Tensor::matmul(&x, &weight.t())` passes it), the bias added in place.
    fn forward(
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let name = "fused-linear";
        let k = last_dim(x.1)?;
        let (n, k2) = w.1.shape().dims2()?;
        if k != k2 {
            bail!("{name}: weight {:?} for rows of {k}", w.1.dims());
        }
        let m = x.1.shape().elem_count() / k;
        let (Some((x0, _)), Some((w0, _))) = (x.1.contiguous_offsets(), w.1.contiguous_offsets())
        else {
            bail!("{name}: the inputs must be contiguous");
        };
        let lx = Layout::contiguous_with_offset((m, k), x0);
        let lw = Layout::new(Shape::from((k, n)), vec![1, k], w0);
        let mut out = x.0.matmul(w.0, (1, m, n, k), &lx, &lw)?;
        if let Some((sb, lb)) = bias {
            if lb.shape().elem_count() != n {
                bail!("{name}: bias {:?} for {n} outputs", lb.dims());
            }
            match &mut out {
                CpuStorage::F32(y) => add_rows(y, slice(sb, lb, name)?),
                CpuStorage::F64(y) => add_rows(y, slice(sb, lb, name)?),
                _ => bail!("{name}: only f32 and f64 are supported"),
            }
        }
        let mut dims = x.1.dims().to_vec();
        *dims.last_mut().expect("rank ≥ 1") = n;
        Ok((out, Shape::from(dims)))
    }

    /// `dx = g · weight`, `dweight = gᵀ · x` (candle matmuls).
    fn backward(x: &Tensor, weight: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
        // Detached: products with the tracked forward tensors would themselves be tracked, and
        // a tracked gradient keeps the whole step's graph alive through the optimiser's state
        // (a leak of gigabytes per step).
        let (x, weight) = (x.detach(), weight.detach());
        let (n, k) = weight.dims2()?;
        let m = x.elem_count() / k;
        let g2 = g.contiguous()?.reshape((m, n))?;
        let dx = g2.matmul(&weight)?.reshape(x.shape())?;
        let dw = g2.t()?.matmul(&x.reshape((m, k))?)?;
        Ok((dx, dw))
    }
}

/// Adds `b` to every row of `y` (rows of `b.len()`).
fn add_rows<T: Real>(y: &mut [T], b: &[T]) {
    for row in y.chunks_exact_mut(b.len()) {
        for (y, &b) in row.iter_mut().zip(b) {
            *y += b;
        }
    }
}

/// The sum over rows of `g` (rows of `n`), via per-task partial sums.
fn row_sum<T: Real>(g: &[T], n: usize) -> Vec<T> {
    let partial = |gc: &[T]| {
        let mut acc = vec![T::zero(); n];
        for gr in gc.chunks_exact(n) {
            for (a, &v) in acc.iter_mut().zip(gr) {
                *a += v;
            }
        }
        acc
    };
    let chunk = n * rows_per_task(n);
    if parallel(g.len()) {
        let partials: Vec<Vec<T>> = g.par_chunks(chunk).map(partial).collect();
        sum_in_order(partials, n)
    } else {
        sum_in_order(g.chunks(chunk).map(partial), n)
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Self::forward((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = Self::backward(x, weight, g)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Self::forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = Self::backward(x, weight, g)?;
        let n = bias.elem_count();
        let db = by_tensor_dtype!(g, "fused-linear", |T| {
            let db = read::<T, _>(g, |g| Ok(row_sum(g, n)))?;
            tensor(db, bias.shape())?
        });
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

// ---------------------------------------------------------------------------------------------
// Attention core

/// The graph node of [`attention`]: the output, computed before the node was made, and what
/// the backward needs (all detached, in `(b, heads, t, d)` layout; `q` rotated and scaled, `k`
/// rotated, `p` the attention weights).
struct Attention {
    out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    p: Tensor,
    rotary: Option<(Tensor, Tensor)>,
    scale: f64,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    /// Hands over a copy of the output computed in [`attention`] (the inputs are the same
    /// tensors it was computed from): one `(b, t, heads · d)` copy instead of a second forward.
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let storage = by_tensor_dtype!(self.out, self.name(), |T| {
            read::<T, _>(&self.out, |o| Ok(T::to_cpu_storage(o)))?
        });
        Ok((storage, self.out.shape().clone()))
    }

    /// With `s = q kᵀ` (q scaled) and `o = p v`: `dv = pᵀ do`, `dp = do vᵀ`,
    /// `ds = p ⊙ (dp − Σ dp ⊙ p)`, `dq = scale · ds k`, `dk = dsᵀ q`, then the inverse rotation
    /// and the heads merged back.
    fn bwd(
        &self,
        xq: &Tensor,
        xk: &Tensor,
        xv: &Tensor,
        _out: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, heads, t, d) = self.q.dims4()?;
        let go = g.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()?;
        let dv = self.p.t()?.matmul(&go)?;
        let dp = go.matmul(&self.v.t()?)?;
        let ds = Softmax::backward(&self.p, &dp)?;
        let mut dq = (ds.matmul(&self.k)? * self.scale)?;
        let mut dk = ds.t()?.matmul(&self.q)?;
        if let Some((cos, sin)) = &self.rotary {
            dq = rotary_backward(&dq, cos, sin)?;
            dk = rotary_backward(&dk, cos, sin)?;
        }
        let merge = |x: Tensor, like: &Tensor| -> Result<Tensor> {
            x.transpose(1, 2)?.contiguous()?.reshape(like.shape())
        };
        Ok((
            Some(merge(dq, xq)?),
            Some(merge(dk, xk)?),
            Some(merge(dv, xv)?),
        ))
    }
}

/// The gradient through [`rotary`]: the rotation by the opposite angles.
fn rotary_backward(g: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (t, half) = cos.dims2()?;
    let g = g.contiguous()?;
    by_tensor_dtype!(g, "fused-rotary", |T| {
        let dx = read::<T, _>(&g, |g| {
            read::<T, _>(cos, |c| {
                read::<T, _>(sin, |s| Ok(rotary_kernel(g, c, s, 2 * half, t, true)))
            })
        })?;
        tensor(dx, g.shape())
    })
}

#[cfg(test)]
mod tests {
    //! Each op against the plain-op version it replaces (blocks.rs): forward values, and
    //! gradients against candle's autograd of the plain ops, in f32 and f64.

    use super::*;
    use crate::models::blocks::{
        causal_mask, gelu_glu_plain, layer_norm_plain, rotary_plain, softmax_plain, Rotary,
        RotaryTables, LN_EPS,
    };
    use candle_core::Var;

    type Op<'a> = &'a dyn Fn(&[Tensor]) -> Result<Tensor>;

    /// Output of `f` on `inputs` and the gradients of a fixed random weighting of it.
    fn run(f: Op, inputs: &[Tensor], weights: &Tensor) -> (Tensor, Vec<Tensor>) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&ts).unwrap();
        let loss = (&out * weights).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g = ts
            .iter()
            .map(|t| grads.get(t).expect("a gradient").clone())
            .collect();
        (out, g)
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        let d = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap();
        d.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Checks `fused` against `plain` on `inputs` (f32 as given, then the same in f64):
    /// forward within `tol32`/`tol64`, and the gradient of every input within the same
    /// tolerance relative to its largest element.
    fn check(what: &str, fused: Op, plain: Op, inputs: &[Tensor], tol32: f64, tol64: f64) {
        for (dtype, tol) in [(DType::F32, tol32), (DType::F64, tol64)] {
            let inputs: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(dtype).unwrap()).collect();
            let probe = fused(&inputs).unwrap();
            let w = Tensor::randn(0f64, 1.0, probe.shape(), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let (yf, gf) = run(fused, &inputs, &w);
            let (yp, gp) = run(plain, &inputs, &w);
            assert_eq!(yf.dtype(), dtype);
            let d = max_abs_diff(&yf, &yp);
            assert!(d <= tol, "{what} {dtype:?}: forward differs by {d}");
            for (i, (a, b)) in gf.iter().zip(&gp).enumerate() {
                // A gradient that is itself tracked keeps the step's graph alive (through the
                // optimiser's state) until the end of training.
                assert!(!a.track_op(), "{what} {dtype:?}: gradient {i} is tracked");
                let scale = b
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap();
                let scale = scale.to_scalar::<f64>().unwrap().max(1.0);
                let d = max_abs_diff(a, b) / scale;
                assert!(
                    d <= tol,
                    "{what} {dtype:?}: gradient of input {i} differs by {d}"
                );
            }
        }
    }

    fn randn(shape: &[usize], std: f64) -> Tensor {
        Tensor::randn(0f32, std as f32, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn layer_norm_matches_plain_ops() {
        // Rows of 40: not a multiple of the 8 lanes, so the tails are exercised too. Each case
        // is above `parallel`'s threshold, so that it is split into several tasks where the
        // test has more than one thread.
        for d in [64, 40] {
            let x = (randn(&[4, 300, d], 2.0) + 0.5).unwrap();
            let gamma = randn(&[d], 0.3);
            check(
                "layer norm",
                &|t| layer_norm(&t[0], &t[1], LN_EPS),
                &|t| layer_norm_plain(&t[0], &t[1]),
                &[x, gamma],
                1e-5,
                1e-12,
            );
        }
    }

    #[test]
    fn softmax_matches_plain_ops() {
        // 13 keys: not a multiple of the 8 lanes; 52 K scores: several tasks.
        let (b, h, t) = (31, 10, 13);
        let scores = randn(&[b, h, t, t], 3.0);
        check(
            "softmax",
            &|x| softmax_last_dim(&x[0], None),
            &|x| softmax_plain(&x[0]),
            std::slice::from_ref(&scores),
            1e-5,
            1e-12,
        );
        // A causal mask plus key padding (the last key of the second sequence), as attention
        // builds them.
        let causal = causal_mask(t, 0, DType::F32, &Device::Cpu).unwrap();
        let mut pad = vec![0f32; b * t];
        pad[2 * t - 1] = -1e9;
        pad[b * t - 3] = -1e9;
        let pad = Tensor::from_vec(pad, (b, 1, 1, t), &Device::Cpu).unwrap();
        let mask = causal.broadcast_add(&pad).unwrap();
        for m in [causal, mask] {
            check(
                "masked softmax",
                &|x| softmax_last_dim(&x[0], Some(&m)),
                &|x| softmax_plain(&x[0].broadcast_add(&m.to_dtype(x[0].dtype())?)?),
                std::slice::from_ref(&scores),
                1e-5,
                1e-12,
            );
        }
    }

    #[test]
    fn fully_masked_softmax_rows_are_zero() {
        let x = Tensor::full(f32::NEG_INFINITY, (2, 5), &Device::Cpu).unwrap();
        let y = softmax_last_dim(&x, None).unwrap();
        assert_eq!(y.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn rotary_matches_plain_ops() {
        // dim_head 16 with rot_dim 8: half the pairs are left alone (cos 1, sin 0).
        // 2,600 rows of 16: two tasks, the second starting mid-sequence.
        let (b, h, t, d) = (4, 5, 130, 16);
        let tables = Rotary::new(8)
            .tables(5, t, d, DType::F32, &Device::Cpu)
            .unwrap();
        let x = randn(&[b, h, t, d], 1.0);
        check(
            "rotary",
            &|x| rotary(&x[0], &tables.cos, &tables.sin),
            &|x| {
                let dt = x[0].dtype();
                rotary_plain(&x[0], &tables.cos.to_dtype(dt)?, &tables.sin.to_dtype(dt)?)
            },
            &[x],
            1e-6,
            1e-12,
        );
    }

    /// [`attention`] from plain ops, as blocks.rs computes it without the fused ops.
    fn attention_plain(
        x: &[Tensor],
        heads: usize,
        rot: Option<&RotaryTables>,
        mask: Option<&Tensor>,
        scale: f64,
    ) -> Result<Tensor> {
        let (b, t, inner) = x[0].dims3()?;
        let d = inner / heads;
        let split = |x: &Tensor| -> Result<Tensor> {
            let tk = x.dim(1)?;
            x.reshape((b, tk, heads, d))?.transpose(1, 2)?.contiguous()
        };
        let (mut q, mut k, v) = (split(&x[0])?, split(&x[1])?, split(&x[2])?);
        let dt = q.dtype();
        if let Some(r) = rot {
            let (c, s) = (r.cos.to_dtype(dt)?, r.sin.to_dtype(dt)?);
            q = rotary_plain(&q, &c, &s)?;
            k = rotary_plain(&k, &c, &s)?;
        }
        let scores = (q * scale)?.matmul(&k.t()?)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(&m.to_dtype(dt)?)?,
            None => scores,
        };
        softmax_plain(&scores)?
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, inner))
    }

    #[test]
    fn attention_matches_plain_ops() {
        let (b, heads, t, d) = (3, 4, 11, 16);
        let scale = 1.0 / (d as f64).sqrt();
        let tables = Rotary::new(8)
            .tables(0, t, d, DType::F32, &Device::Cpu)
            .unwrap();
        let causal = causal_mask(t, 0, DType::F32, &Device::Cpu).unwrap();
        let x: Vec<Tensor> = (0..3).map(|_| randn(&[b, t, heads * d], 1.5)).collect();
        // Self-attention: rotary and a causal mask, as the decoder runs it.
        check(
            "self-attention",
            &|x| {
                let tables = Some((&tables.cos, &tables.sin));
                attention(&x[0], &x[1], &x[2], heads, tables, Some(&causal), scale)
            },
            &|x| attention_plain(x, heads, Some(&tables), Some(&causal), scale),
            &x,
            1e-5,
            1e-12,
        );
        // Cross-attention: more keys than queries, key padding, no rotary; and no mask at all.
        let tk = 17;
        let mut pad = vec![0f32; b * tk];
        pad[tk - 1] = -1e9;
        pad[2 * tk - 5..2 * tk].fill(-1e9);
        let pad = Tensor::from_vec(pad, (b, 1, 1, tk), &Device::Cpu).unwrap();
        let kv: Vec<Tensor> = (0..2).map(|_| randn(&[b, tk, heads * d], 1.5)).collect();
        let inputs = [x[0].clone(), kv[0].clone(), kv[1].clone()];
        for mask in [Some(&pad), None] {
            check(
                "cross-attention",
                &|x| attention(&x[0], &x[1], &x[2], heads, None, mask, scale),
                &|x| attention_plain(x, heads, None, mask, scale),
                &inputs,
                1e-5,
                1e-12,
            );
        }
    }

    #[test]
    fn gelu_glu_matches_plain_ops() {
        let n = 20;
        // Spread wide enough to reach erf's saturated tails on both sides.
        let h = randn(&[4, 300, 2 * n], 3.0);
        let bias = randn(&[2 * n], 1.0);
        check(
            "gelu glu",
            &|t| gelu_glu(&t[0], &t[1]),
            &|t| gelu_glu_plain(&t[0].broadcast_add(&t[1])?, n),
            &[h, bias],
            1e-5,
            // candle's gelu_erf backward takes 1/√(2π) as 0.398942 (7e-7 relative error); this
            // op uses the exact constant, so f64 agreement stops there.
            2e-6,
        );
    }

    #[test]
    fn linear_matches_plain_ops() {
        // 1,600 rows of 24 → 40: the bias gradient's row sum is split into several tasks.
        let x = randn(&[8, 200, 24], 1.0);
        let w = randn(&[40, 24], 0.3);
        let bias = randn(&[40], 1.0);
        let plain = |t: &[Tensor]| t[0].broadcast_matmul(&t[1].t()?);
        check(
            "linear",
            &|t| linear(&t[0], &t[1], None),
            &plain,
            &[x.clone(), w.clone()],
            1e-5,
            1e-12,
        );
        check(
            "linear with bias",
            &|t| linear(&t[0], &t[1], Some(&t[2])),
            &|t| plain(t)?.broadcast_add(&t[2]),
            &[x, w, bias],
            1e-5,
            1e-12,
        );
    }

    #[test]
    fn erf_f32_is_within_1e7_of_erf() {
        let mut worst = 0f64;
        for i in -600_000..=600_000 {
            let x = i as f32 * 1e-5;
            let err = (erf_f32(x) as f64 - candle_core::cpu::erf::erf_f64(x as f64)).abs();
            worst = worst.max(err);
        }
        assert!(worst <= 1e-7, "erf_f32 is off by up to {worst}");
        assert_eq!(erf_f32(f32::INFINITY), 1.0);
        assert_eq!(erf_f32(f32::NEG_INFINITY), -1.0);
        assert_eq!(erf_f32(0.0), 0.0);
    }

    #[test]
    fn exp_f32_is_within_a_few_ulp_of_exp() {
        let mut worst = 0f64;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let exact = (x as f64).exp();
            worst = worst.max((exp_f32(x) as f64 - exact).abs() / exact);
        }
        assert!(worst <= 3e-7, "exp_f32 has a relative error up to {worst}");
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
    }
}
