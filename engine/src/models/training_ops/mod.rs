//! Custom ops that carry their own backward, for the training kernels ([`Kernels::Training`]) on
//! the CPU.
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
//! version, values and gradients, in f32 and f64 (`tests.rs`).
//!
//! candle's own fused kernels (`candle_nn::ops::layer_norm`, `softmax_last_dim`, `rope_i`)
//! are no substitute: they silently return no gradient (`docs/candle-cpu-training.md`).
//!
//! Scope: contiguous f32 and f64 tensors on the CPU ([`supports`]); inputs are made contiguous
//! here. f64 is supported, not just f32, so that the f64 finite-difference tests of the models
//! check this very code. Callers keep the plain-op version for anything else (GPU, f16/bf16).
//!
//! Layout: one file per op (`layer_norm.rs`, `softmax.rs`, `rotary.rs`, `gelu_glu.rs`,
//! `linear.rs`, `attention.rs`), the float types and their vectorisable math in `real.rs`, and
//! the row and reduction machinery they share (tasks over rows, partial sums added in order,
//! dtype dispatch) in `rows.rs`.
//!
//! [`Kernels::Training`]: super::Kernels::Training

use candle_core::{DType, Tensor};

#[macro_use]
mod rows;
mod attention;
mod gelu_glu;
mod layer_norm;
mod linear;
mod real;
mod rotary;
mod softmax;
#[cfg(test)]
mod tests;

pub(crate) use attention::attention;
pub(crate) use gelu_glu::gelu_glu;
pub(crate) use layer_norm::layer_norm;
pub(crate) use linear::linear;
pub(crate) use rotary::rotary;
pub(crate) use softmax::softmax_last_dim;

/// Whether the ops of this module can run on `t` (CPU, f32 or f64).
pub(crate) fn supports(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}
