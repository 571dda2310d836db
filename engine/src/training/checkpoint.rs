//! Checkpoints: one safetensors file holding the weights (`param.NAME`), AdamW's moments
//! (`adam_m.NAME`, `adam_v.NAME`) and, in the header's metadata, the loop's [`State`].
//!
//! The file is written to a temporary name, synced, then renamed over the previous one, so a
//! crash mid-write leaves the last good checkpoint intact. Tensors are stored in their own
//! dtype (f32), bit for bit, which is what makes `--resume` exact.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{Error, Result};

/// File name of a run's checkpoint.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// The training loop's position. Batches are drawn from an RNG seeded by `(seed, step)`, so
/// `step` is also the data position and the RNG state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Optimiser steps completed.
    pub step: u64,
    /// Training tokens (non-padding targets) seen so far.
    pub tokens_seen: u64,
    /// The run's seed.
    pub seed: u64,
    /// AdamW's update count (bias correction).
    pub adam_t: u64,
    /// Wall-clock seconds of training so far, over all sessions.
    pub train_seconds: f64,
    /// Latest validation loss (nats/token), if any.
    pub val_loss: Option<f64>,
}

/// What a checkpoint file holds.
#[derive(Debug)]
pub struct Checkpoint {
    pub state: State,
    /// Weights by parameter name (the PyTorch `state_dict` names).
    pub params: HashMap<String, Tensor>,
    pub adam_m: HashMap<String, Tensor>,
    pub adam_v: HashMap<String, Tensor>,
}

/// Writes a checkpoint atomically. The three slices are `(name, tensor)` pairs.
pub fn save(
    path: &Path,
    state: &State,
    params: &[(String, Tensor)],
    adam_m: &[(String, Tensor)],
    adam_v: &[(String, Tensor)],
) -> Result<()> {
    let mut all: Vec<(String, Tensor)> = Vec::new();
    for (prefix, set) in [("param", params), ("adam_m", adam_m), ("adam_v", adam_v)] {
        for (name, t) in set {
            all.push((format!("{prefix}.{name}"), t.contiguous()?));
        }
    }
    let meta = HashMap::from([(
        "state".to_string(),
        serde_json::to_string(state).expect("state serialises"),
    )]);
    let bytes = safetensors::serialize(all, Some(meta)).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    super::dataset::write_atomic(path, &bytes)
}

/// Reads a checkpoint onto `device`.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    let bad = |reason: String| Error::Format {
        path: path.to_path_buf(),
        reason,
    };
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let state_json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("state"))
        .ok_or_else(|| bad("no training state in the header: not a checkpoint".into()))?;
    let state: State = serde_json::from_str(state_json).map_err(|e| bad(e.to_string()))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)?;
    let mut ck = Checkpoint {
        state,
        params: HashMap::new(),
        adam_m: HashMap::new(),
        adam_v: HashMap::new(),
    };
    for (name, t) in tensors {
        let (prefix, rest) = name
            .split_once('.')
            .ok_or_else(|| bad(format!("unexpected tensor `{name}`")))?;
        let set = match prefix {
            "param" => &mut ck.params,
            "adam_m" => &mut ck.adam_m,
            "adam_v" => &mut ck.adam_v,
            _ => return Err(bad(format!("unexpected tensor `{name}`"))),
        };
        set.insert(rest.to_string(), t);
    }
    Ok(ck)
}
