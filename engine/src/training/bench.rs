//! Training throughput on synthetic data: the same step as [`super::pretrain`] (plain-path
//! forward, cross-entropy, backward, AdamW) on random ids, timed per step. What
//! `cargo xtask bench train` reports and `scripts/bench_train_pytorch.py` mirrors.

use std::time::Instant;

use candle_core::{DType, Device, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::optim::{AdamW, AdamWConfig};
use super::pretrain::window_loss;
use super::Result;
use crate::models::{Decoder, ModelConfig};

/// Seconds per optimiser step for `steps` steps (after one untimed warm-up step) of a decoder
/// shaped by `model` on `batch` random windows of `seq` tokens.
pub fn step_seconds(
    model: &ModelConfig,
    batch: usize,
    seq: usize,
    steps: usize,
    device: &Device,
) -> Result<Vec<f64>> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let decoder = Decoder::new(model.num_tokens, &model.decoder, vb)?;
    let vars: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let mut opt = AdamW::new(vars, AdamWConfig::default())?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    // Never the padding id (0), so every position counts.
    let vocab = model.num_tokens as u32;
    let mut times = Vec::with_capacity(steps);
    for i in 0..=steps {
        let ids: Vec<u32> = (0..batch * (seq + 1))
            .map(|_| rng.random_range(1..vocab))
            .collect();
        let start = Instant::now();
        let (loss, _) = window_loss(&decoder, &ids, seq, 0, true)?;
        let grads = loss.backward()?;
        let g = opt
            .params()
            .iter()
            .map(|(_, v)| grads.get(v.as_tensor()).expect("gradient").clone())
            .collect::<Vec<_>>();
        opt.step(&g, 1e-4, 1.0)?;
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}
