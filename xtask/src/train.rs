//! `cargo xtask train decoder --data DIR [--data DIR2 ...] --preset tiny|small|seed --out runs/NAME
//! [--steps N] [--batch B] [--seq L] [--lr X] [--device cpu|cuda|metal] [--resume]`
//! and `cargo xtask train export runs/NAME --out assets/model [--f16]`.
//!
//! The loop itself lives in `engine::training`; this module parses settings, draws progress
//! (indicatif on a terminal, log lines otherwise, so `nohup` logs stay readable), turns Ctrl-C
//! into a clean checkpoint, and writes the model card on export ([`model_card`]).

mod adapter;
mod model_card;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use engine::models::ModelConfig;
use engine::tokenizer::Tokenizer;
use engine::training::checkpoint::{self, CHECKPOINT_FILE};
use engine::training::optim::AdamWConfig;
use engine::training::schedule::Schedule;
use engine::training::{
    Corpus, CorpusOptions, Observer, RunOptions, StepReport, TrainConfig, Trainer, ValReport,
};
use indicatif::{ProgressBar, ProgressStyle};

use self::model_card::{ComparedWindow, ModelCard};

/// Free-form notes on a run, kept in its folder and quoted into the exported model card.
const NOTES_FILE: &str = "NOTES.md";

#[derive(clap::Subcommand)]
pub enum Command {
    /// Pretrain the decoder on folders of MIDI files (resumable; Ctrl-C checkpoints).
    Decoder(DecoderArgs),
    /// Write a model directory (and MODEL_CARD.md, quoting the run's NOTES.md if any) from a
    /// run's latest checkpoint.
    Export(ExportArgs),
    /// Train a style adapter by SCST against a discriminator, the decoder frozen (resumable;
    /// Ctrl-C checkpoints).
    Adapter(adapter::AdapterArgs),
}

#[derive(clap::Args)]
pub struct DecoderArgs {
    /// A folder searched recursively for MIDI files (repeat for several).
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    /// Model shape: tiny (tests), small (the embedded default), seed (12 × 768).
    #[arg(long, value_enum, default_value_t = Preset::Small)]
    preset: Preset,
    /// The run folder (checkpoint, metrics, id cache, run.json).
    #[arg(long)]
    out: PathBuf,
    /// Optimiser steps for the whole run (default 20000; with --resume, extends or shortens it).
    #[arg(long)]
    steps: Option<u64>,
    /// Sequences per micro-batch (default: 8; tiny: 4).
    #[arg(long)]
    batch: Option<usize>,
    /// Window length in tokens (default: 512; tiny: 64; seed: 1024).
    #[arg(long)]
    seq: Option<usize>,
    /// Peak learning rate (default: 1e-3; seed: 3e-4).
    #[arg(long)]
    lr: Option<f64>,
    /// Micro-batches per step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    accum: usize,
    /// Warm-up steps (default: 5 % of the run, at most 500).
    #[arg(long)]
    warmup: Option<u64>,
    /// Validate every N steps.
    #[arg(long, default_value_t = 200)]
    val_every: u64,
    /// Validation windows (a fixed set from the held-out files).
    #[arg(long, default_value_t = 48)]
    val_windows: usize,
    /// Checkpoint every N steps…
    #[arg(long, default_value_t = 500)]
    checkpoint_every: u64,
    /// …or every this many minutes, whichever comes first.
    #[arg(long, default_value_t = 5.0)]
    checkpoint_minutes: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Turn off random transposition of training windows.
    #[arg(long)]
    no_transpose: bool,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// Continue the run in --out from its checkpoint, with its saved settings.
    #[arg(long)]
    resume: bool,
    /// Start from the decoder weights of this model directory (same shape; e.g. the default
    /// model, to train it further with a longer context) instead of random weights.
    #[arg(long, conflicts_with = "resume")]
    init: Option<PathBuf>,
    /// Stop (with a checkpoint) after this many steps in total, leaving the run resumable.
    #[arg(long, hide = true)]
    stop_at: Option<u64>,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The run folder.
    run: PathBuf,
    /// The model directory to write.
    #[arg(long)]
    out: PathBuf,
    /// Store the weights in f16 (half the size; loaded at any precision).
    #[arg(long)]
    f16: bool,
    /// A model directory to compare with on the same validation windows (typically the model
    /// this export replaces), at this run's window length and at that model's context; the
    /// card shows both. Read before anything is written, so it may be `--out` itself.
    #[arg(long)]
    compare: Option<PathBuf>,
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Decoder(args) => decoder(args),
        Command::Export(args) => export(args),
        Command::Adapter(args) => adapter::adapter(args),
    }
}

/// A model shape by name (`--preset`), shared by `train decoder` and `bench generate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// For tests: trains in seconds.
    Tiny,
    /// The embedded default model's shape.
    Small,
    /// 12 × 768.
    Seed,
}

impl Preset {
    /// The model's shape.
    pub fn config(self) -> ModelConfig {
        match self {
            Self::Tiny => ModelConfig::tiny(),
            Self::Small => ModelConfig::small(),
            Self::Seed => ModelConfig::seed(),
        }
    }

    /// The name on the command line (and in `run.json`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::Small => "small",
            Self::Seed => "seed",
        }
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The preset's model with its default window length, batch size and learning rate.
fn preset(preset: Preset) -> (ModelConfig, usize, usize, f64) {
    let (seq, batch, lr) = match preset {
        Preset::Tiny => (64, 4, 1e-3),
        Preset::Small => (512, 8, 1e-3),
        Preset::Seed => (1024, 8, 3e-4),
    };
    (preset.config(), seq, batch, lr)
}

/// Where to train (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DeviceKind {
    Cpu,
    Cuda,
    Metal,
}

fn device(kind: DeviceKind) -> Result<Device> {
    Ok(match kind {
        DeviceKind::Cuda => {
            Device::new_cuda(0).context("--device cuda (build xtask with --features cuda)")?
        }
        DeviceKind::Metal => {
            Device::new_metal(0).context("--device metal (build xtask with --features metal)")?
        }
        DeviceKind::Cpu => Device::Cpu,
    })
}

fn new_config(args: &DecoderArgs) -> TrainConfig {
    let (mut model, seq, batch, lr) = preset(args.preset);
    let seq = args.seq.unwrap_or(seq);
    model.max_seq_len = seq;
    model.adapter = None;
    model.discriminator = None;
    let steps = args.steps.unwrap_or(20_000);
    TrainConfig {
        preset: args.preset.to_string(),
        model,
        data: args.data.clone(),
        seq,
        batch: args.batch.unwrap_or(batch),
        accum: args.accum,
        steps,
        schedule: Schedule {
            peak: args.lr.unwrap_or(lr),
            warmup: args.warmup.unwrap_or((steps / 20).clamp(1, 500)),
            total: steps,
            min_ratio: 0.1,
        },
        adamw: AdamWConfig::default(),
        clip: 1.0,
        val_every: args.val_every,
        val_windows: args.val_windows,
        val_fraction: 0.05,
        checkpoint_every: args.checkpoint_every,
        checkpoint_minutes: args.checkpoint_minutes,
        seed: args.seed,
        transpose: !args.no_transpose,
        init: args.init.clone(),
    }
}

fn decoder(args: DecoderArgs) -> Result<()> {
    let cfg = if args.resume {
        let mut cfg = TrainConfig::load(&args.out)
            .with_context(|| format!("--resume: no run to resume in {}", args.out.display()))?;
        if let Some(steps) = args.steps {
            cfg.steps = steps;
            cfg.schedule.total = steps;
        }
        for (given, what) in [
            (args.seq.is_some(), "--seq"),
            (args.batch.is_some(), "--batch"),
            (args.lr.is_some(), "--lr"),
        ] {
            if given {
                tracing::warn!("{what} is ignored with --resume: the run keeps its settings");
            }
        }
        cfg
    } else {
        if args.out.join(CHECKPOINT_FILE).exists() {
            bail!(
                "{} already holds a run: pass --resume to continue it, or choose another --out",
                args.out.display()
            );
        }
        new_config(&args)
    };
    let dev = device(args.device)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create the run folder", args.out.display()))?;

    let tok = Tokenizer::reference();
    let bar = bar(
        0,
        "tokenizing {pos}/{len} files [{elapsed}] {wide_bar} {eta}",
    );
    let corpus = Corpus::load(
        &CorpusOptions {
            dirs: cfg.data.clone(),
            cache_dir: args.out.join("data"),
            val_fraction: cfg.val_fraction,
        },
        &tok,
        &|done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    report_corpus(&corpus, &args.out)?;

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
    let mut trainer = Trainer::new(cfg, &args.out, corpus, dev, args.resume)?;
    let state = trainer.state().clone();
    let steps = trainer.config().steps;
    tracing::info!(
        "{} run in {}: step {}/{steps}, bigram baseline {:.4} nats/token on validation",
        if args.resume { "resuming" } else { "new" },
        args.out.display(),
        state.step,
        trainer.bigram_val_loss()
    );
    let mut progress = Progress::new(state.step, steps);
    let opts = RunOptions {
        stop: Some(stop.clone()),
        stop_at: args.stop_at,
    };
    let end = trainer.run(&opts, &mut progress)?;
    progress.bar.finish_and_clear();
    let how = if end.step >= steps {
        "finished"
    } else {
        "stopped (resume with --resume)"
    };
    println!(
        "{how} at step {}/{steps}: {} tokens seen, validation {} nats/token (bigram {:.4}); checkpoint in {}",
        end.step,
        end.tokens_seen,
        end.val_loss
            .map_or("not measured yet".to_string(), |v| format!("{v:.4}")),
        trainer.bigram_val_loss(),
        args.out.join(CHECKPOINT_FILE).display()
    );
    Ok(())
}

/// The steps bar both trainers draw, already at `step` of `steps` (a resumed run starts there).
fn step_bar(step: u64, steps: u64) -> ProgressBar {
    let bar = bar(
        steps,
        "{pos}/{len} [{elapsed_precise}] {wide_bar} eta {eta} | {msg}",
    );
    bar.set_position(step);
    bar
}

fn bar(len: u64, template: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar
}

/// Logs the corpus summary and writes `skipped.txt` (one `file<TAB>reason` a line).
fn report_corpus(corpus: &Corpus, out: &Path) -> Result<()> {
    let (train, val) = corpus.split_sizes();
    let (train_tokens, val_tokens) = corpus.token_counts();
    tracing::info!(
        "{} MIDI files ({}): {train} train files ({train_tokens} tokens), {val} validation files ({val_tokens} tokens), {} skipped",
        corpus.files(),
        if corpus.from_cache() { "id cache reused" } else { "tokenized" },
        corpus.skipped().len()
    );
    let list: String = corpus
        .skipped()
        .iter()
        .map(|s| format!("{}\t{}\n", s.file.display(), s.reason))
        .collect();
    let path = out.join("skipped.txt");
    std::fs::write(&path, list).with_context(|| format!("{}: cannot write", path.display()))?;
    for s in corpus.skipped() {
        tracing::warn!("skipped {}: {}", s.file.display(), s.reason);
    }
    Ok(())
}

/// Progress as an indicatif bar on a terminal, as periodic log lines otherwise.
struct Progress {
    bar: ProgressBar,
    terminal: bool,
    val: Option<ValReport>,
    /// Exponential moving average of the training loss and of tokens/s.
    loss: Option<f64>,
    rate: Option<f64>,
}

impl Progress {
    fn new(step: u64, steps: u64) -> Self {
        let bar = step_bar(step, steps);
        Self {
            bar,
            terminal: std::io::stderr().is_terminal(),
            val: None,
            loss: None,
            rate: None,
        }
    }

    fn message(&self) -> String {
        let val = self.val.as_ref().map_or(String::new(), |v| {
            format!(" val {:.3} (bigram {:.3})", v.val_loss, v.bigram_val_loss)
        });
        format!(
            "loss {:.3}{val} {:.0} tok/s",
            self.loss.unwrap_or(f64::NAN),
            self.rate.unwrap_or(0.0)
        )
    }
}

impl Observer for Progress {
    fn step(&mut self, r: &StepReport) {
        let ema = |old: Option<f64>, new: f64| Some(old.map_or(new, |o| 0.9 * o + 0.1 * new));
        self.loss = ema(self.loss, r.loss);
        self.rate = ema(self.rate, r.tokens_per_s);
        self.bar.set_position(r.step);
        self.bar.set_message(self.message());
        if !self.terminal && (r.step.is_multiple_of(10) || r.step == 1) {
            tracing::info!(
                "step {}/{} lr {:.2e} loss {:.4} (avg {:.4}) |g| {:.2} {:.0} tok/s, {} tokens seen",
                r.step,
                r.steps,
                r.lr,
                r.loss,
                self.loss.unwrap_or(f64::NAN),
                r.grad_norm,
                r.tokens_per_s,
                r.tokens_seen
            );
        }
    }

    fn val(&mut self, r: &ValReport) {
        tracing::info!(
            "step {}: validation {:.4} nats/token (bigram {:.4}) over {} tokens",
            r.step,
            r.val_loss,
            r.bigram_val_loss,
            r.val_tokens
        );
        self.val = Some(r.clone());
    }

    fn checkpoint(&mut self, step: u64, path: &Path) {
        tracing::info!("step {step}: checkpoint {}", path.display());
    }
}

fn export(args: ExportArgs) -> Result<()> {
    let cfg = TrainConfig::load(&args.run)?;
    let dtype = if args.f16 { DType::F16 } else { DType::F32 };
    let ck = args.run.join(CHECKPOINT_FILE);
    // The model compared with is read first: it may be the directory about to be replaced.
    let previous = args
        .compare
        .as_deref()
        .map(engine::training::pretrain::decoder_weights)
        .transpose()?;
    let done = engine::training::export::export(&ck, &cfg.model, &args.out, dtype)?;
    let copied = copy_licences(&cfg.data, &args.out)?;
    // Validate the exported checkpoint itself (the run's last validation may be older). The
    // id cache in the run folder makes this quick; it needs the data folders to exist.
    let corpus = Corpus::load(
        &CorpusOptions {
            dirs: cfg.data.clone(),
            cache_dir: args.run.join("data"),
            val_fraction: cfg.val_fraction,
        },
        &Tokenizer::reference(),
        &|_, _| {},
    )
    .context("validating the checkpoint needs the run's data folders")?;
    let ck = checkpoint::load(&ck, &Device::Cpu)?;
    let comparison = match previous {
        Some((model, weights)) => Some(compare(&cfg, &corpus, &ck.params, &model, &weights)?),
        None => None,
    };
    let (val, bigram, val_tokens) =
        engine::training::pretrain::validate_weights(&cfg, &corpus, ck.params)?;
    println!(
        "step {}: validation {val:.4} nats/token, bigram {bigram:.4} ({val_tokens} tokens)",
        done.step
    );
    let card = ModelCard::gather(
        &args,
        &cfg,
        &done,
        &copied,
        (val, bigram, val_tokens),
        comparison,
    )?;
    let card_path = args.out.join("MODEL_CARD.md");
    std::fs::write(&card_path, card.to_string())
        .with_context(|| format!("{}: cannot write", card_path.display()))?;
    println!(
        "wrote {} (step {}, {} parameters, decoder {:.1} MB)",
        args.out.display(),
        done.step,
        done.parameters,
        done.decoder_bytes as f64 / 1e6
    );
    Ok(())
}

/// The exported weights and another model on the same validation windows, at the run's window
/// length and at the other model's context (when they differ).
fn compare(
    cfg: &TrainConfig,
    corpus: &Corpus,
    ours: &HashMap<String, Tensor>,
    theirs: &ModelConfig,
    their_weights: &HashMap<String, Tensor>,
) -> Result<Vec<ComparedWindow>> {
    let mut windows = vec![theirs.max_seq_len.min(cfg.seq), cfg.seq];
    windows.dedup();
    windows
        .into_iter()
        .map(|window| {
            let measure = |model: &ModelConfig, weights: &HashMap<String, Tensor>| {
                engine::training::pretrain::validate_model(
                    model,
                    weights.clone(),
                    corpus,
                    window,
                    cfg.val_windows,
                    cfg.batch,
                )
            };
            let (this, bigram, tokens) = measure(&cfg.model, ours)?;
            let (other, _, _) = measure(theirs, their_weights)?;
            println!(
                "windows of {window}: this {this:.4}, compared model {other:.4}, bigram {bigram:.4} ({tokens} tokens)"
            );
            Ok(ComparedWindow {
                window,
                this,
                other,
                other_context: theirs.max_seq_len,
                bigram,
                tokens,
            })
        })
        .collect()
}

/// Copies the per-folder licence files of the data (`LICENSE*`, `NOTICE*`, `manifest.csv`, which
/// for Mutopia names each work's licence) to `out/licences/<folder>/`, so that attribution
/// required by CC BY / CC BY-SA works ships with the weights. Returns the copies' paths
/// relative to `out`.
fn copy_licences(data: &[PathBuf], out: &Path) -> Result<Vec<String>> {
    let mut copied = Vec::new();
    for dir in data {
        let Some(name) = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        else {
            continue;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let f = p
                    .file_name()
                    .map_or(String::new(), |f| f.to_string_lossy().to_lowercase());
                p.is_file()
                    && (f.starts_with("license")
                        || f.starts_with("licence")
                        || f.starts_with("notice")
                        || f == "manifest.csv")
            })
            .collect();
        files.sort();
        for file in files {
            let rel = PathBuf::from("licences")
                .join(&name)
                .join(file.file_name().expect("a file name"));
            let dest = out.join(&rel);
            std::fs::create_dir_all(dest.parent().expect("a parent"))?;
            // Source files may be read-only (a shared corpus); the copies must stay replaceable
            // by the next export.
            let _ = std::fs::remove_file(&dest);
            std::fs::copy(&file, &dest)
                .with_context(|| format!("copying {} to {}", file.display(), dest.display()))?;
            let mut perms = std::fs::metadata(&dest)?.permissions();
            #[cfg(unix)]
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
            #[cfg(not(unix))]
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            std::fs::set_permissions(&dest, perms)?;
            copied.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(copied)
}
