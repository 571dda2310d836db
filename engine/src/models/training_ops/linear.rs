//! A linear layer as one autograd node with its own backward.

use super::real::Real;
use super::rows::{last_dim, read, row_sum, slice, tensor};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

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
