//! `cargo xtask eval --data DIR [--model DIR] [--adapter FILE|none] [--prime-bars 4] [--bars 4]
//! [--cases N] [--seed S] [--rerank K] [--json FILE]`: the yardstick for the model and its adapter.
//!
//! Cuts seeded windows (P bars of prime, the true next B bars) from real pieces, continues every
//! prime with each system (the model, the decoder alone when an adapter is loaded, the Markov
//! continuator, repeating the last bars) and measures each continuation against the truth
//! (`engine::metrics`). The table ends with which system comes closest to the truth on each
//! measure, so that a model that loses to a baseline says so.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use engine::generation::{Generator, Settings};
use engine::grammar::Grammar;
use engine::metrics;
use engine::models::{LoadOptions, Model, NllScore};
use engine::time::Ticks;
use engine::tokenizer::Tokenizer;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::systems::{self, Output};
use crate::windows::{self, Window};

#[derive(clap::Args)]
pub struct Args {
    /// Folders (searched recursively) or files of MIDI pieces to cut windows from.
    #[arg(long, required = true, num_args = 1..)]
    data: Vec<PathBuf>,
    /// A model directory (default: the embedded model in assets/model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A style adapter file, or `none` for the decoder alone (default: the model directory's
    /// adapter.safetensors, if any).
    #[arg(long)]
    adapter: Option<String>,
    /// Bars of prime the systems see.
    #[arg(long, default_value_t = 4)]
    prime_bars: u32,
    /// Bars each system continues for (and of truth compared against).
    #[arg(long, default_value_t = 4)]
    bars: u32,
    /// Windows to evaluate.
    #[arg(long, default_value_t = 20)]
    cases: usize,
    /// Seed for choosing windows and for sampling (case i samples with seed + i).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sampling temperature of the model; 0 is greedy.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Nucleus sampling mass of the model, in (0, 1].
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Longest context (in events) the Markov continuator matches.
    #[arg(long, default_value_t = systems::MARKOV_ORDER)]
    markov_order: usize,
    /// Also evaluate `rerank`: the model sampling K candidates per window and keeping the one
    /// the discriminator scores highest (the discriminator beside --adapter FILE, else the
    /// model directory's).
    #[arg(long)]
    rerank: Option<usize>,
    /// Write every case, every system's measures and the summary as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Steering of the model's continuations (faithfulness, key, density, range).
    #[command(flatten)]
    steering: crate::continuation::SteeringArgs,
}

/// One continuation measured against the truth.
#[derive(Clone, Debug, Serialize)]
pub struct Measures {
    pub notes: usize,
    /// Pitch-class histogram intersection with the truth, [0, 1].
    pub pitch_class_overlap: f64,
    /// Notes per note of the truth (1 is right).
    pub density_ratio: Option<f64>,
    /// Onset-grid similarity with the truth on a sixteenth grid, bar by bar, [0, 1].
    pub groove_similarity: f64,
    /// Pitch-range intersection over union with the truth, [0, 1].
    pub pitch_range_overlap: f64,
    /// Correlation with the prime's Krumhansl–Schmuckler key profile, [-1, 1].
    pub key_consistency: Option<f64>,
    /// Distinct pitch 4-grams over all 4-grams (compare with the truth's).
    pub distinct_4gram_ratio: Option<f64>,
    /// Share of bars that copy a prime bar note for note.
    pub copied_bar_share: f64,
    pub grammar_valid: bool,
    /// Bars requested.
    pub bars: u32,
    /// Requested bars (from 1) with nothing sounding in them.
    pub silent_bars: Vec<u32>,
    /// The continuation follows the grammar and every requested bar has a note sounding: a
    /// continuation that falls silent before its end is broken even when it decodes.
    pub valid: bool,
    /// Seconds this system took for the case.
    pub seconds: f64,
}

/// Measures `output` of a window against its truth.
pub fn measure(window: &Window, output: &Output, step: Ticks) -> Measures {
    let (notes, truth) = (&output.notes, &window.truth);
    let silent = metrics::silent_bars(notes, window.bar_len, window.bars);
    Measures {
        notes: notes.len(),
        pitch_class_overlap: metrics::pitch_class_overlap(notes, truth),
        density_ratio: metrics::note_density_ratio(notes, truth),
        groove_similarity: metrics::groove_similarity(
            notes,
            truth,
            window.bar_len,
            step,
            window.bars,
        ),
        pitch_range_overlap: metrics::pitch_range_overlap(notes, truth),
        key_consistency: metrics::key_consistency(&window.prime, notes),
        distinct_4gram_ratio: metrics::distinct_ngram_ratio(notes, 4),
        copied_bar_share: metrics::copied_bar_share(
            &window.prime,
            notes,
            window.bar_len,
            window.bars,
        ),
        grammar_valid: output.grammar_valid,
        bars: window.bars,
        silent_bars: silent.iter().map(|b| b + 1).collect(),
        valid: output.grammar_valid && silent.is_empty(),
        seconds: output.seconds,
    }
}

/// The truth measured as if it were a system: the reference row (its overlaps are 1 by
/// definition; its key consistency, diversity and copying are what a system should match).
pub fn measure_truth(tok: &Tokenizer, grammar: &Grammar, window: &Window, step: Ticks) -> Measures {
    let mut score = windows::grid_score(tok, window);
    score.notes = window.prime.clone();
    score
        .notes
        .extend(windows::shifted(&window.truth, window.start()));
    score
        .notes
        .sort_by_key(|n| (n.start, n.duration, n.pitch, n.velocity));
    let output = Output {
        notes: window.truth.clone(),
        seconds: 0.0,
        grammar_valid: metrics::notes_follow_grammar(tok, grammar, &score),
    };
    measure(window, &output, step)
}

/// The grid step the groove is compared on: a sixteenth note.
pub fn groove_step(tok: &Tokenizer) -> Ticks {
    Ticks((u64::from(tok.ticks_per_quarter()) / 4).max(1))
}

/// Means over cases, counting only cases where a measure is defined.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub cases: usize,
    pub notes: f64,
    pub pitch_class_overlap: Option<f64>,
    pub density_ratio: Option<f64>,
    pub groove_similarity: Option<f64>,
    pub pitch_range_overlap: Option<f64>,
    pub key_consistency: Option<f64>,
    pub distinct_4gram_ratio: Option<f64>,
    pub copied_bar_share: Option<f64>,
    /// Share of cases whose output follows the grammar.
    pub grammar_valid: f64,
    /// Share of cases with a requested bar where nothing sounds.
    pub silent_bar: f64,
    /// Share of cases whose last requested bar is silent.
    pub silent_last_bar: f64,
    /// Share of cases that follow the grammar with no silent bar.
    pub valid: f64,
    pub seconds_per_case: f64,
}

fn mean(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn summarize(ms: &[&Measures]) -> Summary {
    let n = ms.len().max(1) as f64;
    Summary {
        cases: ms.len(),
        notes: ms.iter().map(|m| m.notes as f64).sum::<f64>() / n,
        pitch_class_overlap: mean(ms.iter().map(|m| Some(m.pitch_class_overlap))),
        density_ratio: mean(ms.iter().map(|m| m.density_ratio)),
        groove_similarity: mean(ms.iter().map(|m| Some(m.groove_similarity))),
        pitch_range_overlap: mean(ms.iter().map(|m| Some(m.pitch_range_overlap))),
        key_consistency: mean(ms.iter().map(|m| m.key_consistency)),
        distinct_4gram_ratio: mean(ms.iter().map(|m| m.distinct_4gram_ratio)),
        copied_bar_share: mean(ms.iter().map(|m| Some(m.copied_bar_share))),
        grammar_valid: ms.iter().filter(|m| m.grammar_valid).count() as f64 / n,
        silent_bar: ms.iter().filter(|m| !m.silent_bars.is_empty()).count() as f64 / n,
        silent_last_bar: ms
            .iter()
            .filter(|m| m.silent_bars.last() == Some(&m.bars))
            .count() as f64
            / n,
        valid: ms.iter().filter(|m| m.valid).count() as f64 / n,
        seconds_per_case: ms.iter().map(|m| m.seconds).sum::<f64>() / n,
    }
}

/// Mean NLL (nats/token) of the truth's tokens given the prime: the scores of prime + truth
/// and of the prime alone, as totals, differenced. Exact whenever prime + truth fit in the
/// context; beyond it each part is scored with at least half a context.
fn truth_nll(
    score: impl Fn(&[u32]) -> candle_core::Result<NllScore>,
    window: &Window,
) -> Result<f64> {
    if window.truth_ids.is_empty() {
        bail!("{}: the truth has no tokens", window.name());
    }
    let mut all = window.prime_ids.clone();
    all.extend_from_slice(&window.truth_ids);
    let whole = score(&all)?;
    let prime = score(&window.prime_ids)?;
    let total = whole.mean_nll * whole.tokens as f64 - prime.mean_nll * prime.tokens as f64;
    Ok(total / window.truth_ids.len() as f64)
}

/// One case in the JSON report.
#[derive(Serialize)]
struct Case {
    file: PathBuf,
    /// The prime's first bar in the piece, from 1.
    first_bar: usize,
    meter: String,
    seed: u64,
    truth: Measures,
    systems: BTreeMap<&'static str, Measures>,
    /// NLL of the true continuation given the prime, nats/token, per model system.
    truth_nll: BTreeMap<&'static str, f64>,
}

/// The systems in table order.
const SYSTEMS: [&str; 5] = ["model", "rerank", "decoder", "markov", "repeat"];

/// The model to evaluate, with its adapter resolved as `--adapter` asks.
pub fn load_model(dir: Option<PathBuf>, adapter: Option<&str>) -> Result<Model> {
    let dir = dir.unwrap_or_else(crate::continuation::default_model_dir);
    if !dir.join("config.json").exists() {
        bail!(
            "no model at {}: pass --model DIR, or train one with `cargo xtask train decoder` and export it",
            dir.display()
        );
    }
    let opts = LoadOptions {
        adapter: adapter.is_none(),
        ..LoadOptions::default()
    };
    let mut model = Model::load(&dir, &opts)?;
    if let Some(file) = adapter.filter(|a| *a != "none") {
        model.load_adapter(std::path::Path::new(file), &opts)?;
    }
    Ok(model)
}

/// The one-continuation settings eval and visualize cut their windows with, checked.
pub(crate) fn window_settings(
    prime_bars: u32,
    bars: u32,
    cases: usize,
    temperature: f32,
    top_p: f32,
    seed: u64,
) -> Result<Settings> {
    if prime_bars == 0 || bars == 0 || cases == 0 {
        bail!("--prime-bars, --bars and --cases must be at least 1");
    }
    let settings = Settings {
        bars,
        temperature,
        top_p,
        seed,
        variations: 1,
        ..Settings::default()
    };
    settings.validate()?;
    Ok(settings)
}

pub fn run(args: Args) -> Result<()> {
    let mut settings = window_settings(
        args.prime_bars,
        args.bars,
        args.cases,
        args.temperature,
        args.top_p,
        args.seed,
    )?;
    settings.steering = args.steering.steering()?;
    settings.validate()?;
    let files = windows::midi_files(&args.data)?;
    let mut model = load_model(args.model.clone(), args.adapter.as_deref())?;
    let rerank = match args.rerank {
        None | Some(1) => None,
        Some(0) => bail!("--rerank must be at least 2 candidates"),
        Some(k) => {
            let dir = args
                .model
                .clone()
                .unwrap_or_else(crate::continuation::default_model_dir);
            let adapter = args
                .adapter
                .as_deref()
                .filter(|a| *a != "none")
                .map(std::path::Path::new);
            crate::continuation::load_discriminator(&mut model, &dir, adapter)?;
            Some(k)
        }
    };
    let decoder_alone = model.adapter.is_some().then(|| Model {
        adapter: None,
        ..model.clone()
    });
    let tok = &model.tokenizer;
    let grammar = Grammar::new(tok)?;
    let generator = Generator::new(&model)?;
    let decoder_generator = decoder_alone.as_ref().map(Generator::new).transpose()?;

    let pieces = windows::load_pieces(tok, &files);
    if pieces.pieces.is_empty() {
        bail!(
            "none of the {} MIDI file(s) could be read (first: {}: {})",
            files.len(),
            pieces.skipped[0].0.display(),
            pieces.skipped[0].1
        );
    }
    let cases = windows::cut_windows(
        tok,
        &pieces.pieces,
        args.prime_bars,
        args.bars,
        args.cases,
        args.seed,
        false,
    );
    if cases.is_empty() {
        bail!(
            "no piece holds {} bars in one meter with notes in both the prime and the truth",
            args.prime_bars + args.bars
        );
    }
    if cases.len() < args.cases {
        tracing::warn!(
            "only {} windows of {} bars exist; evaluating those",
            cases.len(),
            args.prime_bars + args.bars
        );
    }

    let progress = progress_bar(cases.len() as u64);
    let step = groove_step(tok);
    let started = Instant::now();
    let mut report = Vec::with_capacity(cases.len());
    for (i, window) in cases.iter().enumerate() {
        progress.set_message(window.name());
        let seed = args.seed.wrapping_add(i as u64);
        let settings = Settings {
            seed,
            ..settings.clone()
        };
        let mut systems = BTreeMap::new();
        let mut truth_nll = BTreeMap::new();
        let out = systems::model(&generator, window, &settings)?;
        systems.insert("model", measure(window, &out, step));
        truth_nll.insert("model", truth_nll_of(|ids| model.score(ids), window)?);
        if let Some(k) = rerank {
            let out = systems::reranked(
                &generator,
                &model,
                window,
                &settings,
                k,
                args.prime_bars as usize,
            )?;
            systems.insert("rerank", measure(window, &out, step));
        }
        if let Some(g) = &decoder_generator {
            let out = systems::model(g, window, &settings)?;
            systems.insert("decoder", measure(window, &out, step));
            truth_nll.insert(
                "decoder",
                truth_nll_of(|ids| model.score_decoder(ids), window)?,
            );
        }
        let out = systems::markov(tok, &grammar, window, args.markov_order, seed);
        systems.insert("markov", measure(window, &out, step));
        let out = systems::repeat(tok, &grammar, window);
        systems.insert("repeat", measure(window, &out, step));
        report.push(Case {
            file: window.file.clone(),
            first_bar: window.first_bar + 1,
            meter: window.meter.to_string(),
            seed,
            truth: measure_truth(tok, &grammar, window, step),
            systems,
            truth_nll,
        });
        progress.inc(1);
    }
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();

    let truth = summarize(&report.iter().map(|c| &c.truth).collect::<Vec<_>>());
    let mut summaries: Vec<(&str, Summary)> = Vec::new();
    for name in SYSTEMS {
        let ms: Vec<&Measures> = report.iter().filter_map(|c| c.systems.get(name)).collect();
        if !ms.is_empty() {
            summaries.push((name, summarize(&ms)));
        }
    }
    let nll: BTreeMap<&str, Option<f64>> = ["model", "decoder"]
        .into_iter()
        .filter(|s| report.iter().any(|c| c.truth_nll.contains_key(s)))
        .map(|s| (s, mean(report.iter().map(|c| c.truth_nll.get(s).copied()))))
        .collect();
    let adapter_note = if decoder_alone.is_some() {
        "model = decoder + adapter; decoder = the decoder alone".to_string()
    } else {
        "no adapter loaded: the model is the decoder alone, so no separate decoder row".to_string()
    };

    println!(
        "{} case(s) of {} + {} bars from {} piece(s) ({} file(s) skipped as unreadable) in {:.1} s",
        report.len(),
        args.prime_bars,
        args.bars,
        pieces.pieces.len(),
        pieces.skipped.len(),
        seconds
    );
    println!("{adapter_note}");
    println!("model steering: {:?}", settings.steering);
    print!("{}", table(&truth, &summaries));
    for (system, value) in &nll {
        if let Some(v) = value {
            println!("NLL of the true continuation under {system}: {v:.3} nats/token");
        }
    }
    println!("{}", verdict(&truth, &summaries));

    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "model": model.dir,
            "adapter": model.adapter.is_some(),
            "note": adapter_note,
            "prime_bars": args.prime_bars,
            "bars": args.bars,
            "seed": args.seed,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "markov_order": args.markov_order,
            "steering": format!("{:?}", settings.steering),
            "files": files.len(),
            "pieces": pieces.pieces.len(),
            "skipped": pieces.skipped.iter().map(|(f, why)| serde_json::json!({"file": f, "reason": why})).collect::<Vec<_>>(),
            "seconds": seconds,
            "summary": {
                "truth": truth,
                "systems": summaries.iter().map(|(n, s)| (n.to_string(), serde_json::to_value(s).unwrap_or_default())).collect::<serde_json::Map<_, _>>(),
                "truth_nll": nll,
            },
            "cases": report,
        });
        let text = serde_json::to_string_pretty(&json)?;
        std::fs::write(path, text).with_context(|| format!("{}: cannot write", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn truth_nll_of(
    score: impl Fn(&[u32]) -> candle_core::Result<NllScore>,
    window: &Window,
) -> Result<f64> {
    truth_nll(score, window).with_context(|| format!("{}: scoring the truth", window.name()))
}

fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} cases, {elapsed} ({eta} left) {msg}")
            .expect("valid template"),
    );
    bar
}

/// How a measure is judged against the truth.
#[derive(Clone, Copy)]
enum Goal {
    /// Higher is better (overlaps, similarity, validity).
    High,
    /// Closest to 1 on a log scale (the density ratio).
    One,
    /// Closest to the truth's own value (key consistency, diversity, copying).
    Truth,
    /// Lower is better (time).
    Low,
}

/// The table's measures: header, how it is read off a summary, and its goal.
type Column = (&'static str, fn(&Summary) -> Option<f64>, Goal);

const COLUMNS: [Column; 13] = [
    ("notes", |s| Some(s.notes), Goal::Truth),
    ("pc-ovl", |s| s.pitch_class_overlap, Goal::High),
    ("density", |s| s.density_ratio, Goal::One),
    ("groove", |s| s.groove_similarity, Goal::High),
    ("range", |s| s.pitch_range_overlap, Goal::High),
    ("key", |s| s.key_consistency, Goal::Truth),
    ("dist-4", |s| s.distinct_4gram_ratio, Goal::Truth),
    ("copied", |s| s.copied_bar_share, Goal::Truth),
    ("grammar", |s| Some(s.grammar_valid), Goal::High),
    ("silent", |s| Some(s.silent_bar), Goal::Low),
    ("sil-last", |s| Some(s.silent_last_bar), Goal::Low),
    ("valid", |s| Some(s.valid), Goal::High),
    ("s/case", |s| Some(s.seconds_per_case), Goal::Low),
];

/// For each column, the systems closest to the truth: one name, several when they tie (equal
/// to 1e-9), none when no system has a value.
fn best<'a>(truth: &Summary, systems: &[(&'a str, Summary)]) -> Vec<Vec<&'a str>> {
    COLUMNS
        .iter()
        .map(|(_, get, goal)| {
            let target = get(truth);
            let losses: Vec<(&str, f64)> = systems
                .iter()
                .filter_map(|(name, s)| {
                    let v = get(s)?;
                    let loss = match goal {
                        Goal::High => -v,
                        Goal::Low => v,
                        Goal::One => v.max(1e-9).ln().abs(),
                        Goal::Truth => (v - target?).abs(),
                    };
                    Some((*name, loss))
                })
                .collect();
            let min = losses.iter().map(|l| l.1).fold(f64::INFINITY, f64::min);
            losses
                .iter()
                .filter(|l| l.1 <= min + 1e-9)
                .map(|l| l.0)
                .collect()
        })
        .collect()
}

/// The summary table: the truth's own values, each system's means, and the closest system.
fn table(truth: &Summary, systems: &[(&str, Summary)]) -> String {
    let mut out = format!("{:<10}", "system");
    for (h, _, _) in COLUMNS {
        out += &format!("{h:>9}");
    }
    out.push('\n');
    let row = |name: &str, s: &Summary| {
        let mut line = format!("{name:<10}");
        for (h, get, _) in COLUMNS {
            let cell = match get(s) {
                Some(v) if h == "notes" => format!("{v:.1}"),
                Some(v) => format!("{v:.3}"),
                None => "-".into(),
            };
            line += &format!("{cell:>9}");
        }
        line.push('\n');
        line
    };
    out += &row("truth", truth);
    for (name, s) in systems {
        out += &row(name, s);
    }
    out += &format!("{:<10}", "closest");
    for b in best(truth, systems) {
        let cell = match b.len() {
            0 => "-",
            1 => b[0],
            _ => "tie",
        };
        out += &format!("{cell:>9}");
    }
    out.push('\n');
    out
}

/// One line: the measures on which the model alone is closest to the truth, those on which it
/// ties, and those on which another system beats it.
fn verdict(truth: &Summary, systems: &[(&str, Summary)]) -> String {
    let (mut wins, mut ties, mut losses) = (Vec::new(), Vec::new(), Vec::new());
    for ((h, _, _), b) in COLUMNS.iter().zip(best(truth, systems)) {
        if b == ["model"] {
            wins.push(h.to_string());
        } else if b.contains(&"model") {
            ties.push(format!("{h} ({})", b.join(" = ")));
        } else if !b.is_empty() {
            losses.push(format!("{h} ({})", b.join(" = ")));
        }
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "nothing".to_string()
        } else {
            v.join(", ")
        }
    };
    format!(
        "model closest to the truth on: {}; tied on: {}; beaten on: {}",
        list(&wins),
        list(&ties),
        list(&losses)
    )
}
