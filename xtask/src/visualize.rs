//! `cargo xtask visualize --data DIR|FILE... --out site/ [--model DIR] [--cases N]`: a static
//! site (HTML, JS, CSS and MIDI files, nothing fetched at view time) to see and hear
//! continuations next to the truth.
//!
//! Per piece: a piano roll of the prime and the model's continuation on one timeline with the
//! transition marked, buttons that play the original, the continuation, or both through the
//! transition (a small Web Audio synth), the continuations of the model, the truth and the
//! baselines side by side with `cargo xtask eval`'s measures, and each as a MIDI download. The
//! index lists the pieces with their measures. The page assets live as real files next to this
//! module and are compiled in, so the site needs nothing but this binary.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use engine::generation::{Generator, Settings};
use engine::grammar::Grammar;
use engine::midi::{Note, NoteTrack};
use engine::tokenizer::Tokenizer;
use serde::Serialize;

use crate::eval::{self, Measures};
use crate::systems;
use crate::windows::{self, Window};

const PAGE_HTML: &str = include_str!("visualize/page.html");
const INDEX_HTML: &str = include_str!("visualize/index.html");
const STYLE_CSS: &str = include_str!("visualize/style.css");
const APP_JS: &str = include_str!("visualize/app.js");

#[derive(clap::Args)]
pub struct Args {
    /// Folders (searched recursively) or MIDI files; each piece gives at most one window.
    #[arg(long, required = true, num_args = 1..)]
    data: Vec<PathBuf>,
    /// Where to write the site (created; existing piece pages are overwritten).
    #[arg(long)]
    out: PathBuf,
    /// A model directory (default: the embedded model in assets/model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A style adapter file, or `none` (default: the model directory's adapter, if any).
    #[arg(long)]
    adapter: Option<String>,
    /// Pieces to show.
    #[arg(long, default_value_t = 8)]
    cases: usize,
    #[arg(long, default_value_t = 4)]
    prime_bars: u32,
    #[arg(long, default_value_t = 4)]
    bars: u32,
    /// Seed for choosing windows and for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
}

/// A system's notes and measures, as the page reads them.
#[derive(Serialize)]
struct SystemData {
    /// `[onset, duration, pitch, velocity]` rows, onsets from the continuation's start.
    notes: Vec<[u64; 4]>,
    measures: Measures,
}

#[derive(Serialize)]
struct Download {
    label: String,
    href: String,
}

/// Everything a piece page shows (embedded in it as JSON).
#[derive(Serialize)]
struct PieceData {
    title: String,
    file: String,
    first_bar: usize,
    meter: String,
    bpm: f64,
    tpq: u16,
    bar_len: u64,
    prime_bars: u32,
    bars: u32,
    /// The transition, in ticks from the prime's first bar line.
    start: u64,
    prime: Vec<[u64; 4]>,
    /// Onsets from the continuation's start.
    truth: Vec<[u64; 4]>,
    truth_measures: Measures,
    truth_nll: Option<f64>,
    systems: serde_json::Map<String, serde_json::Value>,
    midi: Vec<Download>,
}

fn rows(notes: &[Note]) -> Vec<[u64; 4]> {
    notes
        .iter()
        .map(|n| {
            [
                n.start.0,
                n.duration.0,
                u64::from(n.pitch),
                u64::from(n.velocity),
            ]
        })
        .collect()
}

pub fn run(args: Args) -> Result<()> {
    let settings = eval::window_settings(
        args.prime_bars,
        args.bars,
        args.cases,
        args.temperature,
        args.top_p,
        args.seed,
    )?;
    let files = windows::midi_files(&args.data)?;
    let model = eval::load_model(args.model.clone(), args.adapter.as_deref())?;
    let tok = &model.tokenizer;
    let grammar = Grammar::new(tok)?;
    let generator = Generator::new(&model)?;
    let pieces = windows::load_pieces(tok, &files);
    let cases = windows::cut_windows(
        tok,
        &pieces.pieces,
        args.prime_bars,
        args.bars,
        args.cases,
        args.seed,
        true,
    );
    if cases.is_empty() {
        bail!(
            "no readable piece holds {} bars in one meter with notes in both the prime and the truth ({} file(s), {} unreadable)",
            args.prime_bars + args.bars,
            files.len(),
            pieces.skipped.len()
        );
    }
    std::fs::create_dir_all(args.out.join("pieces"))
        .with_context(|| format!("{}: cannot create", args.out.display()))?;
    write(&args.out.join("style.css"), STYLE_CSS)?;
    write(&args.out.join("app.js"), APP_JS)?;

    let progress = indicatif::ProgressBar::new(cases.len() as u64);
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let step = eval::groove_step(tok);
    let mut index_rows = String::new();
    for (i, window) in cases.iter().enumerate() {
        progress.set_message(window.name());
        let settings = Settings {
            seed: args.seed.wrapping_add(i as u64),
            ..settings.clone()
        };
        let slug = format!("{:02}-{}", i + 1, slug(&window.name()));
        let dir = args.out.join("pieces").join(&slug);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        let outputs = [
            ("model", systems::model(&generator, window, &settings)?),
            (
                "markov",
                systems::markov(tok, &grammar, window, systems::MARKOV_ORDER, settings.seed),
            ),
            ("repeat", systems::repeat(tok, &grammar, window)),
        ];
        let truth_nll = {
            let mut all = window.prime_ids.clone();
            all.extend_from_slice(&window.truth_ids);
            let (whole, prime) = (model.score(&all)?, model.score(&window.prime_ids)?);
            Some(
                (whole.mean_nll * whole.tokens as f64 - prime.mean_nll * prime.tokens as f64)
                    / window.truth_ids.len().max(1) as f64,
            )
        };
        let mut midi = vec![write_midi(
            tok,
            window,
            &dir,
            "original.mid",
            "original (prime + true continuation)",
            "truth",
            &window.truth,
        )?];
        let mut systems_json = serde_json::Map::new();
        let mut measures = Vec::new();
        for (name, out) in &outputs {
            let label = match *name {
                "model" => "prime + model's continuation",
                "markov" => "prime + Markov continuation",
                _ => "prime + repeated last bars",
            };
            midi.push(write_midi(
                tok,
                window,
                &dir,
                &format!("{name}.mid"),
                label,
                name,
                &out.notes,
            )?);
            let m = eval::measure(window, out, step);
            measures.push((*name, m.clone()));
            systems_json.insert(
                name.to_string(),
                serde_json::to_value(SystemData {
                    notes: rows(&out.notes),
                    measures: m,
                })?,
            );
        }
        let truth_measures = eval::measure_truth(tok, &grammar, window, step);
        let data = PieceData {
            title: window.name(),
            file: window.file.display().to_string(),
            first_bar: window.first_bar + 1,
            meter: window.meter.to_string(),
            bpm: window.bpm,
            tpq: tok.ticks_per_quarter(),
            bar_len: window.bar_len.0,
            prime_bars: window.prime_bars,
            bars: window.bars,
            start: window.start().0,
            prime: rows(&window.prime),
            truth: rows(&window.truth),
            truth_measures: truth_measures.clone(),
            truth_nll,
            systems: systems_json,
            midi,
        };
        // `</` would end the script element early; JSON allows `<\/` for it.
        let json = serde_json::to_string(&data)?.replace("</", "<\\/");
        let page = PAGE_HTML
            .replace("{{TITLE}}", &escape(&window.name()))
            .replace("{{DATA}}", &json);
        write(&dir.join("index.html"), &page)?;
        index_rows += &index_rows_for(&slug, window, &truth_measures, &measures);
        progress.inc(1);
    }
    progress.finish_and_clear();
    let summary = format!(
        "{} piece(s), {} bars of prime and {} continued, model {} ({} file(s) skipped as unreadable)",
        cases.len(),
        args.prime_bars,
        args.bars,
        model.dir.display(),
        pieces.skipped.len()
    );
    let index = INDEX_HTML
        .replace("{{SUMMARY}}", &escape(&summary))
        .replace("{{ROWS}}", &index_rows);
    write(&args.out.join("index.html"), &index)?;
    eprintln!(
        "wrote {} ({} pieces)",
        args.out.join("index.html").display(),
        cases.len()
    );
    Ok(())
}

/// Writes the prime and one continuation as two tracks of a MIDI file at the window's tempo.
fn write_midi(
    tok: &Tokenizer,
    window: &Window,
    dir: &Path,
    file: &str,
    label: &str,
    track: &str,
    continuation: &[Note],
) -> Result<Download> {
    let score = windows::grid_score(tok, window);
    let continued = windows::shifted(continuation, window.start());
    let path = dir.join(file);
    let bytes = score
        .to_bytes_with_tracks(&[
            NoteTrack {
                name: "prime",
                notes: &window.prime,
            },
            NoteTrack {
                name: track,
                notes: &continued,
            },
        ])
        .map_err(|kind| anyhow::anyhow!("{}: {kind}", path.display()))?;
    engine::midi::write_atomically(&path, &bytes)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(Download {
        label: label.to_string(),
        href: file.to_string(),
    })
}

/// The index's rows for one piece: the truth's reference values, then one row per system.
fn index_rows_for(
    slug: &str,
    window: &Window,
    truth: &Measures,
    systems: &[(&str, Measures)],
) -> String {
    let f = |v: Option<f64>| v.map_or_else(|| "–".to_string(), |v| format!("{v:.2}"));
    let mut out = String::new();
    for (i, (name, m)) in systems.iter().enumerate() {
        let piece = if i == 0 {
            format!(
                "<td class=\"piece\" rowspan=\"{}\"><a href=\"pieces/{slug}/index.html\">{}</a></td>",
                systems.len(),
                escape(&window.name())
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "<tr>{piece}<td class=\"system\">{name}</td><td>{} ({})</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ({})</td><td>{}</td></tr>",
            m.notes,
            truth.notes,
            f(Some(m.pitch_class_overlap)),
            f(m.density_ratio),
            f(Some(m.groove_similarity)),
            f(Some(m.pitch_range_overlap)),
            f(m.key_consistency),
            f(truth.key_consistency),
            f(Some(m.copied_bar_share)),
        );
    }
    out
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("{}: cannot write", path.display()))
}

/// Text safe inside HTML.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A file-name-safe form of a piece's name.
fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let s = s
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    s.chars().take(60).collect()
}
