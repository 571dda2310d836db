//! Softmax over the last dimension, with an optional additive mask, as one op with its own
//! backward.

use super::real::Real;
use super::rows::{for_chunks, last_dim, read, rows_per_task, slice, sum2, tensor, LANES};
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType,
};

/// Softmax over the last dimension of `x + mask` (the additive attention mask, broadcastable
/// to `x`; it gets no gradient). Differentiable in `x`.
pub(crate) fn softmax_last_dim(x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let x = x.contiguous()?;
    match mask {
        None => x.apply_op1(Softmax),
        Some(m) => x.apply_op2(&broadcast_mask(m, &x)?, MaskedSoftmax),
    }
}

/// The additive mask as a view broadcast to `x`, last dimension contiguous: the softmax kernel
/// walks it by its strides, so the full `(b, heads, t, t_k)` mask is never materialised.
pub(super) fn broadcast_mask(m: &Tensor, x: &Tensor) -> Result<Tensor> {
    let m = m.to_dtype(x.dtype())?.detach();
    if m.dim(candle_core::D::Minus1)? == x.dim(candle_core::D::Minus1)? {
        m.contiguous()?.broadcast_as(x.shape())
    } else {
        m.broadcast_as(x.shape())?.contiguous()
    }
}
pub(super) struct Softmax;

/// [`Softmax`] of `x + mask`, the mask a second (gradient-free) input.
pub(super) struct MaskedSoftmax;

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
    pub(super) fn backward(y: &Tensor, g: &Tensor) -> Result<Tensor> {
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
