//! The pretraining loop: next-token cross-entropy on bar-aligned windows, AdamW with warm-up
//! and cosine decay, global-norm clipping, gradient accumulation, periodic validation against
//! the bigram baseline, a JSON-lines metrics file and atomic checkpoints.
//!
//! Exact resumption rests on three things: every random draw of step `s` comes from an RNG
//! seeded by `(seed, s, micro-batch)` (so the step is the data position), initial weights come
//! from the run's seed (not candle's unseeded RNG), and checkpoints store f32 weights and both
//! AdamW moments bit for bit.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::bigram::Bigram;
use super::checkpoint::{self, State, CHECKPOINT_FILE};
use super::optim::{AdamW, AdamWConfig};
use super::schedule::Schedule;
use super::{Corpus, Error, Result};
use crate::hash::stable_hash;
use crate::models::{Decoder, ModelConfig};

/// File names inside a run folder.
pub const RUN_FILE: &str = "run.json";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const BASELINE_FILE: &str = "baseline.json";

/// Everything that defines a run; saved as `run.json` so `--resume` continues the same run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Name of the model preset (`tiny`, `small`, `seed`).
    pub preset: String,
    /// Shapes; `max_seq_len` is the training window.
    pub model: ModelConfig,
    /// The data folders.
    pub data: Vec<PathBuf>,
    /// Window length (input tokens per sequence).
    pub seq: usize,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimiser step (gradient accumulation).
    pub accum: usize,
    /// Optimiser steps in the whole run (sets the cosine schedule's length).
    pub steps: u64,
    pub schedule: Schedule,
    pub adamw: AdamWConfig,
    /// Global gradient-norm clip (0 disables).
    pub clip: f64,
    /// Validate every this many steps (and at the end).
    pub val_every: u64,
    /// At most this many validation windows (a fixed set).
    pub val_windows: usize,
    pub val_fraction: f64,
    /// Checkpoint every this many steps…
    pub checkpoint_every: u64,
    /// …or when this many minutes have passed since the last checkpoint.
    pub checkpoint_minutes: f64,
    pub seed: u64,
    /// Random transposition of training windows.
    pub transpose: bool,
    /// A model directory whose decoder weights start the run instead of seeded random ones
    /// (a longer context or another schedule for a trained model). Its decoder shape and
    /// vocabulary must equal [`Self::model`]'s; its context may differ (rotary positions
    /// carry no learnt length). The optimiser starts fresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
}

impl TrainConfig {
    /// Checks the settings that would otherwise fail deep inside the loop.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.seq < 2 || self.batch == 0 || self.accum == 0 || self.steps == 0 {
            return bad("seq must be at least 2; batch, accum and steps at least 1");
        }
        if !(self.schedule.peak > 0.0 && self.schedule.peak.is_finite()) {
            return bad("the learning rate must be positive");
        }
        if self.val_every == 0 || self.checkpoint_every == 0 {
            return bad("val_every and checkpoint_every must be at least 1");
        }
        self.model
            .validate()
            .map_err(|e| Error::Config(e.to_string()))
    }

    /// Reads `run.json` from a run folder.
    pub fn load(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(RUN_FILE);
        let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
        serde_json::from_str(&text).map_err(|e| Error::Format {
            path,
            reason: e.to_string(),
        })
    }

    /// Writes `run.json` into a run folder.
    pub fn save(&self, run_dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("config serialises") + "\n";
        super::dataset::write_atomic(&run_dir.join(RUN_FILE), text.as_bytes())
    }
}

/// Per-invocation controls that are not part of the run's definition.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Set from another thread (Ctrl-C) to checkpoint and return after the current step.
    pub stop: Option<Arc<AtomicBool>>,
    /// Checkpoint and return once this many steps are done (the run itself stays longer).
    pub stop_at: Option<u64>,
}

/// One optimiser step, for progress display.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: u64,
    pub steps: u64,
    pub lr: f64,
    pub loss: f64,
    pub grad_norm: f64,
    /// Target tokens in this step.
    pub tokens: u64,
    pub tokens_seen: u64,
    pub seconds: f64,
    pub tokens_per_s: f64,
}

/// One validation pass.
#[derive(Debug, Clone, Serialize)]
pub struct ValReport {
    pub step: u64,
    pub val_loss: f64,
    pub bigram_val_loss: f64,
    pub val_tokens: u64,
}

/// Receives progress (the command line draws bars from it).
pub trait Observer {
    fn step(&mut self, _report: &StepReport) {}
    fn val(&mut self, _report: &ValReport) {}
    fn checkpoint(&mut self, _step: u64, _path: &Path) {}
}

/// An observer that ignores everything.
impl Observer for () {}

/// A run in progress: model, optimiser, data and position.
pub struct Trainer {
    cfg: TrainConfig,
    out: PathBuf,
    corpus: Corpus,
    decoder: Decoder,
    opt: AdamW,
    state: State,
    val: Vec<u32>,
    bigram_val: f64,
    pad: u32,
    device: Device,
}

/// Sets every variable from the decoder of the model directory `dir`, after checking that
/// its shapes are the run's (only the context may differ).
fn init_from_model(vars: &[(String, Var)], model: &ModelConfig, dir: &Path) -> Result<()> {
    let (theirs, tensors) = decoder_weights(dir)?;
    if theirs.num_tokens != model.num_tokens || theirs.decoder != model.decoder {
        return Err(Error::Format {
            path: dir.join(crate::models::model_dir::CONFIG_FILE),
            reason: format!(
                "--init needs the run's decoder shape ({} tokens, {:?}); this model has {} tokens, {:?}",
                model.num_tokens, model.decoder, theirs.num_tokens, theirs.decoder
            ),
        });
    }
    for (name, var) in vars {
        let t = tensors.get(name).ok_or_else(|| Error::Format {
            path: dir.join(crate::models::model_dir::DECODER_FILE),
            reason: format!("no weights for `{name}`"),
        })?;
        var.set(&t.to_device(var.device())?)?;
    }
    Ok(())
}

/// A model directory's config and its decoder's weights in f32 on the CPU, checked against each
/// other: what `--init` starts from and what an export's comparison measures.
pub fn decoder_weights(dir: &Path) -> Result<(ModelConfig, HashMap<String, Tensor>)> {
    use crate::models::model_dir::{load_checked, CONFIG_FILE, DECODER_FILE};
    let model = ModelConfig::from_file(&dir.join(CONFIG_FILE))?;
    let specs = Decoder::tensor_specs(model.num_tokens, &model.decoder);
    let weights = load_checked(&dir.join(DECODER_FILE), &specs, DType::F32, &Device::Cpu)?;
    Ok((model, weights))
}

/// Seeded N(0, 0.02) weights for every matrix (the decoder's own init for them), so that two
/// runs with one seed start identically; gains and biases keep their constant init.
pub(crate) fn seeded_init(vars: &[(String, Var)], seed: u64) -> Result<()> {
    for (name, var) in vars {
        if var.rank() < 2 {
            continue;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ stable_hash(name));
        let n = var.elem_count();
        let mut values = Vec::with_capacity(n);
        while values.len() < n {
            // Box–Muller: two uniforms give two independent normals.
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random();
            let r = (-2.0 * u1.ln()).sqrt();
            let a = 2.0 * std::f64::consts::PI * u2;
            values.push((0.02 * r * a.cos()) as f32);
            values.push((0.02 * r * a.sin()) as f32);
        }
        values.truncate(n);
        let t = Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

/// Mean next-token NLL over non-padding targets of `windows` (`b` rows of `seq + 1` ids),
/// and the number of targets counted. `plain` selects the differentiable path.
pub(crate) fn window_loss(
    decoder: &Decoder,
    windows: &[u32],
    seq: usize,
    pad: u32,
    plain: bool,
) -> Result<(Tensor, u64)> {
    let b = windows.len() / (seq + 1);
    let dev = decoder.device();
    let all = Tensor::from_slice(windows, (b, seq + 1), dev)?;
    let inputs = all.narrow(1, 0, seq)?.contiguous()?;
    let targets = all.narrow(1, 1, seq)?.contiguous()?.reshape((b * seq, 1))?;
    let logits = if plain {
        decoder.forward_train(&inputs)?
    } else {
        decoder.forward(&inputs, None)?
    };
    let v = logits.dim(D::Minus1)?;
    let logp = candle_nn::ops::log_softmax(&logits.reshape((b * seq, v))?, D::Minus1)?;
    let picked = logp.gather(&targets, 1)?.squeeze(1)?;
    let mask: Vec<f32> = windows
        .chunks_exact(seq + 1)
        .flat_map(|w| w[1..].iter().map(|&t| f32::from(u8::from(t != pad))))
        .collect();
    let count = mask.iter().filter(|&&m| m > 0.0).count() as u64;
    let mask = Tensor::from_vec(mask, b * seq, dev)?.to_dtype(picked.dtype())?;
    let loss = ((picked * mask)?.sum_all()? * (-1.0 / count.max(1) as f64))?;
    Ok((loss, count))
}

impl Trainer {
    /// Starts a new run in `out` (which gets `run.json`), or resumes the checkpoint there.
    pub fn new(
        cfg: TrainConfig,
        out: &Path,
        corpus: Corpus,
        device: Device,
        resume: bool,
    ) -> Result<Self> {
        cfg.validate()?;
        std::fs::create_dir_all(out).map_err(Error::io(out))?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let decoder = Decoder::new(cfg.model.num_tokens, &cfg.model.decoder, vb)?;
        let vars: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        let mut opt = AdamW::new(vars, cfg.adamw)?;
        let mut state = State {
            step: 0,
            tokens_seen: 0,
            seed: cfg.seed,
            adam_t: 0,
            train_seconds: 0.0,
            val_loss: None,
        };
        let ck_path = out.join(CHECKPOINT_FILE);
        if resume {
            let ck = checkpoint::load(&ck_path, &device)?;
            let missing = |what: &str, name: &str| Error::Format {
                path: ck_path.clone(),
                reason: format!("no {what} for `{name}`"),
            };
            for (i, (name, var)) in opt.params.iter().enumerate() {
                let p = ck
                    .params
                    .get(name)
                    .ok_or_else(|| missing("weights", name))?;
                var.set(p)?;
                opt.m[i] = ck
                    .adam_m
                    .get(name)
                    .ok_or_else(|| missing("first moment", name))?
                    .clone();
                opt.v[i] = ck
                    .adam_v
                    .get(name)
                    .ok_or_else(|| missing("second moment", name))?
                    .clone();
            }
            opt.t = ck.state.adam_t;
            state = ck.state;
            truncate_metrics(&out.join(METRICS_FILE), state.step)?;
        } else if let Some(dir) = &cfg.init {
            init_from_model(&opt.params, &cfg.model, dir)?;
            let _ = std::fs::remove_file(out.join(METRICS_FILE));
        } else {
            seeded_init(&opt.params, cfg.seed)?;
            // A fresh run replaces any earlier metrics under the same name.
            let _ = std::fs::remove_file(out.join(METRICS_FILE));
        }
        cfg.save(out)?;
        let pad = crate::tokenizer::Tokenizer::reference().pad_id();
        let val = corpus.val_windows(cfg.seq, cfg.val_windows);
        let bigram = Bigram::count(cfg.model.num_tokens, corpus.train_docs());
        let (bigram_val, alpha) = bigram.mean_nll(&val, cfg.seq + 1, pad);
        let baseline = serde_json::json!({
            "bigram_val_loss": bigram_val,
            "alpha": alpha,
            "val_windows": val.len() / (cfg.seq + 1),
            "seq": cfg.seq,
        });
        super::dataset::write_atomic(
            &out.join(BASELINE_FILE),
            (baseline.to_string() + "\n").as_bytes(),
        )?;
        Ok(Self {
            cfg,
            out: out.to_path_buf(),
            corpus,
            decoder,
            opt,
            state,
            val,
            bigram_val,
            pad,
            device,
        })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The bigram baseline's validation loss (nats/token).
    pub fn bigram_val_loss(&self) -> f64 {
        self.bigram_val
    }

    /// The current weights by name.
    pub fn weights(&self) -> HashMap<String, Tensor> {
        self.opt
            .params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Mean validation NLL (nats/token) over the fixed validation windows, with the fast
    /// inference path (no gradient needed).
    pub fn validate(&self) -> Result<(f64, u64)> {
        mean_val_loss(
            &self.decoder,
            &self.val,
            self.cfg.seq,
            self.cfg.batch,
            self.pad,
        )
    }

    /// Writes the checkpoint now.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        self.state.adam_t = self.opt.t;
        let named = |ts: &[Tensor]| -> Vec<(String, Tensor)> {
            self.opt
                .params
                .iter()
                .zip(ts)
                .map(|((n, _), t)| (n.clone(), t.clone()))
                .collect()
        };
        let params: Vec<(String, Tensor)> = self
            .opt
            .params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        let path = self.out.join(CHECKPOINT_FILE);
        checkpoint::save(
            &path,
            &self.state,
            &params,
            &named(&self.opt.m),
            &named(&self.opt.v),
        )?;
        Ok(path)
    }

    fn append_metrics(&self, line: serde_json::Value) -> Result<()> {
        let path = self.out.join(METRICS_FILE);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        writeln!(f, "{line}").map_err(Error::io(&path))
    }

    /// One optimiser step (all micro-batches). Returns the report.
    fn train_step(&mut self) -> Result<StepReport> {
        let started = Instant::now();
        let step = self.state.step;
        let lr = self.cfg.schedule.lr(step);
        let mut sums: Vec<Option<Tensor>> = vec![None; self.opt.params.len()];
        let (mut loss_sum, mut tokens) = (0f64, 0u64);
        for micro in 0..self.cfg.accum {
            let mut rng = ChaCha8Rng::seed_from_u64(
                self.cfg.seed ^ stable_hash(format!("step {step} micro {micro}")),
            );
            let windows = self.corpus.sample_batch(
                &mut rng,
                self.cfg.batch,
                self.cfg.seq,
                self.cfg.transpose,
            );
            let (loss, count) = window_loss(&self.decoder, &windows, self.cfg.seq, self.pad, true)?;
            let grads = loss.backward()?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            tokens += count;
            for (i, (name, var)) in self.opt.params.iter().enumerate() {
                let g = grads
                    .get(var.as_tensor())
                    .ok_or_else(|| Error::MissingGradient { name: name.clone() })?;
                sums[i] = Some(match sums[i].take() {
                    Some(s) => (s + g)?,
                    None => g.clone(),
                });
            }
        }
        let scale = 1.0 / self.cfg.accum as f64;
        let grads = sums
            .into_iter()
            .map(|g| g.expect("every parameter has a gradient") * scale)
            .collect::<candle_core::Result<Vec<_>>>()?;
        let grad_norm = self.opt.step(&grads, lr, self.cfg.clip)?;
        let loss = loss_sum * scale;
        if !loss.is_finite() {
            return Err(Error::Diverged { step, loss });
        }
        let seconds = started.elapsed().as_secs_f64();
        self.state.step += 1;
        self.state.tokens_seen += tokens;
        self.state.train_seconds += seconds;
        Ok(StepReport {
            step: self.state.step,
            steps: self.cfg.steps,
            lr,
            loss,
            grad_norm,
            tokens,
            tokens_seen: self.state.tokens_seen,
            seconds,
            tokens_per_s: tokens as f64 / seconds.max(1e-9),
        })
    }

    /// Trains until the run's last step, a stop request or `stop_at`, then checkpoints.
    /// Returns the state at exit.
    pub fn run(&mut self, opts: &RunOptions, observer: &mut dyn Observer) -> Result<State> {
        let mut last_ck = Instant::now();
        let stop_requested = || opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
        let mut dirty = false;
        while self.state.step < self.cfg.steps
            && !stop_requested()
            && opts.stop_at.is_none_or(|s| self.state.step < s)
        {
            let report = self.train_step()?;
            dirty = true;
            let mut line = serde_json::to_value(&report).expect("report serialises");
            line["kind"] = "train".into();
            self.append_metrics(line)?;
            observer.step(&report);
            let step = self.state.step;
            if step.is_multiple_of(self.cfg.val_every) || step == self.cfg.steps {
                let (val_loss, val_tokens) = self.validate()?;
                self.state.val_loss = Some(val_loss);
                let r = ValReport {
                    step,
                    val_loss,
                    bigram_val_loss: self.bigram_val,
                    val_tokens,
                };
                let mut line = serde_json::to_value(&r).expect("report serialises");
                line["kind"] = "val".into();
                self.append_metrics(line)?;
                observer.val(&r);
            }
            if step.is_multiple_of(self.cfg.checkpoint_every)
                || last_ck.elapsed().as_secs_f64() >= 60.0 * self.cfg.checkpoint_minutes
            {
                let path = self.save_checkpoint()?;
                observer.checkpoint(step, &path);
                last_ck = Instant::now();
                dirty = false;
            }
        }
        if dirty || !self.out.join(CHECKPOINT_FILE).exists() {
            let path = self.save_checkpoint()?;
            observer.checkpoint(self.state.step, &path);
        }
        Ok(self.state.clone())
    }

    /// The device training runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// Mean NLL (nats/token) and target count over `windows` (rows of `seq + 1` ids), `batch`
/// rows at a time, on the inference path.
fn mean_val_loss(
    decoder: &Decoder,
    windows: &[u32],
    seq: usize,
    batch: usize,
    pad: u32,
) -> Result<(f64, u64)> {
    let (mut sum, mut n) = (0f64, 0u64);
    for chunk in windows.chunks((seq + 1) * batch) {
        let (loss, count) = window_loss(decoder, chunk, seq, pad, false)?;
        sum += loss.to_scalar::<f32>()? as f64 * count as f64;
        n += count;
    }
    Ok((sum / n.max(1) as f64, n))
}

/// Validation of saved weights as the run validates (same window placement, same path; at
/// least one window per validation file), and the bigram baseline on exactly those windows:
/// what a model card reports for an exported checkpoint.
/// Returns `(val_loss, bigram_val_loss, val_tokens)`; reads nothing of the run but `weights`.
pub fn validate_weights(
    cfg: &TrainConfig,
    corpus: &Corpus,
    weights: HashMap<String, Tensor>,
) -> Result<(f64, f64, u64)> {
    validate_model(
        &cfg.model,
        weights,
        corpus,
        cfg.seq,
        cfg.val_windows,
        cfg.batch,
    )
}

/// The mean validation loss of a decoder with shapes `model` and `weights` on validation
/// windows of `seq` tokens — at least `min_windows`, and at least one from every validation
/// file — with the bigram baseline's loss on the same windows and the target tokens counted.
/// Two models measured with the same `seq` and `min_windows` see exactly the same windows, which
/// is what makes a model card's comparison with the model it replaces fair.
pub fn validate_model(
    model: &ModelConfig,
    weights: HashMap<String, Tensor>,
    corpus: &Corpus,
    seq: usize,
    min_windows: usize,
    batch: usize,
) -> Result<(f64, f64, u64)> {
    let dev = Device::Cpu;
    let decoder = Decoder::new(
        model.num_tokens,
        &model.decoder,
        VarBuilder::from_tensors(weights, DType::F32, &dev),
    )?;
    let pad = crate::tokenizer::Tokenizer::reference().pad_id();
    // At least one window from every validation file: a card's number is measured once, so it
    // can afford more windows than the run's periodic validation.
    let windows = min_windows.max(corpus.split_sizes().1);
    let val = corpus.val_windows(seq, windows);
    let (loss, n) = mean_val_loss(&decoder, &val, seq, batch.max(1), pad)?;
    let bigram = Bigram::count(model.num_tokens, corpus.train_docs());
    let (bigram_loss, _) = bigram.mean_nll(&val, seq + 1, pad);
    Ok((loss, bigram_loss, n))
}

/// Drops metrics lines past `step` (written after the checkpoint a resumed run restarts from),
/// so the metrics file never holds two lines for one step. SCST runs share it.
pub(crate) fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    super::dataset::write_atomic(path, kept.as_bytes())
}
