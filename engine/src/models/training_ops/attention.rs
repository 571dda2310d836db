//! The attention core between the projections as one autograd node with its own backward.

use super::rotary::{rotary_backward, Rotary};
use super::rows::read;
use super::softmax::{broadcast_mask, MaskedSoftmax, Softmax};
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};

/// Multi-head attention between the projections and the output projection, as one graph node:
/// `xq` (`(b, t, heads · d)`), `xk`, `xv` (`(b, t_k, heads · d)`) are split into heads, `q` and
/// `k` rotated when `rotary` gives `(cos, sin)` tables (see [`super::rotary`]), then
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
        AttentionOp {
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

/// The graph node of [`attention`]: the output, computed before the node was made, and what
/// the backward needs (all detached, in `(b, heads, t, d)` layout; `q` rotated and scaled, `k`
/// rotated, `p` the attention weights).
struct AttentionOp {
    out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    p: Tensor,
    rotary: Option<(Tensor, Tensor)>,
    scale: f64,
}

impl CustomOp3 for AttentionOp {
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
