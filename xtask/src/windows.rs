//! Evaluation windows: a prime of P bars cut from a real piece, and the B bars that truly
//! followed it.
//!
//! Windows are cut from the token ids, at `Bar` tokens, so that the prime a model sees is exactly
//! what training showed it (MidiTok's grid, velocity bins and durations), and the truth and the
//! baselines live on that same grid. A window is drawn by a seeded shuffle of every (file, first
//! bar) pair, so the same seed gives the same windows to every system and every run.

use std::path::PathBuf;

use anyhow::{bail, Result};
use engine::midi::{Note, Score};
use engine::time::{Ticks, TimeSignature};
use engine::tokenizer::{NoteDecoder, Token, TokenId, Tokenizer};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// One piece, tokenized.
pub struct Piece {
    pub file: PathBuf,
    /// The file's tempo at its start: windows play back at it.
    pub bpm: f64,
    ids: Vec<TokenId>,
    /// Index in `ids` of every `Bar` token.
    bars: Vec<usize>,
}

/// The pieces of a folder or file list, and the files that could not be read.
pub struct Pieces {
    pub pieces: Vec<Piece>,
    /// (file, why) for every file skipped.
    pub skipped: Vec<(PathBuf, String)>,
}

/// MIDI files under each path: a folder is searched recursively, a file is taken as is. An empty
/// result is an error naming what was searched.
pub fn midi_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            files.extend(crate::bench::midi_files_under(path)?);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            bail!("{}: no such file or folder", path.display());
        }
    }
    if files.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        bail!("{}: no MIDI files (.mid, .midi) found", names.join(", "));
    }
    Ok(files)
}

/// Reads and tokenizes every file; unreadable ones are kept in `skipped` with the reason.
pub fn load_pieces(tok: &Tokenizer, files: &[PathBuf]) -> Pieces {
    let mut pieces = Vec::new();
    let mut skipped = Vec::new();
    for file in files {
        match Score::read_file(file) {
            Ok(score) => {
                let ids = tok.encode(&score);
                let bars = ids
                    .iter()
                    .enumerate()
                    .filter(|(_, &id)| id == tok.bar_id())
                    .map(|(i, _)| i)
                    .collect();
                pieces.push(Piece {
                    file: file.clone(),
                    bpm: score.initial_bpm(),
                    ids,
                    bars,
                });
            }
            Err(err) => {
                tracing::warn!("skipped: {err}");
                skipped.push((file.clone(), err.kind.to_string()));
            }
        }
    }
    Pieces { pieces, skipped }
}

/// A prime and its true continuation, on the tokenizer's grid.
#[derive(Clone, Debug)]
pub struct Window {
    pub file: PathBuf,
    /// The prime's first bar in the piece, from 0.
    pub first_bar: usize,
    pub prime_bars: u32,
    pub bars: u32,
    pub meter: TimeSignature,
    pub bar_len: Ticks,
    pub bpm: f64,
    /// The prime's ids (no BOS), from its first `Bar`.
    pub prime_ids: Vec<TokenId>,
    /// The truth's ids, from its first `Bar`.
    pub truth_ids: Vec<TokenId>,
    /// Onsets from the prime's first bar line.
    pub prime: Vec<Note>,
    /// Onsets from the continuation's start (the prime's end).
    pub truth: Vec<Note>,
}

impl Window {
    /// Where the continuation starts: the prime's end, on its timeline.
    pub fn start(&self) -> Ticks {
        Ticks(self.bar_len.0 * u64::from(self.prime_bars))
    }

    /// Length of the continuation.
    pub fn length(&self) -> Ticks {
        Ticks(self.bar_len.0 * u64::from(self.bars))
    }

    /// A short name: the file's stem and the bar the prime starts at (1-based, as musicians
    /// count).
    pub fn name(&self) -> String {
        let stem = self
            .file
            .file_stem()
            .map_or_else(|| "piece".into(), |s| s.to_string_lossy().into_owned());
        format!("{stem} bar {}", self.first_bar + 1)
    }
}

/// Draws up to `cases` windows of `prime_bars + bars` bars, in one meter, with notes in both the
/// prime and the truth. With `one_per_piece`, each piece gives at most one window. Fewer windows
/// come back when the pieces do not hold enough.
pub fn cut_windows(
    tok: &Tokenizer,
    pieces: &[Piece],
    prime_bars: u32,
    bars: u32,
    cases: usize,
    seed: u64,
    one_per_piece: bool,
) -> Vec<Window> {
    let span = (prime_bars + bars) as usize;
    let mut candidates: Vec<(usize, usize)> = pieces
        .iter()
        .enumerate()
        .flat_map(|(p, piece)| {
            (0..(piece.bars.len() + 1).saturating_sub(span)).map(move |b| (p, b))
        })
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    candidates.shuffle(&mut rng);
    let mut used = vec![false; pieces.len()];
    let mut windows = Vec::new();
    for (p, first_bar) in candidates {
        if windows.len() == cases {
            break;
        }
        if one_per_piece && used[p] {
            continue;
        }
        if let Some(w) = window(tok, &pieces[p], first_bar, prime_bars, bars) {
            used[p] = true;
            windows.push(w);
        }
    }
    windows
}

/// The window starting at `first_bar`, if it keeps one meter and has notes on both sides.
fn window(
    tok: &Tokenizer,
    piece: &Piece,
    first_bar: usize,
    prime_bars: u32,
    bars: u32,
) -> Option<Window> {
    let at = |b: usize| piece.bars.get(b).copied().unwrap_or(piece.ids.len());
    let (begin, cut) = (at(first_bar), at(first_bar + prime_bars as usize));
    let end = at(first_bar + (prime_bars + bars) as usize);
    let ids = &piece.ids[begin..end];
    let mut meters = ids.iter().filter_map(|&id| match tok.token(id) {
        Some(Token::TimeSig(ts)) => Some(ts),
        _ => None,
    });
    let meter = meters.next().unwrap_or(TimeSignature::COMMON);
    if meters.any(|m| m != meter) || !tok.supports(meter) {
        return None;
    }
    let bar_len = NoteDecoder::new(tok, meter).ticks_per_bar();
    let start = Ticks(bar_len.0 * u64::from(prime_bars));
    let decoded = tok.decode(ids).ok()?;
    let (prime, truth): (Vec<Note>, Vec<Note>) =
        decoded.notes.iter().partition(|n| n.start < start);
    let truth: Vec<Note> = truth
        .into_iter()
        .map(|n| Note {
            start: n.start - start,
            ..n
        })
        .collect();
    if prime.is_empty() || truth.is_empty() {
        return None;
    }
    Some(Window {
        file: piece.file.clone(),
        first_bar,
        prime_bars,
        bars,
        meter,
        bar_len,
        bpm: piece.bpm,
        prime_ids: piece.ids[begin..cut].to_vec(),
        truth_ids: piece.ids[cut..end].to_vec(),
        prime,
        truth,
    })
}

/// A score on the tokenizer's grid in the window's meter and tempo, for writing MIDI files.
pub fn grid_score(tok: &Tokenizer, window: &Window) -> Score {
    let mut score = Score::new(tok.ticks_per_quarter());
    score.time_signatures[0].signature = window.meter;
    score.tempos[0].micros_per_quarter = (60_000_000.0 / window.bpm.max(1.0)).round() as u32;
    score
}

/// `notes` moved by `offset` (e.g. a continuation onto the prime's timeline).
pub fn shifted(notes: &[Note], offset: Ticks) -> Vec<Note> {
    notes
        .iter()
        .map(|n| Note {
            start: n.start + offset,
            ..*n
        })
        .collect()
}
