//! Errors from loading and checking model files. Every variant names the file, and the tensor
//! where there is one, so that a bad model directory can be fixed without a debugger.

use std::path::PathBuf;

/// What went wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read at all.
    #[error("{file}: cannot read: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a well-formed safetensors file (truncated, wrong format, bad header).
    #[error("{file}: not a valid safetensors file: {reason}")]
    Safetensors { file: PathBuf, reason: String },
    /// A tensor the config calls for is absent.
    #[error("{file}: missing tensor `{tensor}` (does config.json match these weights?)")]
    MissingTensor { file: PathBuf, tensor: String },
    /// A tensor is present with a shape other than the config implies.
    #[error("{file}: tensor `{tensor}` has shape {found:?} but config.json implies {expected:?}")]
    Shape {
        file: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor has a dtype the engine cannot use (weights must be F32, F16, BF16 or F64).
    #[error("{file}: tensor `{tensor}` has dtype {found}; weights must be F32, F16, BF16 or F64")]
    DType {
        file: PathBuf,
        tensor: String,
        found: String,
    },
    /// The file holds a tensor the config does not account for.
    #[error("{file}: unexpected tensor `{tensor}` (does config.json match these weights?)")]
    UnexpectedTensor { file: PathBuf, tensor: String },
    /// A tensor's values disagree with the config (e.g. rotary frequencies).
    #[error("{file}: tensor `{tensor}`: {reason}")]
    Value {
        file: PathBuf,
        tensor: String,
        reason: String,
    },
    /// `config.json` is malformed, names an unsupported option, or is inconsistent.
    #[error("{file}: {reason}")]
    Config { file: PathBuf, reason: String },
    /// The tokenizer's vocabulary does not match the model's `num_tokens`.
    #[error(
        "{file}: the tokenizer has {found} tokens but config.json says num_tokens = {expected}"
    )]
    VocabSize {
        file: PathBuf,
        expected: usize,
        found: usize,
    },
    /// Bad input to a model function (empty sequence, wrong batch, …).
    #[error("{0}")]
    Input(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result of model loading and scoring.
pub type Result<T> = std::result::Result<T, Error>;
