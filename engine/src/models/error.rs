//! Errors from loading and checking model files. Every variant names the file, and the tensor
//! where there is one, so that a bad model directory can be fixed without a debugger.

use std::path::PathBuf;

/// What went wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read at all. The I/O error is part of the message and deliberately
    /// not a `source`: callers that print the error chain (anyhow's `{:#}`) would show it twice.
    #[error("{file}: cannot read: {error}")]
    Io {
        file: PathBuf,
        error: std::io::Error,
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

/// A config value the engine does not implement: what the `validate` of [`super::ModelConfig`],
/// [`super::DecoderConfig`], [`super::AdapterConfig`] and [`super::DiscriminatorConfig`]
/// refuse. Each message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelConfigError {
    #[error("num_tokens must be positive")]
    NoTokens,
    #[error("max_seq_len = {0} is too short (at least 2)")]
    MaxSeqLenTooShort(usize),
    #[error("decoder.ff_glu must be true (the engine implements the GLU feed-forward only; x-transformers' default is false)")]
    NoGlu,
    #[error("decoder.rotary_pos_emb must be true (the engine implements rotary positions only; x-transformers' default is false)")]
    NoRotary,
    /// `network` is `decoder`, `adapter` or `discriminator`.
    #[error("{network}: dim, depth, heads, attn_dim_head and ff_mult must all be positive")]
    EmptyShape { network: &'static str },
    #[error("{network}.rotary_emb_dim = {rot_dim}: must be even, positive and at most attn_dim_head = {dim_head}")]
    RotaryDim {
        network: &'static str,
        rot_dim: usize,
        dim_head: usize,
    },
    #[error("discriminator: prime_depth and order_depth must be positive")]
    DiscriminatorDepth,
    #[error("discriminator.bar_token_id / pad_token_id must be below num_tokens = {num_tokens}")]
    SpecialTokenOutOfRange { num_tokens: usize },
}

/// Result of model loading and scoring.
pub type Result<T> = std::result::Result<T, Error>;
