//! The SCST loop itself: rollouts, the discriminator and adapter steps, phases, guards,
//! metrics and checkpoints (see the module docs of [`super`]).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::guards::{copy_share, distinct_4gram_ratio, GuardTrip};
use super::pairs::{Pair, PairSet};
use super::phase::Phase;
use super::rollout::{self, Sampling};
use super::{Baseline, Control, ScstConfig};
use crate::generation::Generator;
use crate::hash::stable_hash;
use crate::models::{Adapter, Discriminator, DiscriminatorOutput, Kernels, Model};
use crate::tokenizer::TokenId;
use crate::training::optim::{AdamW, AdamWConfig};
use crate::training::pretrain::truncate_metrics;
use crate::training::pretrain::{seeded_init, RunOptions};
use crate::training::{Error, Result};

/// File names inside a run folder.
pub const RUN_FILE: &str = "run.json";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// The discriminator file that goes with an adapter file: `discriminator.safetensors` next to
/// an `adapter.safetensors` (a model directory's own pair), `NAME.discriminator.safetensors`
/// next to any other `NAME.safetensors`.
pub fn companion_discriminator(adapter_file: &Path) -> PathBuf {
    let name = adapter_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name == crate::models::model_dir::ADAPTER_FILE {
        return adapter_file.with_file_name(crate::models::model_dir::DISCRIMINATOR_FILE);
    }
    let stem = adapter_file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "adapter".into());
    adapter_file.with_file_name(format!("{stem}.discriminator.safetensors"))
}

/// An f64 stored by its bits: serde_json's float text does not promise to read back every
/// value bit for bit, and these values steer decisions (phase switches, guards), so an exact
/// resume needs them exact.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Exact(f64);

impl Serialize for Exact {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_u64(self.0.to_bits())
    }
}

impl<'de> Deserialize<'de> for Exact {
    fn deserialize<De: serde::Deserializer<'de>>(d: De) -> std::result::Result<Self, De::Error> {
        u64::deserialize(d).map(|b| Exact(f64::from_bits(b)))
    }
}

/// An older generated continuation, kept for replay: the training pair whose prime it
/// continues, and its ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Fake {
    pair: usize,
    ids: Vec<TokenId>,
}

/// The loop's position, saved in the checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    step: u64,
    phase: Phase,
    accuracy: Option<Exact>,
    replay: Vec<Fake>,
    /// The validation NLL before training (decoder + fresh or initial adapter).
    nll_start: Option<Exact>,
    copy_limit: Option<Exact>,
    real_copy: Option<f64>,
    best_step: Option<u64>,
    tripped: Option<GuardTrip>,
    adapter_t: u64,
    discriminator_t: u64,
    train_seconds: f64,
    tokens: u64,
}

/// One step, for progress and `metrics.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: u64,
    pub steps: u64,
    /// The phase the step trained in.
    pub phase: Phase,
    /// Mean discriminator P(real) of the samples, and of their baselines (adapter steps only).
    pub reward_sample: Option<f64>,
    pub reward_baseline: Option<f64>,
    /// Mean per-token log-ratio adapter/decoder of the samples (an estimate of the KL).
    pub kl: Option<f64>,
    pub feature_matching: Option<f64>,
    pub discriminator_loss: Option<f64>,
    /// Held-out accuracy of the discriminator after the step, raw and smoothed.
    pub accuracy: f64,
    pub accuracy_smoothed: f64,
    /// Tokens generated in the step.
    pub tokens: u64,
    pub seconds: f64,
    /// Where the step's time went: sampling the rollouts, the discriminator step, the adapter
    /// step (rewards, teacher forcing, backward), the held-out accuracy (its own samples).
    pub rollout_seconds: f64,
    pub discriminator_seconds: f64,
    pub adapter_seconds: f64,
    pub heldout_seconds: f64,
    pub tokens_per_s: f64,
}

/// One evaluation of the guards.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub step: u64,
    /// Mean NLL (nats/token) of the true validation continuations under decoder + adapter.
    pub val_nll: f64,
    pub nll_limit: f64,
    /// Share of generated bars copied from the prime, its limit, and the real music's share.
    pub copy_share: f64,
    pub copy_limit: f64,
    pub real_copy_share: f64,
    pub distinct_4: f64,
    /// Mean discriminator P(real) of the generated and of the true validation continuations.
    pub p_real_generated: f64,
    pub p_real_true: f64,
    /// The guard that tripped, if any; otherwise the adapter file now holds this step's weights.
    pub tripped: Option<GuardTrip>,
}

/// A phase switch.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseSwitch {
    pub step: u64,
    pub from: Phase,
    pub to: Phase,
    pub accuracy: f64,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEnd {
    pub step: u64,
    /// The step whose adapter the adapter file holds.
    pub best_step: Option<u64>,
    pub tripped: Option<GuardTrip>,
    pub finished: bool,
}

/// Receives progress (the command line draws it).
pub trait Observer {
    fn step(&mut self, _report: &StepReport) {}
    fn eval(&mut self, _report: &EvalReport) {}
    fn phase(&mut self, _switch: &PhaseSwitch) {}
    fn checkpoint(&mut self, _step: u64, _path: &Path) {}
}

impl Observer for () {}

/// One prime's rollouts.
pub(super) struct Rollout {
    pub(super) pair: usize,
    /// What the generator was fed (BOS … the continuation's `Bar TimeSig`).
    pub(super) prefix: Vec<TokenId>,
    pub(super) samples: Vec<Vec<TokenId>>,
    pub(super) greedy: Option<Vec<TokenId>>,
}

/// An SCST run: frozen decoder, trainable adapter and discriminator, data and position.
pub struct Scst {
    cfg: ScstConfig,
    run_dir: PathBuf,
    adapter_file: PathBuf,
    /// The frozen decoder with the trainable adapter (its tensors are the optimiser's
    /// variables, so generation always sees the current weights).
    model: Model,
    adapter_opt: AdamW,
    discriminator: Discriminator,
    discriminator_opt: AdamW,
    pairs: PairSet,
    heldout: Vec<usize>,
    /// The held-out fakes and the adapter update they were sampled after: while the adapter
    /// has not changed (critic warm-up) they are the same samples, so they are drawn once.
    heldout_fakes: Option<(u64, Vec<Option<Vec<TokenId>>>)>,
    val: Vec<usize>,
    state: State,
    sampling: Sampling,
}

pub(super) fn vars_of(varmap: &VarMap) -> Vec<(String, Var)> {
    varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

/// A fresh discriminator's weights: matrices N(0, 0.02) as in pretraining, and the fusion of
/// the three heads set to their plain sum. Drawn at 0.02 like the rest, the fusion is a product
/// of two near-zero factors (fusion weight × head weight): each one's gradient is scaled by the
/// other, so both crawl until one has grown. On real music at the default learning rate that
/// stall outlasted the critic warm-up (held-out accuracy 0.50, loss at the constant predictor's
/// 0.688 for 56 steps); on a one-token difference the loss after 30 steps is 0.61 against 0.16
/// with the sum (`a_fresh_discriminator_learns_from_its_first_steps`).
pub(super) fn init_discriminator(vars: &[(String, Var)], seed: u64) -> Result<()> {
    seeded_init(vars, seed ^ stable_hash("discriminator"))?;
    let (_, fuse) = vars
        .iter()
        .find(|(n, _)| n == "fuse.weight")
        .expect("the discriminator has a fusion layer");
    fuse.set(&Tensor::ones(fuse.shape(), fuse.dtype(), fuse.device())?)?;
    Ok(())
}

/// Binary cross-entropy with logits, `targets` the soft labels: the stable form
/// `max(x, 0) − x·y + log(1 + e^−|x|)`, averaged.
pub(super) fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let softplus = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    ((logits.relu()? - (logits * targets)?)? + softplus)?.mean_all()
}

/// The mean bar embedding over all real bars of a batch, `(dim,)`.
fn mean_bar_embedding(out: &DiscriminatorOutput) -> candle_core::Result<Tensor> {
    let m = out.bar_mask.unsqueeze(D::Minus1)?;
    let sum = out.bar_embeddings.broadcast_mul(&m)?.sum(1)?.sum(0)?;
    sum / out.bar_mask.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64
}

impl Scst {
    /// Starts a run in `run_dir` (which gets `run.json`, `metrics.jsonl` and the checkpoint),
    /// or resumes the checkpoint there. `model` holds the frozen decoder; when it also holds an
    /// adapter file's weights (`init`), training starts from those instead of a fresh
    /// pass-through adapter. The adapter that passes the guards is written to `adapter_file`,
    /// its discriminator next to it ([`companion_discriminator`]).
    pub fn new(
        cfg: ScstConfig,
        model: &Model,
        init: Option<&Path>,
        pairs: PairSet,
        run_dir: &Path,
        adapter_file: &Path,
        resume: bool,
    ) -> Result<Self> {
        cfg.validate().map_err(Error::Config)?;
        if model.config.decoder != cfg.decoder || model.config.num_tokens != cfg.num_tokens {
            return Err(Error::Format {
                path: run_dir.join(RUN_FILE),
                reason: format!(
                    "the run is for a decoder {:?} over {} tokens, but {} holds {:?} over {}",
                    cfg.decoder,
                    cfg.num_tokens,
                    model.dir.display(),
                    model.config.decoder,
                    model.config.num_tokens
                ),
            });
        }
        // Mismatched pairs (all the critic pre-training judges) need two pairs to mismatch.
        let needed = if cfg.critic_pretrain > 0 {
            2
        } else {
            cfg.batch.clamp(1, 2)
        };
        if pairs.train.len() < needed || pairs.val.is_empty() {
            return Err(Error::TooFewPairs {
                dirs: cfg.data.clone(),
                train: pairs.train.len(),
                val: pairs.val.len(),
                needed,
                prime_bars: cfg.prime_bars,
                bars: cfg.bars,
            });
        }
        std::fs::create_dir_all(run_dir).map_err(Error::io(run_dir))?;
        let device = model.decoder.device().clone();

        let adapter_map = VarMap::new();
        let adapter = match init {
            Some(file) => {
                let specs = Adapter::tensor_specs(&cfg.adapter, cfg.decoder.dim, cfg.num_tokens);
                let tensors =
                    crate::models::model_dir::load_checked(file, &specs, DType::F32, &device)?;
                {
                    let mut data = adapter_map.data().lock().expect("varmap lock");
                    for (name, t) in tensors {
                        data.insert(name, Var::from_tensor(&t)?);
                    }
                }
                let vb = VarBuilder::from_varmap(&adapter_map, DType::F32, &device);
                Adapter::new(&cfg.adapter, cfg.decoder.dim, cfg.num_tokens, vb)?
            }
            None => {
                let a = Adapter::fresh(
                    &cfg.adapter,
                    &model.decoder,
                    &adapter_map,
                    DType::F32,
                    &device,
                )?;
                // Seeded weights for the randomly initialised matrices (candle's own RNG is not
                // seeded); the zero projections and the copied head keep the pass-through.
                let random: Vec<(String, Var)> = vars_of(&adapter_map)
                    .into_iter()
                    .filter(|(n, v)| {
                        n != "to_logits.weight"
                            && v.as_tensor()
                                .abs()
                                .and_then(|t| t.sum_all())
                                .and_then(|t| t.to_dtype(DType::F32))
                                .and_then(|t| t.to_scalar::<f32>())
                                .is_ok_and(|s| s > 0.0)
                    })
                    .collect();
                seeded_init(&random, cfg.seed ^ stable_hash("adapter"))?;
                a
            }
        };
        let disc_map = VarMap::new();
        let discriminator = Discriminator::with_decoder(
            &model.decoder,
            &cfg.discriminator,
            VarBuilder::from_varmap(&disc_map, DType::F32, &device),
        )?;
        init_discriminator(&vars_of(&disc_map), cfg.seed)?;
        let adamw = AdamWConfig {
            weight_decay: 0.0,
            beta2: 0.99,
            ..AdamWConfig::default()
        };
        let mut adapter_opt = AdamW::new(vars_of(&adapter_map), adamw)?;
        let mut discriminator_opt = AdamW::new(vars_of(&disc_map), adamw)?;

        let mut state = State {
            step: 0,
            phase: if cfg.control == Control::FrozenDiscriminator {
                Phase::Focus
            } else {
                Phase::Warmup
            },
            accuracy: None,
            replay: Vec::new(),
            nll_start: None,
            copy_limit: None,
            real_copy: None,
            best_step: None,
            tripped: None,
            adapter_t: 0,
            discriminator_t: 0,
            train_seconds: 0.0,
            tokens: 0,
        };
        let ck_path = run_dir.join(CHECKPOINT_FILE);
        if resume {
            state = load_checkpoint(&ck_path, &mut adapter_opt, &mut discriminator_opt, &device)?;
            if state.replay.iter().any(|f| f.pair >= pairs.train.len()) {
                return Err(Error::Format {
                    path: ck_path,
                    reason: "its replay buffer refers to pairs the data no longer has: the data folders changed since the run started".into(),
                });
            }
            truncate_metrics(&run_dir.join(METRICS_FILE), state.step)?;
        } else {
            let _ = std::fs::remove_file(run_dir.join(METRICS_FILE));
        }
        let text = serde_json::to_string_pretty(&cfg).expect("config serialises") + "\n";
        crate::training::dataset::write_atomic(&run_dir.join(RUN_FILE), text.as_bytes())?;

        let model = Model {
            adapter: Some(adapter),
            discriminator: None,
            ..model.clone()
        };
        let spread = |n: usize, m: usize| -> Vec<usize> {
            (0..n.min(m)).map(|k| k * m / n.min(m)).collect()
        };
        // Held-out pairs for the accuracy and validation pairs for the guards: both from the
        // validation files, interleaved so they differ when there are enough.
        let m = pairs.val.len();
        let val = spread(cfg.val_pairs, m);
        let heldout: Vec<usize> = spread(cfg.heldout, m)
            .into_iter()
            .map(|k| (k + m / (2 * cfg.heldout.max(1)).max(1)) % m)
            .collect();
        let sampling = Sampling {
            bars: cfg.bars,
            temperature: cfg.temperature,
            top_p: cfg.top_p,
        };
        Ok(Self {
            cfg,
            run_dir: run_dir.to_path_buf(),
            adapter_file: adapter_file.to_path_buf(),
            model,
            adapter_opt,
            discriminator,
            discriminator_opt,
            pairs,
            heldout,
            heldout_fakes: None,
            val,
            state,
            sampling,
        })
    }

    pub fn config(&self) -> &ScstConfig {
        &self.cfg
    }

    /// Steps done.
    pub fn step(&self) -> u64 {
        self.state.step
    }

    pub fn phase(&self) -> Phase {
        self.state.phase
    }

    /// The frozen decoder with the adapter as it is now (for generation).
    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn discriminator(&self) -> &Discriminator {
        &self.discriminator
    }

    pub fn pairs(&self) -> &PairSet {
        &self.pairs
    }

    /// The adapter's current weights by name.
    pub fn adapter_weights(&self) -> HashMap<String, Tensor> {
        self.adapter_opt
            .params()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    pub(super) fn adapter(&self) -> &Adapter {
        self.model
            .adapter
            .as_ref()
            .expect("the run's model has its adapter")
    }

    /// `k` continuations of `pair`'s prime by the current adapter, exactly as a training step
    /// samples them (temperature 0 with `greedy`).
    pub fn rollout(
        &self,
        pair: &Pair,
        k: usize,
        seed: u64,
        greedy: bool,
    ) -> Result<Vec<Vec<TokenId>>> {
        let gen = self.generator()?;
        let prime = rollout::prime(&gen, pair, &self.sampling)?;
        rollout::sample(&gen, &prime, &self.sampling, k, seed, greedy)
    }

    pub(super) fn generator(&self) -> Result<Generator<'_>> {
        Generator::new(&self.model).map_err(|e| Error::Generation(e.to_string()))
    }

    fn rng(&self, step: u64, what: &str) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.cfg.seed ^ stable_hash(format!("scst {what} {step}")))
    }

    /// Discriminator P(real) and logits (no graph) of `(prime, continuation)` pairs.
    fn judge(&self, primes: &[&[TokenId]], conts: &[&[TokenId]]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(primes.len());
        let dev = self.model.decoder.device();
        for (p, c) in primes.chunks(64).zip(conts.chunks(64)) {
            let batch = self.discriminator.batch(p, c, dev)?;
            let o = self.discriminator.forward(&batch, Kernels::Inference)?;
            out.extend(o.p_real()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// One step: rollouts, then the discriminator and/or adapter step of the phase, then the
    /// held-out accuracy and the phase for the next step.
    fn train_step(&mut self) -> Result<(StepReport, Option<PhaseSwitch>)> {
        let started = Instant::now();
        let step = self.state.step;
        let phase = self.state.phase;
        let mut rng = self.rng(step, "step");
        let greedy = self.cfg.baseline == Baseline::Greedy && phase.trains_adapter();
        let samples = samples_per_prime(phase, self.cfg.samples);
        // The first steps of the warm-up may judge mismatched pairs alone: no rollouts.
        let generate = phase != Phase::Warmup || step >= self.cfg.critic_pretrain;
        let mut rolls = Vec::with_capacity(self.cfg.batch);
        {
            let gen = self.generator()?;
            for _ in 0..self.cfg.batch {
                let pair = rng.random_range(0..self.pairs.train.len());
                let seed: u64 = rng.random();
                if !generate {
                    rolls.push(Rollout {
                        pair,
                        prefix: Vec::new(),
                        samples: Vec::new(),
                        greedy: None,
                    });
                    continue;
                }
                let prime = match rollout::prime(&gen, &self.pairs.train[pair], &self.sampling) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!("step {step}: training pair {pair} skipped: {e}");
                        continue;
                    }
                };
                let samples = rollout::sample(&gen, &prime, &self.sampling, samples, seed, false)?;
                let greedy = if greedy {
                    rollout::sample(&gen, &prime, &self.sampling, 1, seed, true)?.pop()
                } else {
                    None
                };
                rolls.push(Rollout {
                    pair,
                    prefix: prime.ids().to_vec(),
                    samples,
                    greedy,
                });
            }
        }
        if rolls.is_empty() {
            return Err(Error::Generation(format!(
                "step {step}: none of the batch's primes could be continued"
            )));
        }
        let tokens: u64 = rolls
            .iter()
            .flat_map(|r| r.samples.iter().chain(&r.greedy))
            .map(|s| s.len() as u64)
            .sum();
        let rollout_seconds = started.elapsed().as_secs_f64();
        let clock = Instant::now();

        let mut discriminator_loss = None;
        if phase.trains_discriminator() && self.cfg.control != Control::FrozenDiscriminator {
            discriminator_loss = Some(self.discriminator_step(&rolls, &mut rng)?);
        }
        let discriminator_seconds = clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let (mut reward_sample, mut reward_baseline, mut kl, mut fm) = (None, None, None, None);
        if phase.trains_adapter() {
            let r = self.adapter_step(&rolls, &mut rng)?;
            reward_sample = Some(r.0);
            reward_baseline = Some(r.1);
            kl = Some(r.2);
            fm = r.3;
        }

        let adapter_seconds = clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let accuracy = self.heldout_accuracy()?;
        let heldout_seconds = clock.elapsed().as_secs_f64();
        let smoothed = self
            .cfg
            .phases
            .smooth(self.state.accuracy.map(|a| a.0), accuracy);
        self.state.accuracy = Some(Exact(smoothed));
        self.state.step += 1;
        let next = if self.cfg.control == Control::FrozenDiscriminator {
            Phase::Focus
        } else {
            self.cfg.phases.next(phase, self.state.step, smoothed)
        };
        self.state.phase = next;
        let switch = (next != phase).then_some(PhaseSwitch {
            step: self.state.step,
            from: phase,
            to: next,
            accuracy: smoothed,
        });
        let seconds = started.elapsed().as_secs_f64();
        self.state.train_seconds += seconds;
        self.state.tokens += tokens;
        Ok((
            StepReport {
                step: self.state.step,
                steps: self.cfg.steps,
                phase,
                reward_sample,
                reward_baseline,
                kl,
                feature_matching: fm,
                discriminator_loss,
                accuracy,
                accuracy_smoothed: smoothed,
                tokens,
                seconds,
                rollout_seconds,
                discriminator_seconds,
                adapter_seconds,
                heldout_seconds,
                tokens_per_s: tokens as f64 / seconds.max(1e-9),
            },
            switch,
        ))
    }

    /// Real continuations against this step's first sample of each prime (a share of the fakes
    /// replayed from older steps), and the mismatched pairs with their own real rows. Returns
    /// the loss.
    fn discriminator_step(&mut self, rolls: &[Rollout], rng: &mut ChaCha8Rng) -> Result<f64> {
        let mut fakes: Vec<Fake> = rolls
            .iter()
            .filter_map(|r| {
                r.samples.first().map(|ids| Fake {
                    pair: r.pair,
                    ids: ids.clone(),
                })
            })
            .collect();
        let fresh = fakes.clone();
        if !self.state.replay.is_empty() {
            let n = fakes.len();
            let replayed = ((self.cfg.replay * n as f64).round() as usize).min(n);
            for j in 0..replayed {
                let k = rng.random_range(0..self.state.replay.len());
                fakes[n - 1 - j] = self.state.replay[k].clone();
            }
        }
        let train = &self.pairs.train;
        let mismatched = mismatched_pairs(
            rolls.iter().map(|r| r.pair),
            self.cfg.mismatched,
            train.len(),
            rng,
        );
        let real = |p: usize| -> Judged { (&train[p].prime, &train[p].continuation, true) };
        // One real continuation per fresh fake (none during the critic pre-training, which
        // judges only the mismatched pairs and their own real rows).
        let mut rows: Vec<Judged> = fresh.iter().map(|f| real(f.pair)).collect();
        rows.extend(
            fakes
                .iter()
                .map(|f| -> Judged { (&train[f.pair].prime, &f.ids, false) }),
        );
        for &(own, other) in &mismatched {
            rows.push(real(other));
            rows.push((&train[other].prime, &train[own].continuation, false));
        }
        let primes: Vec<&[TokenId]> = rows.iter().map(|r| r.0).collect();
        let conts: Vec<&[TokenId]> = rows.iter().map(|r| r.1).collect();
        let dev = self.model.decoder.device().clone();
        let batch = self.discriminator.batch(&primes, &conts, &dev)?;
        let out = self.discriminator.forward(&batch, Kernels::Training)?;
        let real_label = (1.0 - self.cfg.label_smoothing) as f32;
        let labels: Vec<f32> = rows
            .iter()
            .map(|r| if r.2 { real_label } else { 0.0 })
            .collect();
        let labels = Tensor::from_vec(labels, rows.len(), &dev)?;
        let loss = bce_with_logits(&out.logit, &labels)?;
        let value = loss.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            return Err(Error::Diverged {
                step: self.state.step,
                loss: value,
            });
        }
        let grads = loss.backward()?;
        let grads = collect_grads(&self.discriminator_opt, &grads)?;
        self.discriminator_opt
            .step(&grads, self.cfg.discriminator_lr, self.cfg.clip)?;
        for f in fresh {
            if self.state.replay.len() < self.cfg.replay_capacity {
                self.state.replay.push(f);
            } else if self.cfg.replay_capacity > 0 {
                let k = rng.random_range(0..self.cfg.replay_capacity);
                self.state.replay[k] = f;
            }
        }
        Ok(value)
    }

    /// REINFORCE with the KL-folded, baselined, whitened reward (and feature matching).
    /// Returns (mean sample P(real), mean baseline P(real), mean per-token log-ratio, FM term).
    fn adapter_step(
        &mut self,
        rolls: &[Rollout],
        rng: &mut ChaCha8Rng,
    ) -> Result<(f64, f64, f64, Option<f64>)> {
        let train = &self.pairs.train;
        let k = self.cfg.samples;
        // Rows: every sample, then the greedy continuations.
        let mut seqs: Vec<(&[TokenId], &[TokenId])> = Vec::new();
        let mut primes: Vec<&[TokenId]> = Vec::new();
        let mut conts: Vec<&[TokenId]> = Vec::new();
        for r in rolls {
            for s in &r.samples {
                seqs.push((&r.prefix, s));
                primes.push(&train[r.pair].prime);
                conts.push(s);
            }
        }
        let n_samples = seqs.len();
        for r in rolls {
            if let Some(g) = &r.greedy {
                seqs.push((&r.prefix, g));
                primes.push(&train[r.pair].prime);
                conts.push(g);
            }
        }
        let mut p_real = self.judge(&primes, &conts)?;
        if self.cfg.control == Control::ShuffledRewards {
            p_real[..n_samples].shuffle(rng);
        }
        let pad = self.model.tokenizer.pad_id();
        let want_logits = self.cfg.feature_matching > 0.0;
        let scored = rollout::score(
            &self.model.decoder,
            self.adapter(),
            &seqs,
            pad,
            self.model.tokenizer.bar_id(),
            self.model.config.max_seq_len,
            true,
            want_logits,
        )?;
        let log_ratio: Vec<f64> = scored
            .adapter_values
            .iter()
            .zip(&scored.decoder_values)
            .map(|(a, d)| a.iter().zip(d).map(|(a, d)| f64::from(a - d)).sum())
            .collect();
        let reward: Vec<f64> = p_real
            .iter()
            .zip(&log_ratio)
            .map(|(&p, &lr)| f64::from(p) - self.cfg.kl * lr)
            .collect();
        let baseline: Vec<f64> = (0..n_samples)
            .map(|i| {
                let roll = i / k;
                match self.cfg.baseline {
                    Baseline::Greedy => reward[n_samples + roll],
                    Baseline::Others => {
                        let group = &reward[roll * k..(roll + 1) * k];
                        (group.iter().sum::<f64>() - reward[i]) / (k - 1) as f64
                    }
                }
            })
            .collect();
        let mut adv: Vec<f64> = (0..n_samples).map(|i| reward[i] - baseline[i]).collect();
        let mean = adv.iter().sum::<f64>() / n_samples as f64;
        let std = (adv.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n_samples as f64).sqrt();
        for a in &mut adv {
            *a = if std > 1e-8 { (*a - mean) / std } else { 0.0 };
        }
        let dev = self.model.decoder.device().clone();
        let (rows, len) = scored.logp.dims2()?;
        let tokens: usize = conts[..n_samples].iter().map(|c| c.len()).sum();
        let mut w = vec![0f32; rows * len];
        let mask: Vec<Vec<f32>> = scored.mask.to_vec2()?;
        for i in 0..n_samples {
            for t in 0..len {
                w[i * len + t] = (adv[i] / tokens.max(1) as f64) as f32 * mask[i][t];
            }
        }
        let w = Tensor::from_vec(w, (rows, len), &dev)?;
        let mut loss = (scored.logp.clone() * w)?.sum_all()?.neg()?;
        let mut fm = None;
        if want_logits {
            let term = self.feature_matching(
                &scored.continuation_logits[..n_samples],
                &primes[..n_samples],
                &conts[..n_samples],
                rolls,
            )?;
            fm = Some(term.to_scalar::<f32>()? as f64);
            loss = (loss + (term * self.cfg.feature_matching)?)?;
        }
        let grads = loss.backward()?;
        let grads = collect_grads(&self.adapter_opt, &grads)?;
        self.adapter_opt
            .step(&grads, self.cfg.adapter_lr, self.cfg.clip)?;
        let mean_of = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let samples_p: Vec<f64> = p_real[..n_samples].iter().map(|&p| f64::from(p)).collect();
        let baseline_p: Vec<f64> = match self.cfg.baseline {
            Baseline::Greedy => p_real[n_samples..].iter().map(|&p| f64::from(p)).collect(),
            Baseline::Others => samples_p.clone(),
        };
        Ok((
            mean_of(&samples_p),
            mean_of(&baseline_p),
            log_ratio[..n_samples].iter().sum::<f64>() / tokens.max(1) as f64,
            fm,
        ))
    }

    /// Squared distance between the discriminator's mean bar embedding of the samples and of
    /// the true continuations. The samples enter as straight-through weights (one-hot forward,
    /// the adapter's probabilities backward), which is the term's path to the adapter.
    pub(super) fn feature_matching(
        &self,
        logits: &[Tensor],
        primes: &[&[TokenId]],
        conts: &[&[TokenId]],
        rolls: &[Rollout],
    ) -> Result<Tensor> {
        let dev = self.model.decoder.device().clone();
        let vocab = self.cfg.num_tokens;
        let tc = conts.iter().map(|c| c.len()).max().unwrap_or(1);
        let mut rows = Vec::with_capacity(conts.len());
        for (l, c) in logits.iter().zip(conts) {
            // A softmax from plain ops: candle's fused one has no gradient.
            let max = l.max_keepdim(D::Minus1)?;
            let e = l.broadcast_sub(&max)?.exp()?;
            let probs = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
            let mut onehot = vec![0f32; c.len() * vocab];
            for (t, &id) in c.iter().enumerate() {
                onehot[t * vocab + id as usize] = 1.0;
            }
            let onehot = Tensor::from_vec(onehot, (c.len(), vocab), &dev)?;
            let st = ((onehot + &probs)? - probs.detach())?;
            let st = if c.len() < tc {
                Tensor::cat(
                    &[st, Tensor::zeros((tc - c.len(), vocab), DType::F32, &dev)?],
                    0,
                )?
            } else {
                st
            };
            rows.push(st);
        }
        let weights = Tensor::stack(&rows, 0)?;
        let batch = self.discriminator.batch(primes, conts, &dev)?;
        let fake = self
            .discriminator
            .forward_relaxed(&batch, &weights, Kernels::Training)?;
        let train = &self.pairs.train;
        let rp: Vec<&[TokenId]> = rolls.iter().map(|r| &train[r.pair].prime[..]).collect();
        let rc: Vec<&[TokenId]> = rolls
            .iter()
            .map(|r| &train[r.pair].continuation[..])
            .collect();
        let real_batch = self.discriminator.batch(&rp, &rc, &dev)?;
        let real = self
            .discriminator
            .forward(&real_batch, Kernels::Inference)?;
        let diff = (mean_bar_embedding(&fake)? - mean_bar_embedding(&real)?.detach())?;
        Ok(diff.sqr()?.sum_all()?)
    }

    /// The discriminator's accuracy on the held-out pairs: their true continuations against
    /// one sample each of the adapter as it is now.
    fn heldout_accuracy(&mut self) -> Result<f64> {
        // Seeded by the adapter's update count, not the step: the samples are a function of
        // the adapter alone, which is what lets them be reused (and a resumed run draw the
        // same ones).
        let version = self.adapter_opt.t;
        if self
            .heldout_fakes
            .as_ref()
            .is_none_or(|(v, _)| *v != version)
        {
            let mut rng = self.rng(version, "heldout");
            let gen = self.generator()?;
            let mut fakes = Vec::with_capacity(self.heldout.len());
            for &j in &self.heldout {
                let seed: u64 = rng.random();
                let fake = match rollout::prime(&gen, &self.pairs.val[j], &self.sampling) {
                    Ok(prime) => Some(
                        rollout::sample(&gen, &prime, &self.sampling, 1, seed, false)?
                            .pop()
                            .expect("one sample"),
                    ),
                    Err(_) => None,
                };
                fakes.push(fake);
            }
            self.heldout_fakes = Some((version, fakes));
        }
        let (_, fakes) = self.heldout_fakes.as_ref().expect("just drawn");
        let mut primes: Vec<&[TokenId]> = Vec::new();
        let mut reals: Vec<&[TokenId]> = Vec::new();
        let mut generated: Vec<&[TokenId]> = Vec::new();
        for (&j, fake) in self.heldout.iter().zip(fakes) {
            if let Some(fake) = fake {
                let pair = &self.pairs.val[j];
                primes.push(&pair.prime);
                reals.push(&pair.continuation);
                generated.push(fake);
            }
        }
        if primes.is_empty() {
            return Ok(0.5);
        }
        let mut all_p = primes.clone();
        all_p.extend(primes.iter().copied());
        let mut all_c = reals;
        all_c.extend(generated);
        let p = self.judge(&all_p, &all_c)?;
        let n = primes.len();
        let correct = p[..n].iter().filter(|&&x| x > 0.5).count()
            + p[n..].iter().filter(|&&x| x <= 0.5).count();
        Ok(correct as f64 / (2 * n) as f64)
    }

    /// Measures the guards on the validation pairs (one fixed-seed sample each), records the
    /// references on the first call, and writes the adapter file when every guard passes.
    pub fn evaluate(&mut self) -> Result<EvalReport> {
        let tok = self.model.tokenizer.clone();
        let gen = self.generator()?;
        let mut prefixes = Vec::new();
        let mut generated = Vec::new();
        let mut used = Vec::new();
        for &j in &self.val {
            let pair = &self.pairs.val[j];
            let Ok(prime) = rollout::prime(&gen, pair, &self.sampling) else {
                continue;
            };
            let seed = self.cfg.seed ^ stable_hash(format!("scst val {j}"));
            generated.push(
                rollout::sample(&gen, &prime, &self.sampling, 1, seed, false)?
                    .pop()
                    .expect("one sample"),
            );
            prefixes.push(prime.ids().to_vec());
            used.push(pair);
        }
        drop(gen);
        if used.is_empty() {
            return Err(Error::Generation(
                "none of the validation primes could be continued".into(),
            ));
        }
        // NLL of the true continuations under decoder + adapter.
        let (mut nll_sum, mut count) = (0f64, 0usize);
        let seqs: Vec<(&[TokenId], &[TokenId])> = prefixes
            .iter()
            .zip(&used)
            .map(|(p, pair)| (&p[..], &pair.continuation[..]))
            .collect();
        for chunk in seqs.chunks(self.cfg.batch.max(1)) {
            let s = rollout::score(
                &self.model.decoder,
                self.adapter(),
                chunk,
                tok.pad_id(),
                tok.bar_id(),
                self.model.config.max_seq_len,
                false,
                false,
            )?;
            for v in &s.adapter_values {
                nll_sum -= v.iter().map(|&x| f64::from(x)).sum::<f64>();
                count += v.len();
            }
        }
        let val_nll = nll_sum / count.max(1) as f64;
        let copy = copy_share(
            used.iter()
                .zip(&generated)
                .map(|(p, g)| (&p.prime[..], &g[..])),
            &tok,
        );
        let real_copy = copy_share(
            used.iter().map(|p| (&p.prime[..], &p.continuation[..])),
            &tok,
        );
        let distinct_4 = distinct_4gram_ratio(generated.iter().map(|g| &g[..]));
        let primes: Vec<&[TokenId]> = used.iter().map(|p| &p.prime[..]).collect();
        let gen_refs: Vec<&[TokenId]> = generated.iter().map(|g| &g[..]).collect();
        let real_refs: Vec<&[TokenId]> = used.iter().map(|p| &p.continuation[..]).collect();
        let mean = |v: Vec<f32>| v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        let p_real_generated = mean(self.judge(&primes, &gen_refs)?);
        let p_real_true = mean(self.judge(&primes, &real_refs)?);

        if self.state.nll_start.is_none() {
            self.state.nll_start = Some(Exact(val_nll));
            // The limit is the real music's copying, or the starting model's when that is
            // higher already: the guard is there to catch copying learned from the critic.
            self.state.copy_limit = Some(Exact(real_copy.max(copy)));
            self.state.real_copy = Some(real_copy);
        }
        let nll_limit =
            self.state.nll_start.map_or(f64::INFINITY, |e| e.0) * (1.0 + self.cfg.nll_tolerance);
        let copy_limit = self.state.copy_limit.map_or(1.0, |e| e.0);
        let tripped = if val_nll > nll_limit {
            Some(GuardTrip::Nll {
                nll: val_nll,
                limit: nll_limit,
            })
        } else if copy > copy_limit + self.cfg.copy_margin {
            Some(GuardTrip::Copying {
                share: copy,
                limit: copy_limit + self.cfg.copy_margin,
            })
        } else {
            None
        };
        if tripped.is_none() {
            self.save_adapter()?;
            self.state.best_step = Some(self.state.step);
        } else {
            self.state.tripped = tripped.clone();
        }
        Ok(EvalReport {
            step: self.state.step,
            val_nll,
            nll_limit,
            copy_share: copy,
            copy_limit,
            real_copy_share: real_copy,
            distinct_4,
            p_real_generated,
            p_real_true,
            tripped,
        })
    }

    /// Writes the adapter file (with its shape and its decoder's in the header, so it loads
    /// without a config section and a mismatch is named) and its discriminator beside it.
    fn save_adapter(&self) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = self
            .adapter_opt
            .params()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        let meta = crate::models::model_dir::adapter_metadata(
            &self.cfg.adapter,
            &self.cfg.decoder,
            self.cfg.num_tokens,
        );
        write_safetensors(&self.adapter_file, tensors, meta)?;
        let tensors: Vec<(String, Tensor)> = self
            .discriminator_opt
            .params()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        let meta = crate::models::model_dir::discriminator_metadata(
            &self.cfg.discriminator,
            self.cfg.num_tokens,
        );
        write_safetensors(&companion_discriminator(&self.adapter_file), tensors, meta)
    }

    fn append_metrics(&self, kind: &str, value: impl Serialize) -> Result<()> {
        let mut line = serde_json::to_value(value).expect("reports serialise");
        line["kind"] = kind.into();
        let path = self.run_dir.join(METRICS_FILE);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        writeln!(f, "{line}").map_err(Error::io(&path))
    }

    /// Writes the checkpoint now.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        self.state.adapter_t = self.adapter_opt.t;
        self.state.discriminator_t = self.discriminator_opt.t;
        let mut all: Vec<(String, Tensor)> = Vec::new();
        for (net, opt) in [
            ("adapter", &self.adapter_opt),
            ("discriminator", &self.discriminator_opt),
        ] {
            for (i, (name, var)) in opt.params.iter().enumerate() {
                all.push((format!("{net}.param.{name}"), var.as_tensor().clone()));
                all.push((format!("{net}.adam_m.{name}"), opt.m[i].clone()));
                all.push((format!("{net}.adam_v.{name}"), opt.v[i].clone()));
            }
        }
        let meta = HashMap::from([(
            "scst_state".to_string(),
            serde_json::to_string(&self.state).expect("state serialises"),
        )]);
        let path = self.run_dir.join(CHECKPOINT_FILE);
        write_safetensors(&path, all, meta)?;
        Ok(path)
    }

    /// Trains until the last step, a stop request, `stop_at` or a tripped guard; evaluates
    /// before the first step and every `eval_every` steps; checkpoints on the way and at exit.
    pub fn run(&mut self, opts: &RunOptions, observer: &mut dyn Observer) -> Result<RunEnd> {
        if self.state.nll_start.is_none() {
            let r = self.evaluate()?;
            self.append_metrics("eval", &r)?;
            observer.eval(&r);
        }
        let stop_requested = || opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
        let mut dirty = false;
        while self.state.step < self.cfg.steps
            && self.state.tripped.is_none()
            && !stop_requested()
            && opts.stop_at.is_none_or(|s| self.state.step < s)
        {
            let (report, switch) = self.train_step()?;
            dirty = true;
            self.append_metrics("train", &report)?;
            observer.step(&report);
            if let Some(s) = switch {
                self.append_metrics("phase", &s)?;
                observer.phase(&s);
            }
            let step = self.state.step;
            if step.is_multiple_of(self.cfg.eval_every) || step == self.cfg.steps {
                let r = self.evaluate()?;
                self.append_metrics("eval", &r)?;
                observer.eval(&r);
            }
            if step.is_multiple_of(self.cfg.checkpoint_every) {
                let path = self.save_checkpoint()?;
                observer.checkpoint(step, &path);
                dirty = false;
            }
        }
        if dirty || !self.run_dir.join(CHECKPOINT_FILE).exists() {
            let path = self.save_checkpoint()?;
            observer.checkpoint(self.state.step, &path);
        }
        Ok(RunEnd {
            step: self.state.step,
            best_step: self.state.best_step,
            tripped: self.state.tripped.clone(),
            finished: self.state.step >= self.cfg.steps,
        })
    }
}

/// A discriminator training row: prime, continuation, and whether the pair is real.
type Judged<'a> = (&'a [TokenId], &'a [TokenId], bool);

/// `(own, other)` training-pair indices for a discriminator step's mismatched pairs: `share`
/// per prime of `primes` (rounded), each with another pair drawn at random. The step judges
/// `other`'s prime with its own continuation (real) and with `own`'s (fake).
pub(super) fn mismatched_pairs(
    primes: impl ExactSizeIterator<Item = usize> + Clone,
    share: f64,
    pairs: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<(usize, usize)> {
    let n = primes.len();
    let m = (share * n as f64).round() as usize;
    if pairs < 2 || n == 0 {
        return Vec::new();
    }
    primes
        .cycle()
        .take(m)
        .map(|own| {
            // Uniform over the pairs other than `own`.
            let k = rng.random_range(0..pairs - 1);
            (own, if k >= own { k + 1 } else { k })
        })
        .collect()
}

/// Rollouts per prime in a step of `phase`. The discriminator judges one sample of each prime,
/// so while the adapter rests (critic warm-up) the other `samples − 1` would be generated for
/// nothing, and generation is most of a step's time.
fn samples_per_prime(phase: Phase, samples: usize) -> usize {
    if phase.trains_adapter() {
        samples
    } else {
        1
    }
}

/// One gradient per optimiser parameter, in order; zeros for a parameter the loss does not
/// reach (a term that is off).
pub(super) fn collect_grads(
    opt: &AdamW,
    grads: &candle_core::backprop::GradStore,
) -> Result<Vec<Tensor>> {
    opt.params()
        .iter()
        .map(|(_, v)| match grads.get(v.as_tensor()) {
            Some(g) => Ok(g.clone()),
            None => Ok(v.as_tensor().zeros_like()?),
        })
        .collect()
}

fn write_safetensors(
    path: &Path,
    tensors: Vec<(String, Tensor)>,
    meta: HashMap<String, String>,
) -> Result<()> {
    let tensors = tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.contiguous()?)))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(tensors, Some(meta)).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    crate::training::dataset::write_atomic(path, &bytes)
}

/// Reads a checkpoint into the two optimisers (weights and moments) and returns the state.
/// Every failure names the file.
fn load_checkpoint(
    path: &Path,
    adapter: &mut AdamW,
    discriminator: &mut AdamW,
    device: &Device,
) -> Result<State> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    let bad = |reason: String| Error::Format {
        path: path.to_path_buf(),
        reason,
    };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("scst_state"))
        .ok_or_else(|| {
            bad("no SCST state in the header: not an adapter-training checkpoint".into())
        })?;
    let state: State =
        serde_json::from_str(json).map_err(|e| bad(format!("unreadable state: {e}")))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| bad(format!("unreadable tensors: {e}")))?;
    for (net, opt, t) in [
        ("adapter", adapter, state.adapter_t),
        ("discriminator", discriminator, state.discriminator_t),
    ] {
        for i in 0..opt.params.len() {
            let (name, var) = opt.params[i].clone();
            let get = |what: &str| -> Result<Tensor> {
                let key = format!("{net}.{what}.{name}");
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| bad(format!("no `{key}`")))?;
                if t.dims() != var.dims() {
                    return Err(bad(format!(
                        "`{key}` has shape {:?}, this run's {net} needs {:?}: the checkpoint is for another model shape",
                        t.dims(),
                        var.dims()
                    )));
                }
                Ok(t.to_dtype(DType::F32)?)
            };
            var.set(&get("param")?)?;
            opt.m[i] = get("adam_m")?;
            opt.v[i] = get("adam_v")?;
        }
        opt.t = t;
    }
    Ok(state)
}
