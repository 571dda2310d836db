//! x-transformers' GLU with exact GELU, its projection's bias folded in, as one op with its own
//! backward.

use super::real::Real;
use super::rows::{for_chunks, for_chunks_sum, last_dim, read, rows_per_task, slice, tensor};
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType};

/// x-transformers' GLU activation with its projection's bias folded in: with
/// `z = h + bias` (`h`: `(…, 2n)`), returns `z[..n] · gelu(z[n..])` (exact, erf-based GELU).
/// Differentiable in `h` and `bias`.
pub(crate) fn gelu_glu(h: &Tensor, bias: &Tensor) -> Result<Tensor> {
    h.contiguous()?
        .apply_op2(&bias.to_dtype(h.dtype())?.contiguous()?, GeluGlu)
}

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
