//! Helpers the model test files share: the tiny x-transformers fixture and tensor comparison.
//! (Each test file compiles this module on its own and uses part of it.)
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{DType, Tensor};

/// The tiny x-transformers model directory exported by PyTorch, with its reference outputs.
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/tiny_xt")
}

/// The largest absolute difference between two tensors of the same shape, compared in f32.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
