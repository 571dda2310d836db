//! `cargo xtask train adapter --model DIR --data DIR [--data DIR2 ...] --out adapters/NAME.safetensors
//! [--prime-bars 4] [--bars 4] [--steps N] [--baseline greedy|others] [--samples K] [--kl B]
//! [--device cpu|cuda|metal] [--resume]`: SCST against a discriminator, the decoder frozen
//! (the loop is `engine::training::scst`).
//!
//! The run folder sits next to the adapter file (`adapters/NAME.run/`: `run.json`,
//! `metrics.jsonl`, the checkpoint and the id cache); the adapter file itself always holds the
//! last evaluation that passed the guards, and its discriminator lies beside it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use engine::models::{DiscriminatorInput, LoadOptions, Model};
use engine::training::scst::{
    self, companion_discriminator, Baseline, EvalReport, PairSet, PhaseSwitch, Scst, ScstConfig,
    StepReport,
};
use engine::training::{Corpus, CorpusOptions, RunOptions};
use indicatif::ProgressBar;

use super::{bar, device, report_corpus, step_bar, DeviceKind};

#[derive(clap::Args)]
pub struct AdapterArgs {
    /// The model directory whose decoder stays frozen (default: the embedded model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A folder searched recursively for MIDI files in the style to learn (repeat for several).
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    /// The adapter file to write (its run folder is NAME.run next to it).
    #[arg(long)]
    out: PathBuf,
    /// Bars of prime before each continuation.
    #[arg(long, default_value_t = 4)]
    prime_bars: u32,
    /// Bars of continuation judged by the discriminator.
    #[arg(long, default_value_t = 4)]
    bars: u32,
    /// Steps for the whole run (with --resume, extends or shortens it).
    #[arg(long)]
    steps: Option<u64>,
    /// What a sample's reward is compared with: the greedy continuation's, or the mean of the
    /// prime's other samples.
    #[arg(long, value_enum, default_value_t = BaselineArg::Others)]
    baseline: BaselineArg,
    /// What the discriminator reads: its own token embedding, or the frozen decoder's hidden
    /// states (learns prime/continuation coherence faster; costs a decoder pass per pair).
    #[arg(long, value_enum, default_value_t = CriticReads::Tokens)]
    critic_reads: CriticReads,
    /// Samples per prime.
    #[arg(long, default_value_t = 4)]
    samples: usize,
    /// Weight of the per-token KL to the frozen decoder in the reward.
    #[arg(long, default_value_t = 0.05)]
    kl: f64,
    /// Weight of feature matching (discriminator bar embeddings, generated against real).
    #[arg(long, default_value_t = 0.0)]
    feature_matching: f64,
    /// Mismatched pairs per prime in each discriminator step (another prime with this
    /// prime's true continuation, judged fake; no generation needed). 0 turns them off.
    #[arg(long, default_value_t = 1.0)]
    mismatched: f64,
    /// Steps at the start of the critic warm-up on mismatched pairs alone (no generation: a
    /// fraction of a warm-up step's cost each; they count towards --warmup-max-steps).
    #[arg(long, default_value_t = 0)]
    critic_pretrain: u64,
    /// Primes per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Adapter learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Discriminator learning rate.
    #[arg(long, default_value_t = 1e-4)]
    discriminator_lr: f64,
    /// Sampling temperature of the rollouts.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Nucleus mass of the rollouts.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Warm-up (discriminator only) ends at this held-out accuracy…
    #[arg(long, default_value_t = 0.7)]
    warmup_exit: f64,
    /// …or after this many steps.
    #[arg(long, default_value_t = 300)]
    warmup_max_steps: u64,
    /// The discriminator pauses at or above this accuracy…
    #[arg(long, default_value_t = 0.85)]
    focus_enter: f64,
    /// …and resumes below this one.
    #[arg(long, default_value_t = 0.65)]
    focus_exit: f64,
    /// Evaluate the guards (and save the adapter) every N steps.
    #[arg(long, default_value_t = 25)]
    eval_every: u64,
    /// Start from this adapter file instead of a fresh (pass-through) adapter.
    #[arg(long)]
    init: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// Continue the run from its checkpoint, with its saved settings.
    #[arg(long)]
    resume: bool,
    /// Stop (with a checkpoint) after this many steps in total, leaving the run resumable.
    #[arg(long, hide = true)]
    stop_at: Option<u64>,
}

/// `--baseline`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BaselineArg {
    Greedy,
    Others,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CriticReads {
    Tokens,
    Decoder,
}

/// `adapters/NAME.safetensors` → `adapters/NAME.run`.
fn run_dir(out: &Path) -> PathBuf {
    out.with_extension("run")
}

pub fn adapter(args: AdapterArgs) -> Result<()> {
    if args.out.extension().is_none_or(|e| e != "safetensors") {
        bail!(
            "--out {}: the adapter file must end in .safetensors",
            args.out.display()
        );
    }
    let run = run_dir(&args.out);
    let model_dir = args
        .model
        .clone()
        .unwrap_or_else(crate::continuation::default_model_dir);
    let dev = device(args.device)?;
    let model = Model::load(
        &model_dir,
        &LoadOptions {
            device: dev,
            adapter: false,
            discriminator: false,
            ..LoadOptions::default()
        },
    )
    .with_context(|| {
        format!(
            "loading the model to train an adapter for ({})",
            model_dir.display()
        )
    })?;
    let cfg = if args.resume {
        let path = run.join(scst::RUN_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("--resume: no run to resume ({})", path.display()))?;
        let mut cfg: ScstConfig = serde_json::from_str(&text)
            .with_context(|| format!("{}: not an adapter run's settings", path.display()))?;
        if let Some(steps) = args.steps {
            cfg.steps = steps;
        }
        cfg
    } else {
        if run.join(scst::CHECKPOINT_FILE).exists() {
            bail!(
                "{} already holds a run: pass --resume to continue it, or choose another --out",
                run.display()
            );
        }
        let mut cfg = ScstConfig::for_model(&model_dir, &model.config, &model.tokenizer);
        if let Some(init) = &args.init {
            // The starting adapter's own shape (from its header), checked against the decoder.
            let mut probe = model.clone();
            probe.load_adapter(init, &LoadOptions::default())?;
            cfg.adapter = probe
                .adapter
                .as_ref()
                .expect("just loaded")
                .config()
                .clone();
        }
        cfg.data = args.data.clone();
        cfg.prime_bars = args.prime_bars;
        cfg.bars = args.bars;
        cfg.steps = args.steps.unwrap_or(cfg.steps);
        cfg.baseline = match args.baseline {
            BaselineArg::Greedy => Baseline::Greedy,
            BaselineArg::Others => Baseline::Others,
        };
        cfg.discriminator.input = match args.critic_reads {
            CriticReads::Tokens => DiscriminatorInput::Tokens,
            CriticReads::Decoder => DiscriminatorInput::Decoder,
        };
        cfg.samples = args.samples;
        cfg.kl = args.kl;
        cfg.feature_matching = args.feature_matching;
        cfg.mismatched = args.mismatched;
        cfg.critic_pretrain = args.critic_pretrain;
        cfg.batch = args.batch;
        cfg.adapter_lr = args.lr;
        cfg.discriminator_lr = args.discriminator_lr;
        cfg.temperature = args.temperature;
        cfg.top_p = args.top_p;
        cfg.phases.warmup_exit = args.warmup_exit;
        cfg.phases.warmup_max_steps = args.warmup_max_steps;
        cfg.phases.focus_enter = args.focus_enter;
        cfg.phases.focus_exit = args.focus_exit;
        cfg.eval_every = args.eval_every;
        cfg.checkpoint_every = args.eval_every;
        cfg.seed = args.seed;
        cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        cfg
    };
    std::fs::create_dir_all(&run)
        .with_context(|| format!("{}: cannot create the run folder", run.display()))?;

    let tok = model.tokenizer.clone();
    let progress = bar(
        0,
        "tokenizing {pos}/{len} files [{elapsed}] {wide_bar} {eta}",
    );
    let corpus = Corpus::load(
        &CorpusOptions {
            dirs: cfg.data.clone(),
            cache_dir: run.join("data"),
            val_fraction: cfg.val_fraction,
        },
        &tok,
        &|done, total| {
            progress.set_length(total as u64);
            progress.set_position(done as u64);
        },
    )?;
    progress.finish_and_clear();
    report_corpus(&corpus, &run)?;
    let pairs = PairSet::from_corpus(&corpus, &tok, cfg.pair_shape(model.config.max_seq_len));
    tracing::info!(
        "{} training and {} validation pairs of {}+{} bars",
        pairs.train.len(),
        pairs.val.len(),
        cfg.prime_bars,
        cfg.bars
    );

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                eprintln!("second interrupt: exiting without a checkpoint");
                std::process::exit(130);
            }
            eprintln!("interrupt: finishing this step, then writing a checkpoint…");
        })
        .context("cannot install the Ctrl-C handler")?;
    }
    let steps = cfg.steps;
    let mut trainer = Scst::new(
        cfg,
        &model,
        args.init.as_deref(),
        pairs,
        &run,
        &args.out,
        args.resume,
    )?;
    tracing::info!(
        "{} adapter run in {}: step {}/{steps}, phase {}",
        if args.resume { "resuming" } else { "new" },
        run.display(),
        trainer.step(),
        trainer.phase()
    );
    let mut observer = Progress::new(trainer.step(), steps);
    let end = trainer.run(
        &RunOptions {
            stop: Some(stop),
            stop_at: args.stop_at,
        },
        &mut observer,
    )?;
    observer.bar.finish_and_clear();
    let how = match (&end.tripped, end.finished) {
        (Some(trip), _) => format!("stopped by a guard at step {}: {trip}", end.step),
        (None, true) => format!("finished at step {}/{steps}", end.step),
        (None, false) => format!(
            "stopped at step {}/{steps} (resume with --resume)",
            end.step
        ),
    };
    println!(
        "{how}; {} holds the adapter of step {} (discriminator: {}); metrics in {}",
        args.out.display(),
        end.best_step
            .map_or("none yet".to_string(), |s| s.to_string()),
        companion_discriminator(&args.out).display(),
        run.join(scst::METRICS_FILE).display()
    );
    Ok(())
}

/// Progress as an indicatif bar on a terminal, as log lines otherwise.
struct Progress {
    bar: ProgressBar,
    terminal: bool,
    last: Option<StepReport>,
}

impl Progress {
    fn new(step: u64, steps: u64) -> Self {
        let bar = step_bar(step, steps);
        Self {
            bar,
            terminal: std::io::stderr().is_terminal(),
            last: None,
        }
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

impl scst::Observer for Progress {
    fn step(&mut self, r: &StepReport) {
        let msg = format!(
            "{} | reward {} (baseline {}) | D acc {:.2} | KL {} | {:.0} tok/s",
            r.phase,
            opt(r.reward_sample, 3),
            opt(r.reward_baseline, 3),
            r.accuracy_smoothed,
            opt(r.kl, 4),
            r.tokens_per_s
        );
        self.bar.set_position(r.step);
        self.bar.set_message(msg.clone());
        if !self.terminal {
            tracing::info!("step {}/{}: {msg}", r.step, r.steps);
        }
        self.last = Some(r.clone());
    }

    fn eval(&mut self, r: &EvalReport) {
        let verdict = match &r.tripped {
            Some(trip) => format!("STOP: {trip}"),
            None => "adapter saved".into(),
        };
        self.bar.suspend(|| {
            tracing::info!(
                "step {}: validation NLL {:.4} (limit {:.4}), copied bars {:.1} % (limit {:.1} %, real music {:.1} %), distinct 4-grams {:.3}, D P(real) generated {:.3} / true {:.3}: {verdict}",
                r.step,
                r.val_nll,
                r.nll_limit,
                100.0 * r.copy_share,
                100.0 * r.copy_limit,
                100.0 * r.real_copy_share,
                r.distinct_4,
                r.p_real_generated,
                r.p_real_true
            )
        });
    }

    fn phase(&mut self, s: &PhaseSwitch) {
        self.bar.suspend(|| {
            tracing::info!(
                "step {}: phase {} → {} (held-out accuracy {:.3})",
                s.step,
                s.from,
                s.to,
                s.accuracy
            )
        });
    }

    fn checkpoint(&mut self, step: u64, path: &Path) {
        tracing::debug!("step {step}: checkpoint {}", path.display());
    }
}
