//! `cargo xtask continue IN.mid -o OUT.mid [--bars 4] [--prime-bars N] [--temperature 1.0]
//! [--top-p 0.95] [--seed S] [--variations K] [--start next-bar|now] [--model DIR]
//! [--adapter FILE|none] [--rerank K] [--only-continuation]`: the system's main job, from a MIDI file
//! to its continuation.

use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use engine::generation::{Continuation, Generator, Prime, Settings, Start};
use engine::key::Key;
use engine::midi::{Note, NoteTrack, Score};
use engine::models::{LoadOptions, Model, Precision};
use engine::steering::{KeyLock, PitchRange, Steering};
use engine::time::Ticks;

#[derive(clap::Args)]
pub struct Args {
    /// The prime: a MIDI file whose end the continuation picks up from.
    input: PathBuf,
    /// Where to write the result (with --variations K > 1: OUT-1.mid … OUT-K.mid).
    #[arg(short, long)]
    output: PathBuf,
    /// Bars to generate (at most 1024; longer continuations slide the model's context along).
    #[arg(long, default_value_t = 4)]
    bars: u32,
    /// Where the continuation starts: on the bar line at or after the prime's end (its last
    /// note's end, or its End of Track when later), or right where it stops (`now`: the rest
    /// of its last bar then counts as the first bar).
    #[arg(long, value_enum, default_value_t = StartArg::NextBar)]
    start: StartArg,
    /// Use only the first N bars of the input as the prime (default: all of it).
    #[arg(long)]
    prime_bars: Option<u32>,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Nucleus sampling mass, in (0, 1].
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    top_p: f32,
    /// Random seed; variation i uses seed + i - 1.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continuations to make from the one prime (one batch).
    #[arg(long, default_value_t = 1)]
    variations: usize,
    /// A model directory (default: the embedded model in assets/model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A style adapter file, or `none` for the decoder alone (default: the model directory's
    /// adapter.safetensors, if any).
    #[arg(long)]
    adapter: Option<String>,
    /// Generate K candidates and keep the one the discriminator scores highest (needs the
    /// discriminator trained with the adapter: ADAPTER.discriminator.safetensors next to
    /// --adapter FILE, or discriminator.safetensors in the model directory).
    #[arg(long)]
    rerank: Option<usize>,
    /// Bars of the prime the discriminator judges with when reranking (the --prime-bars it
    /// was trained with).
    #[arg(long, default_value_t = 4)]
    rerank_prime_bars: usize,
    /// Write the continuation alone, without the prime.
    #[arg(long)]
    only_continuation: bool,
    #[command(flatten)]
    steering: SteeringArgs,
    /// Weight precision: f32 (reference), f16, bf16 or q8 (8-bit, fast on CPU).
    #[arg(long, default_value = "f32", value_parser = crate::score::parse_precision)]
    precision: Precision,
}

/// The steering flags, shared by `continue` and `eval`.
#[derive(clap::Args, Clone, Debug)]
pub struct SteeringArgs {
    /// How closely to follow the prime's own material, 0 (the model alone) to 1 (the prime's
    /// token statistics wherever they reach, the model elsewhere).
    #[arg(long, default_value_t = engine::steering::DEFAULT_FAITHFULNESS)]
    faithfulness: f32,
    /// Keep to a key: `off`, `auto` (the prime's key, printed) or a name such as C, Am, F#m, Eb.
    #[arg(long, default_value = "off")]
    key: String,
    /// Notes per bar to aim for (1-48).
    #[arg(long)]
    density: Option<u32>,
    /// Pitch range LOW-HIGH in MIDI numbers or names with middle C = C4 = 60 (e.g. C3-C6).
    #[arg(long)]
    range: Option<String>,
}

impl SteeringArgs {
    /// The flags as the engine's steering, or an error naming the flag that does not read.
    pub fn steering(&self) -> Result<Steering> {
        let key = match self.key.trim().to_ascii_lowercase().as_str() {
            "off" | "none" => KeyLock::Off,
            "auto" => KeyLock::Auto,
            _ => KeyLock::Fixed(
                self.key
                    .parse::<Key>()
                    .map_err(|e| anyhow::anyhow!("--key: {e}"))?,
            ),
        };
        let range = self
            .range
            .as_deref()
            .map(str::parse::<PitchRange>)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--range: {e}"))?;
        let steering = Steering {
            faithfulness: self.faithfulness,
            key,
            density: self.density,
            range,
        };
        steering
            .validate()
            .map_err(|e| anyhow::anyhow!("--faithfulness/--density: {e}"))?;
        Ok(steering)
    }
}

/// `--start`: [`Start`] as a command-line value.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum StartArg {
    NextBar,
    Now,
}

impl From<StartArg> for Start {
    fn from(arg: StartArg) -> Start {
        match arg {
            StartArg::NextBar => Start::NextBar,
            StartArg::Now => Start::Now,
        }
    }
}

/// The embedded default model, in the repository's `assets/`.
pub fn default_model_dir() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).join("assets/model")
}

pub fn run(args: Args) -> Result<()> {
    let rerank = match args.rerank {
        None | Some(1) => None,
        Some(0) => bail!("--rerank must be at least 1"),
        Some(k) if args.variations > 1 => {
            bail!("--rerank {k} keeps one continuation; it cannot be combined with --variations")
        }
        Some(k) => Some(k),
    };
    let settings = Settings {
        bars: args.bars,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        variations: rerank.unwrap_or(args.variations),
        start: args.start.into(),
        steering: args.steering.steering()?,
    };
    settings.validate()?;
    if args.prime_bars == Some(0) {
        bail!("--prime-bars must be at least 1");
    }
    let score = Score::read_file(&args.input)?;
    if score.notes.is_empty() {
        bail!("{}: the prime has no notes", args.input.display());
    }

    let model_dir = args.model.clone().unwrap_or_else(default_model_dir);
    if !model_dir.join("config.json").exists() {
        bail!(
            "no model at {}: pass --model DIR, or train one with `cargo xtask train decoder --data DIR --preset small --out runs/NAME` and export it",
            model_dir.display()
        );
    }
    let adapter = match args.adapter.as_deref() {
        None => Adapter::FromModel,
        Some(a) if a.eq_ignore_ascii_case("none") => Adapter::Off,
        Some(a) => Adapter::File(PathBuf::from(a)),
    };
    let opts = LoadOptions {
        precision: args.precision,
        adapter: adapter == Adapter::FromModel,
        ..LoadOptions::default()
    };
    let mut model = Model::load(&model_dir, &opts)?;
    if let Adapter::File(file) = &adapter {
        model.load_adapter(file, &opts)?;
    }
    if rerank.is_some() {
        let file = match &adapter {
            Adapter::File(file) => Some(file.as_path()),
            _ => None,
        };
        load_discriminator(&mut model, &model_dir, file)?;
    }
    let generator = Generator::new(&model)?;
    let prime = generator
        .prime(&score, args.prime_bars, &settings)
        .with_context(|| format!("{}: cannot use it as a prime", args.input.display()))?;
    settings
        .steering
        .check(&model.tokenizer, prime.key())
        .map_err(|e| anyhow::anyhow!("--key/--range: {e}"))?;
    if settings.steering.key == KeyLock::Auto {
        match prime.key() {
            Some(key) => eprintln!("key: {key} (found in the prime)"),
            None => bail!("--key auto: the prime has no key to find"),
        }
    }

    // A live count on a terminal; nothing when stderr is a file or a pipe.
    let mut stderr = std::io::stderr();
    let live = stderr.is_terminal();
    let mut notes = 0usize;
    let (continuations, stats) = generator.generate(&prime, &settings, None, |_| {
        notes += 1;
        if live {
            let _ = write!(stderr, "\rgenerating: {notes} notes");
        }
        ControlFlow::Continue(())
    })?;
    if live {
        let _ = writeln!(stderr);
    }
    let continuations = match rerank {
        Some(k) => {
            let scores =
                engine::rerank::scores(&model, &prime, &continuations, args.rerank_prime_bars)?;
            let best = engine::rerank::best(&scores).expect("at least one candidate");
            eprintln!(
                "rerank: kept candidate {} of {k} (discriminator P(real) {:.3}; candidates {})",
                best + 1,
                scores[best],
                scores
                    .iter()
                    .map(|s| format!("{s:.3}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            vec![continuations[best].clone()]
        }
        None => continuations,
    };

    let quarters = continuations[0]
        .length
        .to_quarters(model.tokenizer.ticks_per_quarter())
        .0;
    let playing_seconds = quarters * 60.0 / score.initial_bpm();
    let seconds = stats.total.as_secs_f64();
    eprintln!(
        "{} bar(s) × {} variation(s): {} tokens in {:.2} s ({:.0} tokens/s), first note after {:.0} ms, real-time factor {:.3} at {:.0} BPM, {} context slide(s) ({:.0} ms)",
        settings.bars,
        settings.variations,
        stats.tokens,
        seconds,
        stats.tokens as f64 / seconds.max(1e-9),
        stats.first_note.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        seconds / playing_seconds.max(1e-9),
        score.initial_bpm(),
        stats.slides,
        stats.sliding.as_secs_f64() * 1000.0,
    );

    for (i, continuation) in continuations.iter().enumerate() {
        let path = if continuations.len() > 1 {
            numbered(&args.output, i + 1)
        } else {
            args.output.clone()
        };
        write_result(
            &path,
            &score,
            &prime,
            continuation,
            model.tokenizer.ticks_per_quarter(),
            args.only_continuation,
        )?;
        eprintln!(
            "wrote {} ({} notes, seed {})",
            path.display(),
            continuation.notes.len(),
            continuation.seed
        );
    }
    Ok(())
}

/// Loads the discriminator `--rerank` scores with: the one beside the adapter file when there
/// is one, else the model directory's `discriminator.safetensors`; always in full precision.
pub fn load_discriminator(
    model: &mut Model,
    model_dir: &Path,
    adapter_file: Option<&Path>,
) -> Result<()> {
    let beside = adapter_file
        .map(engine::training::scst::companion_discriminator)
        .filter(|f| f.exists());
    let file =
        beside.unwrap_or_else(|| model_dir.join(engine::models::model_dir::DISCRIMINATOR_FILE));
    if !file.exists() {
        bail!(
            "--rerank needs a discriminator: {} does not exist (train one with `cargo xtask train adapter`)",
            file.display()
        );
    }
    model.load_discriminator(&file, &LoadOptions::default())?;
    Ok(())
}

/// Which adapter `continue` uses (`--adapter`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Adapter {
    /// The model directory's own `adapter.safetensors`, when it has one.
    FromModel,
    /// The decoder alone.
    Off,
    File(PathBuf),
}

/// `out.mid` → `out-3.mid`.
fn numbered(path: &Path, n: usize) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(|| "out".into(), |s| s.to_string_lossy().into_owned());
    let ext = path
        .extension()
        .map_or_else(|| "mid".into(), |e| e.to_string_lossy().into_owned());
    path.with_file_name(format!("{stem}-{n}.{ext}"))
}

/// Writes the prime and the continuation as two tracks on the input's timeline, at its
/// resolution, tempo and meter.
fn write_result(
    path: &Path,
    score: &Score,
    prime: &Prime,
    continuation: &Continuation,
    grid_tpq: u16,
    only_continuation: bool,
) -> Result<()> {
    let tpq = u64::from(score.ticks_per_quarter);
    let to_file =
        |grid: Ticks| Ticks((grid.0 * tpq + u64::from(grid_tpq) / 2) / u64::from(grid_tpq));
    let start = prime.start();
    let continued: Vec<Note> = continuation
        .notes
        .iter()
        .map(|n| {
            let onset = to_file(start + n.start);
            let end = to_file(start + n.start + n.duration);
            Note {
                start: onset,
                duration: Ticks((end - onset).0.max(1)),
                ..*n
            }
        })
        .collect();
    let cut = to_file(start);
    let primed: Vec<Note> = score
        .notes
        .iter()
        .filter(|n| n.start < cut)
        .copied()
        .collect();
    let mut tracks = Vec::new();
    if !only_continuation {
        tracks.push(NoteTrack {
            name: "prime",
            notes: &primed,
        });
    }
    tracks.push(NoteTrack {
        name: "continuation",
        notes: &continued,
    });
    // The file ends on the continuation's last bar line, so a DAW sees whole bars and the file
    // can itself be continued.
    let score = Score {
        end: to_file(start + continuation.length),
        ..score.clone()
    };
    let bytes = score
        .to_bytes_with_tracks(&tracks)
        .map_err(|kind| anyhow::anyhow!("{}: {kind}", path.display()))?;
    engine::midi::write_atomically(path, &bytes)
        .with_context(|| format!("{}: cannot write", path.display()))
}
