//! Pretraining the decoder on a folder of MIDI files.
//!
//! The pieces, one concept each:
//! - [`dataset`]: tokenizing folders in parallel into a memory-mapped id cache, the file-level
//!   train/validation split, bar-aligned windows and transposition.
//! - [`schedule`]: the learning rate over steps (linear warm-up, cosine decay).
//! - [`optim`]: AdamW whose moments are plain tensors, so that a checkpoint can hold them.
//! - [`checkpoint`]: one safetensors file with weights, moments and the loop's state, written
//!   atomically.
//! - [`pretrain`]: the loop (loss, accumulation, clipping, validation, metrics, checkpoints).
//! - [`bigram`]: the baseline every run's validation loss is compared with.
//! - [`bench`]: training throughput on synthetic data.
//! - [`export`]: a checkpoint → a model directory that [`crate::models::Model::load`] reads.
//! - [`scst`]: training a style adapter by reinforcement against a discriminator (decoder frozen).
//!
//! Training only ever uses the decoder's differentiable kernels
//! ([`crate::models::Kernels::Training`]): candle's fused kernels silently produce no gradient.

pub mod bench;
pub mod bigram;
pub mod checkpoint;
pub mod dataset;
mod error;
pub mod export;
pub mod optim;
pub mod pretrain;
pub mod schedule;
pub mod scst;

pub use dataset::{Corpus, CorpusOptions, Skipped};
pub use error::{Error, Result};
pub use pretrain::{Observer, RunOptions, StepReport, TrainConfig, Trainer, ValReport};
