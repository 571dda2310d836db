//! Rotary embedding (GPT-J style interleaved pairs) as one op with its own backward.

use super::real::Real;
use super::rows::{for_chunks, last_dim, read, rows_per_task, slice, tensor};
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};

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

pub(super) struct Rotary;

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

/// The gradient through [`rotary`]: the rotation by the opposite angles.
pub(super) fn rotary_backward(g: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
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
