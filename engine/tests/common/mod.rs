//! Helpers the engine's test files share: the tiny x-transformers fixture, tensor comparison,
//! random tiny models and the bundled example primes.
//! (Each test file compiles this module on its own and uses part of it.)
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use engine::midi::Score;
use engine::models::{Model, ModelConfig};
use engine::tokenizer::Tokenizer;

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

/// A random-weight tiny model with the reference tokenizer and a context of `context` tokens.
pub fn tiny_model(context: usize) -> Model {
    let mut config = ModelConfig::tiny();
    config.max_seq_len = context;
    Model::random(config, Tokenizer::reference(), &Device::Cpu).unwrap()
}

/// One of the example primes in `assets/examples/`.
pub fn example(name: &str) -> Score {
    Score::read_file(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../assets/examples")
            .join(name),
    )
    .unwrap()
}
