//! x-transformers' layer norm (unit-offset gain, no bias) as one op with its own backward.

use super::real::Real;
use super::rows::{for_chunks, for_chunks_sum, last_dim, read, rows_per_task, slice, sum2, tensor};
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType};

/// x-transformers' `LayerNorm` (see `blocks::LayerNorm`): `torch.nn.LayerNorm` without affine
/// parameters over the last dimension, times `gamma + 1`. Differentiable in `x` and `gamma`.
pub(crate) fn layer_norm(x: &Tensor, gamma: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&gamma.contiguous()?, LayerNormOp { eps })
}

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
