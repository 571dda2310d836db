//! SCST: training a style adapter by reinforcement against a discriminator, the decoder frozen.
//!
//! The loop (one step, [`Scst::run`]):
//! - **Rollouts.** For a batch of primes (cut at bar lines, [`pairs`]), `K` continuations are
//!   sampled from decoder + adapter under the grammar, exactly as at play time (the generator
//!   itself), plus the greedy one when it is the baseline.
//! - **Discriminator step** (phases 1 and 2): binary cross-entropy, real continuations against
//!   generated ones, each with its prime; one-sided label smoothing on the real side, and a share
//!   of each fake batch replayed from older samples so it does not forget old mistakes.
//! - **Adapter step** (phases 2 and 3): REINFORCE. A sample's reward is the discriminator's
//!   P(real) less `kl` times its summed per-token log-ratio to the frozen decoder (the
//!   reference the fresh adapter starts from; Korbak 2022: without it reward maximisation
//!   collapses the distribution); the advantage subtracts a baseline (the greedy continuation's
//!   reward, or the mean of the prime's other samples, RLOO), and is whitened over the batch.
//!   Optionally a feature-matching term pulls the discriminator's bar embeddings of generated
//!   continuations towards the real ones'; its gradient reaches the adapter through
//!   straight-through token weights (the one-hot sample in the forward pass, the adapter's
//!   probabilities in the backward pass), since sampled ids carry none.
//! - **Phases** ([`phase`]) by the discriminator's smoothed accuracy on a held-out batch.
//! - **Guards** ([`guards`]) at every evaluation; a tripped guard stops the run and the adapter
//!   file keeps the last evaluation that passed them all.
//!
//! The decoder gets no gradient: its hidden states are computed without a graph and only the
//! adapter's and the discriminator's variables are optimised. Exact resumption as in
//! pretraining: every random draw of step `s` comes from an RNG seeded by `(seed, s)`, the
//! checkpoint holds both networks, both AdamW states, the replay buffer and the phase state,
//! and the floats that steer decisions are stored bit for bit.

pub mod guards;
pub mod pairs;
pub mod phase;
pub(crate) mod rollout;
mod trainer;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::models::{AdapterConfig, DecoderConfig, DiscriminatorConfig, ModelConfig};
use crate::tokenizer::Tokenizer;

pub use pairs::{Pair, PairSet, PairShape};
pub use phase::{Phase, PhaseConfig};
pub use trainer::{
    companion_discriminator, EvalReport, Observer, PhaseSwitch, RunEnd, Scst, StepReport,
    CHECKPOINT_FILE, METRICS_FILE, RUN_FILE,
};

/// What a sample's reward is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    /// The reward of the greedy continuation of the same prime (the seed's self-critical
    /// baseline, Rennie 2017).
    Greedy,
    /// The mean reward of the prime's other samples (leave-one-out, Ahmadian 2024).
    Others,
}

/// Controls for experiments that check the method itself (tests): with either, training must
/// not improve what the discriminator judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Control {
    /// The method as designed.
    #[default]
    None,
    /// Rewards permuted across the batch before the baseline: the signal is kept, its link to
    /// the samples is cut.
    ShuffledRewards,
    /// The discriminator keeps its random initial weights and the adapter trains from step 0.
    FrozenDiscriminator,
}

/// Everything that defines an SCST run; saved as `run.json` so `--resume` continues it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScstConfig {
    /// The model directory whose decoder is frozen (for the record and for resuming).
    pub model_dir: PathBuf,
    /// The decoder's shape and vocabulary: a run resumes only on the same.
    pub decoder: DecoderConfig,
    pub num_tokens: usize,
    pub adapter: AdapterConfig,
    pub discriminator: DiscriminatorConfig,
    pub data: Vec<PathBuf>,
    pub prime_bars: u32,
    pub bars: u32,
    pub steps: u64,
    /// Primes per step.
    pub batch: usize,
    /// Samples per prime.
    pub samples: usize,
    pub baseline: Baseline,
    /// Weight of the per-token KL to the frozen decoder, folded into the reward.
    pub kl: f64,
    /// Weight of the feature-matching term (0 turns it off).
    pub feature_matching: f64,
    pub temperature: f32,
    pub top_p: f32,
    pub adapter_lr: f64,
    pub discriminator_lr: f64,
    /// Global gradient-norm clip for both networks (0 disables).
    pub clip: f64,
    /// Real labels are `1 - label_smoothing` (one-sided smoothing).
    pub label_smoothing: f64,
    /// Share of each fake batch replayed from older samples.
    pub replay: f64,
    /// Older samples kept for replay.
    pub replay_capacity: usize,
    /// Mismatched pairs per prime in each discriminator step: another training pair's prime
    /// with this prime's true continuation (label 0), next to that prime's own continuation
    /// (label 1). They cost no generation, so they multiply what the critic sees per step, and
    /// they teach the judgement the reward is about: whether a continuation belongs with its
    /// prime. 0 turns them off.
    #[serde(default)]
    pub mismatched: f64,
    /// Steps at the start of the critic warm-up that train the discriminator on mismatched
    /// pairs alone: no rollouts, so each costs a discriminator step instead of a batch of
    /// 4-bar generations, and the critic first learns what belongs with a prime from many
    /// cheap examples. They count towards the warm-up's `warmup_max_steps`.
    #[serde(default)]
    pub critic_pretrain: u64,
    pub phases: PhaseConfig,
    /// Held-out pairs for the discriminator's accuracy (every step).
    pub heldout: usize,
    /// Evaluate the guards every this many steps (and at the end).
    pub eval_every: u64,
    /// Validation pairs for the guards.
    pub val_pairs: usize,
    /// Stop when the validation NLL exceeds the decoder's own by this fraction.
    pub nll_tolerance: f64,
    /// Stop when the copied-bar share exceeds its limit by more than this (sampling noise).
    pub copy_margin: f64,
    pub checkpoint_every: u64,
    pub val_fraction: f64,
    pub seed: u64,
    #[serde(default)]
    pub control: Control,
}

impl ScstConfig {
    /// Defaults for a model: the config's adapter and discriminator shapes when it has them,
    /// else an adapter of the decoder's width (2 blocks) and the `small` discriminator.
    pub fn for_model(model_dir: &Path, model: &ModelConfig, tok: &Tokenizer) -> Self {
        let d = &model.decoder;
        let adapter = model.adapter.clone().unwrap_or(AdapterConfig {
            dim: d.dim,
            depth: 2,
            heads: d.heads,
            attn_dim_head: d.attn_dim_head,
            ff_mult: d.ff_mult,
            rotary_emb_dim: d.rotary_emb_dim,
        });
        let mut discriminator = model
            .discriminator
            .clone()
            .unwrap_or_else(DiscriminatorConfig::small);
        discriminator.bar_token_id = tok.bar_id();
        discriminator.pad_token_id = tok.pad_id();
        discriminator.bos_token_id = tok.bos_id();
        Self {
            model_dir: model_dir.to_path_buf(),
            decoder: d.clone(),
            num_tokens: model.num_tokens,
            adapter,
            discriminator,
            data: Vec::new(),
            prime_bars: 4,
            bars: 4,
            steps: 500,
            batch: 8,
            samples: 4,
            baseline: Baseline::Others,
            kl: 0.05,
            feature_matching: 0.0,
            temperature: 1.0,
            top_p: 0.95,
            adapter_lr: 1e-4,
            discriminator_lr: 1e-4,
            clip: 1.0,
            label_smoothing: 0.1,
            replay: 0.25,
            replay_capacity: 256,
            mismatched: 1.0,
            critic_pretrain: 0,
            phases: PhaseConfig::default(),
            heldout: 8,
            eval_every: 25,
            val_pairs: 32,
            nll_tolerance: 0.05,
            copy_margin: 0.02,
            checkpoint_every: 25,
            // A style folder may hold only ~50 files: 5 % would leave one or two for the
            // held-out accuracy and the guards.
            val_fraction: 0.1,
            seed: 0,
            control: Control::None,
        }
    }

    /// Checks the settings that would otherwise fail deep inside the loop.
    pub fn validate(&self) -> Result<(), String> {
        if self.prime_bars == 0 || self.bars == 0 {
            return Err("--prime-bars and --bars must be at least 1".into());
        }
        if self.bars > crate::generation::MAX_BARS {
            return Err(format!(
                "--bars must be at most {}",
                crate::generation::MAX_BARS
            ));
        }
        if self.steps == 0 || self.batch == 0 || self.eval_every == 0 || self.checkpoint_every == 0
        {
            return Err("steps, batch, eval_every and checkpoint_every must be at least 1".into());
        }
        if self.samples == 0 || self.samples > 64 {
            return Err(format!(
                "--samples must be within 1..=64, not {}",
                self.samples
            ));
        }
        if self.baseline == Baseline::Others && self.samples < 2 {
            return Err("--baseline others needs --samples 2 or more".into());
        }
        let finite_nonneg = |v: f64| v.is_finite() && v >= 0.0;
        if !finite_nonneg(self.kl) || !finite_nonneg(self.feature_matching) {
            return Err("--kl and the feature-matching weight must be numbers >= 0".into());
        }
        let positive = |v: f64| v > 0.0 && v.is_finite();
        if !positive(self.adapter_lr) || !positive(self.discriminator_lr) {
            return Err("learning rates must be positive".into());
        }
        if !(0.0..=8.0).contains(&self.mismatched) {
            return Err(format!(
                "--mismatched must be within 0..=8 pairs per prime, not {}",
                self.mismatched
            ));
        }
        if self.critic_pretrain > 0 && self.mismatched <= 0.0 {
            return Err(
                "--critic-pretrain trains on mismatched pairs: it needs --mismatched above 0"
                    .into(),
            );
        }
        if !(0.0..0.5).contains(&self.label_smoothing) || !(0.0..=1.0).contains(&self.replay) {
            return Err("label smoothing must be within [0, 0.5), replay within [0, 1]".into());
        }
        let temperature_ok = self.temperature > 0.0 && self.temperature.is_finite();
        let top_p_ok = self.top_p > 0.0 && self.top_p <= 1.0;
        if !temperature_ok || !top_p_ok {
            return Err("sampling needs a temperature > 0 and top-p within (0, 1]".into());
        }
        if self.heldout == 0 || self.val_pairs == 0 {
            return Err("held-out and validation pairs must be at least 1".into());
        }
        self.phases.validate()?;
        self.adapter.validate().map_err(|e| e.to_string())?;
        self.discriminator.validate().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Pair shape for a model context.
    pub fn pair_shape(&self, context: usize) -> PairShape {
        PairShape {
            prime_bars: self.prime_bars,
            bars: self.bars,
            context,
        }
    }
}

#[cfg(test)]
mod tests;
