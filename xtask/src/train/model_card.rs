//! MODEL_CARD.md, the card `train export` writes beside the weights, as a typed template: each
//! fact on the card is gathered once into a field ([`ModelCard::gather`]) and placed once, in the
//! section that shows it ([`ModelCard`]'s `Display`).

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use engine::training::checkpoint::{self, CHECKPOINT_FILE};
use engine::training::export::Exported;
use engine::training::TrainConfig;

use super::{ExportArgs, NOTES_FILE};

/// Everything the card says, by section.
pub(super) struct ModelCard {
    shapes: Shapes,
    training: Training,
    validation: Validation,
    /// The model directory the run started from (`--init`), if not from random weights.
    init: Option<String>,
    /// The run's own `NOTES.md`, quoted as a section of its own; empty without one.
    notes: String,
    reproduce: Reproduce,
    data: Data,
}

/// The network's shapes and the exported weights.
struct Shapes {
    vocabulary: usize,
    depth: usize,
    dim: usize,
    heads: usize,
    head_dim: usize,
    ff_mult: usize,
    parameters: usize,
    context: usize,
    /// `f16` or `f32`.
    precision: &'static str,
    decoder_bytes: u64,
}

/// How the run trained, as far as the exported checkpoint got.
struct Training {
    step: u64,
    steps: u64,
    tokens_seen: u64,
    batch: usize,
    seq: usize,
    /// Micro-batches per step.
    accum: usize,
    beta1: f64,
    beta2: f64,
    weight_decay: f64,
    peak_lr: f64,
    warmup: u64,
    min_ratio: f64,
    clip: f64,
    transpose: bool,
    cpu: String,
    cores: usize,
    train_seconds: f64,
}

/// The validation measured at export.
struct Validation {
    /// The share of files held out, in [0, 1].
    held_out: f64,
    /// This decoder's loss, nats/token.
    loss: f64,
    /// The bigram baseline's loss on the same windows.
    bigram: f64,
    /// Target tokens measured.
    tokens: u64,
    /// Tokens per window.
    window: usize,
    /// The fewest windows measured.
    min_windows: usize,
    /// This decoder against another model (`--compare`) on the same windows.
    comparison: Option<Comparison>,
}

/// `train export --compare`: the model compared with, and one row per window length.
struct Comparison {
    model: String,
    rows: Vec<ComparedWindow>,
}

/// Both models on the same validation windows of one length.
pub(super) struct ComparedWindow {
    pub(super) window: usize,
    /// This decoder's loss, nats/token.
    pub(super) this: f64,
    /// The compared model's loss on the same windows.
    pub(super) other: f64,
    /// The compared model's own context (windows past it are beyond what it was trained on).
    pub(super) other_context: usize,
    pub(super) bigram: f64,
    pub(super) tokens: u64,
}

/// How to run the training again, or on.
struct Reproduce {
    /// The `train decoder` command line of the run.
    command: String,
    run: PathBuf,
    out: PathBuf,
}

/// What the weights were trained on.
struct Data {
    /// The data folders, as [`portable`] paths.
    folders: Vec<String>,
    /// The licence files copied beside the card, relative to it.
    licence_files: Vec<String>,
    /// The data folders' `NOTICE.md` texts, quoted.
    notices: String,
}

impl ModelCard {
    /// The card for the export `args` of a run trained with `cfg`: `done` is what was exported,
    /// `copied` the licence files copied beside it, and the validation (loss, bigram loss,
    /// tokens) was measured on the exported weights.
    pub(super) fn gather(
        args: &ExportArgs,
        cfg: &TrainConfig,
        done: &Exported,
        copied: &[String],
        (loss, bigram, tokens): (f64, f64, u64),
        comparison: Option<Vec<ComparedWindow>>,
    ) -> Result<ModelCard> {
        let state = checkpoint::load(&args.run.join(CHECKPOINT_FILE), &Device::Cpu)?.state;
        let d = &cfg.model.decoder;
        let data_args: String = cfg
            .data
            .iter()
            .map(|d| format!(" --data {}", portable(d)))
            .collect();
        let init = cfg
            .init
            .as_ref()
            .map_or(String::new(), |m| format!(" --init {}", portable(m)));
        let command = format!(
            "cargo run --release -p xtask -- train decoder{data_args} --preset {} --out {} --steps {} --batch {} --seq {} --lr {} --accum {} --warmup {} --seed {}{}{init}",
            cfg.preset,
            portable(&args.run),
            cfg.steps,
            cfg.batch,
            cfg.seq,
            cfg.schedule.peak,
            cfg.accum,
            cfg.schedule.warmup,
            cfg.seed,
            if cfg.transpose { "" } else { " --no-transpose" }
        );
        Ok(ModelCard {
            shapes: Shapes {
                vocabulary: cfg.model.num_tokens,
                depth: d.depth,
                dim: d.dim,
                heads: d.heads,
                head_dim: d.attn_dim_head,
                ff_mult: d.ff_mult,
                parameters: done.parameters,
                context: cfg.seq,
                precision: if args.f16 { "f16" } else { "f32" },
                decoder_bytes: done.decoder_bytes,
            },
            training: Training {
                step: state.step,
                steps: cfg.steps,
                tokens_seen: state.tokens_seen,
                batch: cfg.batch,
                seq: cfg.seq,
                accum: cfg.accum,
                beta1: cfg.adamw.beta1,
                beta2: cfg.adamw.beta2,
                weight_decay: cfg.adamw.weight_decay,
                peak_lr: cfg.schedule.peak,
                warmup: cfg.schedule.warmup,
                min_ratio: cfg.schedule.min_ratio,
                clip: cfg.clip,
                transpose: cfg.transpose,
                cpu: cpu_name(),
                cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
                train_seconds: state.train_seconds,
            },
            validation: Validation {
                held_out: cfg.val_fraction,
                loss,
                bigram,
                tokens,
                window: cfg.seq,
                min_windows: cfg.val_windows,
                comparison: comparison.map(|rows| Comparison {
                    model: args.compare.as_deref().map(portable).unwrap_or_default(),
                    rows,
                }),
            },
            init: cfg.init.as_deref().map(portable),
            notes: run_notes(&args.run)?,
            reproduce: Reproduce {
                command,
                run: args.run.clone(),
                out: args.out.clone(),
            },
            data: Data {
                folders: cfg.data.iter().map(|d| portable(d)).collect(),
                licence_files: copied.to_vec(),
                notices: notices(&cfg.data),
            },
        })
    }

    /// The Status section's text: complete, or how to carry on.
    fn write_status(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Training { step, steps, .. } = self.training;
        let Reproduce { command, run, out } = &self.reproduce;
        if step >= steps {
            return write!(f, "The run is complete: {step} of {steps} steps.");
        }
        let percent = 100.0 * step as f64 / steps as f64;
        let run = portable(run);
        write!(
            f,
            "**This is a checkpoint of an ongoing run**: step {step} of {steps} ({percent:.0} %). \
             Continue it where it stopped (it reads `{run}/run.json` and \
             `checkpoint.safetensors`, which stay outside the repository) with\n\n\
             ```sh\n{command} --resume\n```\n\n\
             then export again with `cargo xtask train export {run} --out {} --f16`.",
            portable(out)
        )
    }

    fn write_shapes(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Shapes {
            vocabulary,
            depth,
            dim,
            heads,
            head_dim,
            ff_mult,
            parameters,
            context,
            precision,
            decoder_bytes,
        } = self.shapes;
        let megabytes = decoder_bytes as f64 / 1e6;
        write!(
            f,
            "## Shapes\n\n\
             | | |\n|---|---|\n\
             | vocabulary | {vocabulary} tokens (MidiTok 3.1 REMI reference configuration) |\n\
             | decoder | {depth} × {dim}, {heads} heads × {head_dim}, GLU feed-forward × {ff_mult}, \
             rotary positions |\n\
             | parameters | {parameters} |\n\
             | training context | {context} tokens |\n\
             | weights | {precision} (`decoder.safetensors`, {megabytes:.1} MB) |\n\n"
        )
    }

    fn write_training(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Training {
            step,
            steps,
            tokens_seen,
            batch,
            seq,
            accum,
            beta1,
            beta2,
            weight_decay,
            peak_lr,
            warmup,
            min_ratio,
            clip,
            transpose,
            ref cpu,
            cores,
            train_seconds,
        } = self.training;
        let micro_batches = if accum > 1 {
            format!(", {accum} micro-batches per step")
        } else {
            String::new()
        };
        let augmentation = if transpose {
            "random transposition of each window (up to ±7 semitones, kept in range)"
        } else {
            "none"
        };
        let hours = train_seconds / 3600.0;
        let tokens_per_second = tokens_seen as f64 / train_seconds.max(1e-9);
        write!(
            f,
            "## Training\n\n\
             | | |\n|---|---|\n\
             | steps | {step} of {steps} |\n\
             | tokens seen | {tokens_seen} |\n\
             | batch | {batch} × {seq} tokens{micro_batches} |\n\
             | optimiser | AdamW (β {beta1}, {beta2}; weight decay {weight_decay} on matrices), \
             peak lr {peak_lr}, {warmup} warm-up steps, cosine to {min_ratio} × peak, clip {clip} |\n\
             | augmentation | {augmentation} |\n\
             | hardware | {cpu} ({cores} logical cores), CPU only, f32; {hours:.1} h of training \
             steps, {tokens_per_second:.0} tokens/s on average |\n\n"
        )
    }

    fn write_validation(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Validation {
            held_out,
            loss,
            bigram,
            tokens,
            window,
            min_windows,
            ref comparison,
        } = self.validation;
        let step = self.training.step;
        let percent = 100.0 * held_out;
        let gain = bigram - loss;
        write!(
            f,
            "## Validation (nats/token, held-out files: ~{percent:.0} % of files, split by file)\n\n\
             | model | loss |\n|---|---|\n\
             | this decoder | {loss:.4} (these weights, step {step}) |\n\
             | bigram baseline, same windows | {bigram:.4} |\n\n\
             Measured at export on {tokens} target tokens, in bar-aligned windows of {window} \
             tokens spread\n\
             over each piece, at least one from every validation file and at least {min_windows} \
             in all (the run's\n\
             periodic validation in `metrics.jsonl` uses fewer). The decoder is {gain:.2} \
             nats/token below\n\
             the bigram.\n\n"
        )?;
        let Some(Comparison { model, rows }) = comparison else {
            return Ok(());
        };
        write!(
            f,
            "### Against `{model}`\n\n\
             Both models on exactly the same validation windows (nats/token):\n\n\
             | window | this decoder | `{model}` | bigram | target tokens |\n|---|---|---|---|---|\n"
        )?;
        for r in rows {
            let beyond = if r.window > r.other_context {
                format!(" (beyond its {}-token training context)", r.other_context)
            } else {
                String::new()
            };
            writeln!(
                f,
                "| {} tokens | {:.4} | {:.4}{beyond} | {:.4} | {} |",
                r.window, r.this, r.other, r.bigram, r.tokens
            )?;
        }
        f.write_str("\n")
    }

    fn write_reproduce(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Reproduce { command, run, out } = &self.reproduce;
        write!(
            f,
            "## Reproduce\n\n```sh\n{command}\n\
             cargo run --release -p xtask -- train export {} --out {} --f16\n```\n\n\
             The data folders are the corpus described below (`../shared/corpus/` in the \
             development\n\
             setup); the run is deterministic for a given seed, bit for bit, whatever the thread \
             count\n\
             (`RAYON_NUM_THREADS` changes the speed only), and across `--resume`.\n\n",
            portable(run),
            portable(out)
        )
    }

    fn write_data(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Data {
            folders,
            licence_files,
            notices,
        } = &self.data;
        let folders = folders
            .iter()
            .map(|d| format!("`{d}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let licence_files = if licence_files.is_empty() {
            "none found".to_string()
        } else {
            licence_files
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(
            f,
            "## Data and licences\n\n\
             Trained on every MIDI file under: {folders}. The weights are derived from these \
             works; keep the\n\
             attribution below with them. Per-folder licence files are copied beside this card: \
             {licence_files}.\n{notices}"
        )
    }
}

impl fmt::Display for ModelCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "# Continuator default model\n\n\
             A decoder-only transformer over MidiTok REMI tokens (x-transformers layout, see\n\
             `docs/model-format.md`), pretrained with `cargo xtask train decoder`",
        )?;
        match &self.init {
            Some(model) => write!(
                f,
                ": this run started from the\ndecoder weights of `{model}` (`--init`; see the run notes for that model's own training).\n\n"
            )?,
            None => f.write_str(" from scratch.\n\n")?,
        }
        f.write_str("## Status\n\n")?;
        self.write_status(f)?;
        f.write_str("\n\n")?;
        self.write_shapes(f)?;
        self.write_training(f)?;
        self.write_validation(f)?;
        f.write_str(&self.notes)?;
        self.write_reproduce(f)?;
        self.write_data(f)
    }
}

/// The run's own history, written by whoever ran it, as `NOTES.md` in the run folder: what the
/// numbers above cannot say (where a resumed run moved between machines, code changes part-way
/// through that make a re-run differ). Quoted into the card as its own section.
fn run_notes(run: &Path) -> Result<String> {
    let path = run.join(NOTES_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(format!(
            "## Run notes\n\n(From `{}`.)\n\n{}\n\n",
            portable(&path),
            text.trim()
        )),
        Ok(_) => Ok(String::new()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("{}: cannot read", path.display())),
    }
}

/// A path as the card may print it: relative to the working directory (the repository root,
/// where `cargo xtask` runs), never a machine's absolute path. A path that shares no ancestor
/// with it keeps only its last two components.
fn portable(path: &Path) -> String {
    let absolute = |p: &Path| -> PathBuf {
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        };
        // Lexical normalisation: `a/b/../c` → `a/c` (the data may not exist where the card is
        // rendered, so no canonicalize).
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                std::path::Component::ParentDir => {
                    out.pop();
                }
                std::path::Component::CurDir => {}
                c => out.push(c),
            }
        }
        out
    };
    let target = absolute(path);
    let base = absolute(Path::new("."));
    let common = target
        .components()
        .zip(base.components())
        .take_while(|(a, b)| a == b)
        .count();
    // Only the root in common: a machine path with nothing to be relative to.
    if common <= 1 {
        let tail: Vec<_> = target.components().rev().take(2).collect();
        return tail
            .into_iter()
            .rev()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
    }
    let ups = base.components().count() - common;
    let mut rel = PathBuf::new();
    for _ in 0..ups {
        rel.push("..");
    }
    for c in target.components().skip(common) {
        rel.push(c);
    }
    if rel.as_os_str().is_empty() {
        ".".into()
    } else {
        rel.display().to_string()
    }
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Licence and attribution text from the data folders (a `NOTICE.md` in the folder or its
/// parent), quoted whole so the attribution travels with the weights.
fn notices(data: &[PathBuf]) -> String {
    let mut seen = Vec::new();
    let mut out = String::new();
    for dir in data {
        for candidate in [dir.join("NOTICE.md"), dir.join("../NOTICE.md")] {
            let Ok(path) = candidate.canonicalize() else {
                continue;
            };
            if seen.contains(&path) {
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(&path) {
                out.push_str(&format!(
                    "\n<!-- copied from {} -->\n\n",
                    portable(&candidate)
                ));
                let text = format!("\n{text}");
                out.push_str(&text.replace("\n# ", "\n### ").replace("\n## ", "\n### "));
                seen.push(path);
            }
        }
    }
    if out.is_empty() {
        out = "(no NOTICE.md was found beside the data folders: add the data's licences here)\n"
            .into();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::portable;
    use std::path::Path;

    #[test]
    fn card_paths_are_relative_to_the_working_directory() {
        let here = std::env::current_dir().unwrap();
        assert_eq!(portable(Path::new("runs/small")), "runs/small");
        assert_eq!(portable(&here.join("assets/model")), "assets/model");
        let sibling = here.parent().unwrap().join("shared/corpus/pop909");
        assert_eq!(portable(&sibling), "../shared/corpus/pop909");
        assert_eq!(
            portable(Path::new("../shared/./corpus/x/../pop909")),
            "../shared/corpus/pop909"
        );
        assert_eq!(portable(&here), ".");
    }
}
