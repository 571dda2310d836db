//! The networks: the decoder (an x-transformers language model over REMI tokens), the style
//! adapter that sits on top of it, and the discriminator used in training.
//!
//! Layout follows candle-transformers: each network has a public serde `Config`, private
//! blocks, `Model::new(cfg, vb)` and `forward`. Shared pieces live in `blocks` (norm, rotary
//! attention, GLU feed-forward, the pre-norm stack) and [`kv_cache`]. A model on disk is a
//! directory ([`model_dir`], documented in `docs/model-format.md`).
//!
//! Two sets of kernels exist everywhere ([`Kernels`]): inference (`forward`, candle's fused
//! kernels, KV cache, optional f16/bf16 or 8-bit weights) and training (`forward_train` /
//! [`Kernels::Training`]), because candle's fused kernels silently produce no gradient.
//!
//! Typical generation use:
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use engine::models::{LoadOptions, Model};
//! use candle_core::Tensor;
//! let model = Model::load("assets/model", &LoadOptions::default())?;
//! let mut cache = model.new_cache(1024);
//! let prime = Tensor::new(&[[1u32, 3, 12, 40]], &candle_core::Device::Cpu)?;
//! let logits = model.step(&prime, &mut cache)?; // (1, 4, vocab): prefill
//! let next = Tensor::new(&[[60u32]], &candle_core::Device::Cpu)?;
//! let logits = model.step(&next, &mut cache)?; // (1, 1, vocab): one step
//! # Ok(()) }
//! ```

pub mod adapter;
mod blocks;
mod decode_attention;
pub mod decoder;
pub mod discriminator;
mod error;
pub mod kv_cache;
pub mod model_dir;
pub mod score;
mod small_matmul;
mod training_ops;

pub use adapter::{Adapter, AdapterConfig};
pub use blocks::Kernels;
pub use decoder::{Decoder, DecoderConfig};
pub use discriminator::{
    Discriminator, DiscriminatorBatch, DiscriminatorConfig, DiscriminatorInput, DiscriminatorOutput,
};
pub use error::{Error, ModelConfigError, Result};
pub use kv_cache::KvCache;
pub use model_dir::{LoadOptions, Model, ModelCache, ModelConfig, ModelFiles, Precision};
pub use score::{mean_nll, NllScore};
