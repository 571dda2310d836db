//! A run's checkpoint → a model directory (`config.json`, `tokenizer.json`,
//! `decoder.safetensors`) that [`crate::models::Model::load`] and `cargo xtask score` read.
//!
//! Weights can be written in f16: the embedded model must stay small in the repository, and
//! the engine converts to the run-time precision when loading anyway.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::checkpoint;
use super::{Error, Result};
use crate::models::model_dir::{save_safetensors, CONFIG_FILE, DECODER_FILE, TOKENIZER_FILE};
use crate::models::{Decoder, ModelConfig};

/// The tokenizer every training run uses (MidiTok's reference REMI configuration).
const REFERENCE_TOKENIZER_JSON: &str = include_str!("../../data/miditok_remi.json");

/// What [`export`] wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub step: u64,
    pub tokens_seen: u64,
    pub parameters: usize,
    pub decoder_bytes: u64,
}

/// Writes the model directory `out` from the checkpoint at `checkpoint_path`, with the shapes
/// of `model` (adapter and discriminator sections are dropped: only a decoder is exported).
pub fn export(
    checkpoint_path: &Path,
    model: &ModelConfig,
    out: &Path,
    dtype: DType,
) -> Result<Exported> {
    let ck = checkpoint::load(checkpoint_path, &Device::Cpu)?;
    let cfg = ModelConfig {
        adapter: None,
        discriminator: None,
        ..model.clone()
    };
    // Building the decoder checks every name and shape, and yields the rotary buffer that
    // PyTorch's strict `load_state_dict` expects.
    let decoder = Decoder::new(
        cfg.num_tokens,
        &cfg.decoder,
        VarBuilder::from_tensors(ck.params.clone(), DType::F32, &Device::Cpu),
    )?;
    let mut tensors: HashMap<_, _> = ck
        .params
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_dtype(dtype)?)))
        .collect::<candle_core::Result<_>>()?;
    for (name, t) in decoder.buffers()? {
        tensors.insert(name, t);
    }
    let parameters = ck.params.values().map(|t| t.elem_count()).sum();
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    cfg.save(&out.join(CONFIG_FILE))?;
    let tok = out.join(TOKENIZER_FILE);
    std::fs::write(&tok, REFERENCE_TOKENIZER_JSON).map_err(Error::io(&tok))?;
    let dec = out.join(DECODER_FILE);
    save_safetensors(&dec, &tensors)?;
    let decoder_bytes = std::fs::metadata(&dec).map_err(Error::io(&dec))?.len();
    Ok(Exported {
        step: ck.state.step,
        tokens_seen: ck.state.tokens_seen,
        parameters,
        decoder_bytes,
    })
}
