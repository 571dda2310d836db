//! Training data: MIDI folders → token ids cached on disk → bar-aligned training windows.
//!
//! Tokenizing ~1,700 files takes a while even in parallel, so the ids are written once to a
//! compact cache (`ids.bin`: every document's ids back to back as little-endian `u16`, plus
//! `index.json`) and memory-mapped by later runs. The cache is keyed by a fingerprint of the
//! file list (path, size, modification time) and of the tokenizer's vocabulary, so a changed
//! folder is tokenized again rather than silently served stale.
//!
//! Each document is `BOS, ids…, EOS`. Windows of `seq + 1` ids start at a bar (or at the
//! document's `BOS`), so the model always sees a bar line where its context begins, as at
//! generation time. Short documents are padded with `PAD`, which the loss ignores.
//!
//! The split is by file, and deterministic: a file is in validation when a hash of its path
//! *relative to its data folder* falls in the validation fraction, so moving the corpus or
//! adding files does not reshuffle the files already there.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::Mmap;
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Error, Result};
use crate::hash::stable_hash;
use crate::midi::Score;
use crate::tokenizer::{Token, TokenKind, Tokenizer};

const CACHE_IDS: &str = "ids.bin";
const CACHE_INDEX: &str = "index.json";
/// Bumped when the cache layout or the document framing changes.
const CACHE_VERSION: u32 = 1;

/// Where the data comes from and how it is split.
#[derive(Debug, Clone)]
pub struct CorpusOptions {
    /// Folders searched recursively for `.mid` / `.midi` files.
    pub dirs: Vec<PathBuf>,
    /// Folder of the id cache (created if missing).
    pub cache_dir: PathBuf,
    /// Share of files held out for validation (by file, deterministic).
    pub val_fraction: f64,
}

/// A file that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub file: PathBuf,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DocEntry {
    /// Path relative to its data folder, prefixed by the folder's name (the split key).
    name: String,
    /// Offset in ids (not bytes) into `ids.bin`.
    offset: u64,
    len: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Index {
    version: u32,
    fingerprint: String,
    vocab_size: usize,
    docs: Vec<DocEntry>,
    skipped: Vec<Skipped>,
}

/// One document in the memory-mapped cache.
#[derive(Debug, Clone)]
struct Doc {
    name: String,
    offset: usize,
    len: usize,
    /// Positions where a window may start: 0 (the `BOS`) and every `Bar`.
    starts: Vec<u32>,
}

/// The tokenized corpus, memory-mapped, split into train and validation documents.
#[derive(Debug)]
pub struct Corpus {
    ids: Mmap,
    docs: Vec<Doc>,
    train: Vec<usize>,
    val: Vec<usize>,
    /// Cumulative train-document lengths, for sampling documents in proportion to length.
    train_cum: Vec<u64>,
    skipped: Vec<Skipped>,
    files: usize,
    from_cache: bool,
    pad: u32,
    pitch_ids: (u32, u32),
}

/// Everything under `dirs` that looks like a MIDI file, sorted, with the name used as split key.
pub fn midi_files(dirs: &[PathBuf]) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for dir in dirs {
        let meta = std::fs::metadata(dir).map_err(Error::io(dir))?;
        if !meta.is_dir() {
            return Err(Error::Format {
                path: dir.clone(),
                reason: "is not a folder".into(),
            });
        }
        let label = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).map_err(Error::io(&d))? {
                let path = entry.map_err(Error::io(&d))?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| {
                    e.eq_ignore_ascii_case("mid") || e.eq_ignore_ascii_case("midi")
                }) {
                    let rel = path.strip_prefix(dir).unwrap_or(&path);
                    let name = format!("{label}/{}", rel.to_string_lossy());
                    out.push((path, name));
                }
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(Error::NoMidi {
            dirs: dirs.to_vec(),
        });
    }
    Ok(out)
}

fn fingerprint(files: &[(PathBuf, String)], tok: &Tokenizer) -> String {
    let mut vocab = format!("{CACHE_VERSION}\n");
    for t in tok.vocab() {
        vocab.push_str(&format!("{t}\n"));
    }
    let mut text = String::new();
    for (path, name) in files {
        let meta = std::fs::metadata(path).ok();
        let size = meta.as_ref().map_or(0, |m| m.len());
        let mtime = meta
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        text.push_str(&format!("{}\t{name}\t{size}\t{mtime}\n", path.display()));
    }
    format!("{:016x}{:016x}", stable_hash(&vocab), stable_hash(&text))
}

impl Corpus {
    /// Loads the corpus from the cache when it matches the folders, else tokenizes every file
    /// in parallel (rayon) and writes the cache. `progress(done, total)` is called as files
    /// finish tokenizing. Unreadable files are skipped and listed ([`Corpus::skipped`]).
    pub fn load(
        opts: &CorpusOptions,
        tok: &Tokenizer,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Self> {
        if tok.vocab_size() > usize::from(u16::MAX) {
            return Err(Error::Config(format!(
                "the id cache stores u16 ids; a vocabulary of {} does not fit",
                tok.vocab_size()
            )));
        }
        let files = midi_files(&opts.dirs)?;
        let fp = fingerprint(&files, tok);
        std::fs::create_dir_all(&opts.cache_dir).map_err(Error::io(&opts.cache_dir))?;
        let index_path = opts.cache_dir.join(CACHE_INDEX);
        let ids_path = opts.cache_dir.join(CACHE_IDS);
        let cached = std::fs::read_to_string(&index_path)
            .ok()
            .and_then(|t| serde_json::from_str::<Index>(&t).ok())
            .filter(|i| {
                i.version == CACHE_VERSION
                    && i.fingerprint == fp
                    && i.vocab_size == tok.vocab_size()
                    && ids_path.exists()
            });
        let from_cache = cached.is_some();
        let index = match cached {
            Some(index) => index,
            None => tokenize_all(&files, tok, fp, &ids_path, &index_path, progress)?,
        };
        if index.docs.is_empty() {
            return Err(Error::NothingUsable {
                dirs: opts.dirs.clone(),
                files: files.len(),
            });
        }
        let file = std::fs::File::open(&ids_path).map_err(Error::io(&ids_path))?;
        // SAFETY: the cache file is private to the run folder and only ever replaced by
        // rename, never modified in place, so the mapping cannot change under us.
        let ids = unsafe { Mmap::map(&file) }.map_err(Error::io(&ids_path))?;
        let total: u64 = index.docs.iter().map(|d| u64::from(d.len)).sum();
        if ids.len() as u64 != 2 * total {
            return Err(Error::Format {
                path: ids_path,
                reason: format!("holds {} bytes, the index describes {total} ids", ids.len()),
            });
        }
        let bar = tok.bar_id();
        let bos = tok.bos_id();
        let mut docs = Vec::with_capacity(index.docs.len());
        for d in &index.docs {
            let offset = d.offset as usize;
            let len = d.len as usize;
            let bytes = &ids[2 * offset..2 * (offset + len)];
            let starts = bytes
                .chunks_exact(2)
                .enumerate()
                .filter(|(_, b)| {
                    let id = u32::from(u16::from_le_bytes([b[0], b[1]]));
                    id == bar || id == bos
                })
                .map(|(i, _)| i as u32)
                .collect();
            docs.push(Doc {
                name: d.name.clone(),
                offset,
                len,
                starts,
            });
        }
        let (train, val) = split(&docs, opts.val_fraction);
        let mut train_cum = Vec::with_capacity(train.len());
        let mut acc = 0u64;
        for &i in &train {
            acc += docs[i].len as u64;
            train_cum.push(acc);
        }
        let pitches: Vec<u32> = (0..=127u8)
            .filter_map(|p| tok.id(Token::Pitch(p)))
            .collect();
        let pitch_ids = match (pitches.first(), pitches.last()) {
            (Some(&lo), Some(&hi)) if (hi - lo) as usize + 1 == pitches.len() => (lo, hi),
            _ => {
                return Err(Error::Config(
                    "transposition needs contiguous pitch ids in the vocabulary".into(),
                ))
            }
        };
        debug_assert!(pitches
            .iter()
            .all(|&p| tok.kind(p) == Some(TokenKind::Pitch)));
        Ok(Self {
            ids,
            docs,
            train,
            val,
            train_cum,
            skipped: index.skipped,
            files: files.len(),
            from_cache,
            pad: tok.pad_id(),
            pitch_ids,
        })
    }

    /// Files that could not be used, with the reason.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// MIDI files found under the folders (used or skipped).
    pub fn files(&self) -> usize {
        self.files
    }

    /// Whether this load reused the id cache instead of tokenizing.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// Documents (files) used for training and for validation.
    pub fn split_sizes(&self) -> (usize, usize) {
        (self.train.len(), self.val.len())
    }

    /// Ids in the training and validation documents (framing tokens included).
    pub fn token_counts(&self) -> (u64, u64) {
        let count = |set: &[usize]| set.iter().map(|&i| self.docs[i].len as u64).sum();
        (count(&self.train), count(&self.val))
    }

    /// Names (folder/relative path) of the validation files.
    pub fn val_names(&self) -> Vec<&str> {
        self.val
            .iter()
            .map(|&i| self.docs[i].name.as_str())
            .collect()
    }

    /// The ids of document `i`.
    fn doc_ids(&self, i: usize) -> impl Iterator<Item = u32> + '_ {
        let d = &self.docs[i];
        self.ids[2 * d.offset..2 * (d.offset + d.len)]
            .chunks_exact(2)
            .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
    }

    /// Every training document's ids, one after the other (for the bigram baseline).
    pub fn train_docs(&self) -> impl Iterator<Item = Vec<u32>> + '_ {
        self.train.iter().map(|&i| self.doc_ids(i).collect())
    }

    /// Every validation document's ids (framing tokens included), one after the other.
    pub fn val_docs(&self) -> impl Iterator<Item = Vec<u32>> + '_ {
        self.val.iter().map(|&i| self.doc_ids(i).collect())
    }

    /// Copies `len` ids of document `doc` from `start` into `out`, padding past its end.
    fn window_into(&self, doc: usize, start: usize, len: usize, out: &mut Vec<u32>) {
        let before = out.len();
        out.extend(self.doc_ids(doc).skip(start).take(len));
        out.resize(before + len, self.pad);
    }

    /// A random training batch: `batch` windows of `seq + 1` ids, row-major, each starting at
    /// a bar of a document drawn in proportion to its length; transposed at random when
    /// `transpose` is set. Everything random comes from `rng`.
    pub fn sample_batch(
        &self,
        rng: &mut impl Rng,
        batch: usize,
        seq: usize,
        transpose: bool,
    ) -> Vec<u32> {
        let total = *self
            .train_cum
            .last()
            .expect("at least one training document");
        let mut out = Vec::with_capacity(batch * (seq + 1));
        for _ in 0..batch {
            let r = rng.random_range(0..total);
            let k = self.train_cum.partition_point(|&c| c <= r);
            let doc = self.train[k];
            let d = &self.docs[doc];
            // Prefer starts that leave a full window; a short document starts at its BOS.
            let fits = d
                .starts
                .partition_point(|&s| (s as usize) + seq < d.len)
                .max(1);
            let start = d.starts[rng.random_range(0..fits)] as usize;
            let from = out.len();
            self.window_into(doc, start, seq + 1, &mut out);
            if transpose {
                self.transpose(&mut out[from..], rng);
            }
        }
        out
    }

    /// Shifts every pitch of a window by the same random interval (up to a fifth either way)
    /// that keeps all of them inside the vocabulary's pitch range.
    fn transpose(&self, window: &mut [u32], rng: &mut impl Rng) {
        let (lo, hi) = self.pitch_ids;
        let is_pitch = |id: u32| (lo..=hi).contains(&id);
        let (mut min, mut max) = (u32::MAX, 0);
        for &id in window.iter().filter(|&&id| is_pitch(id)) {
            min = min.min(id);
            max = max.max(id);
        }
        if min > max {
            return;
        }
        let down = i64::from(min - lo).min(7);
        let up = i64::from(hi - max).min(7);
        let shift = rng.random_range(-down..=up);
        if shift == 0 {
            return;
        }
        for id in window.iter_mut().filter(|id| is_pitch(**id)) {
            *id = (i64::from(*id) + shift) as u32;
        }
    }

    /// The fixed validation windows (`seq + 1` ids each, row-major), at most `max_windows`:
    /// spread evenly over the validation files and, inside each file, placed at bars spread
    /// over the whole piece (from a per-file offset), so the estimate is not biased towards
    /// openings, which are sparser and easier than the rest of a piece.
    pub fn val_windows(&self, seq: usize, max_windows: usize) -> Vec<u32> {
        let n = self.val.len();
        let docs: Vec<usize> = if max_windows >= n {
            self.val.clone()
        } else {
            (0..max_windows)
                .map(|k| self.val[k * n / max_windows])
                .collect()
        };
        let per_doc = (max_windows / docs.len().max(1)).max(1);
        let mut out = Vec::new();
        let mut count = 0;
        'docs: for doc in docs {
            let d = &self.docs[doc];
            let fits = d
                .starts
                .partition_point(|&s| (s as usize) + seq < d.len)
                .max(1);
            let offset = (stable_hash(&d.name) % 1000) as f64 / 1000.0;
            for j in 0..per_doc {
                if count == max_windows {
                    break 'docs;
                }
                let frac = (offset + j as f64 / per_doc as f64).fract();
                let start = d.starts[((frac * fits as f64) as usize).min(fits - 1)] as usize;
                self.window_into(doc, start, seq + 1, &mut out);
                count += 1;
            }
        }
        out
    }
}

/// Documents by split: validation when the name's hash falls under the fraction. With two or
/// more documents both sides are non-empty.
fn split(docs: &[Doc], fraction: f64) -> (Vec<usize>, Vec<usize>) {
    let threshold = (fraction.clamp(0.0, 1.0) * 10_000.0) as u64;
    let hashes: Vec<u64> = docs.iter().map(|d| stable_hash(&d.name)).collect();
    let (mut val, mut train): (Vec<usize>, Vec<usize>) =
        (0..docs.len()).partition(|&i| hashes[i] % 10_000 < threshold);
    if docs.len() >= 2 && fraction > 0.0 {
        if val.is_empty() {
            let k = (0..train.len())
                .min_by_key(|&k| hashes[train[k]] % 10_000)
                .unwrap_or(0);
            val.push(train.remove(k));
        } else if train.is_empty() {
            train.push(val.pop().expect("non-empty"));
        }
    }
    (train, val)
}

fn tokenize_all(
    files: &[(PathBuf, String)],
    tok: &Tokenizer,
    fingerprint: String,
    ids_path: &Path,
    index_path: &Path,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Index> {
    let done = AtomicUsize::new(0);
    let results: Vec<std::result::Result<Vec<u32>, String>> = files
        .par_iter()
        .map(|(path, _)| {
            let r = Score::read_file(path)
                .map_err(|e| e.to_string())
                .and_then(|score| {
                    let ids = tok.encode(&score);
                    if ids.is_empty() {
                        Err(format!("{}: no notes to learn from", path.display()))
                    } else {
                        Ok(ids)
                    }
                });
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, files.len());
            r
        })
        .collect();
    let mut bytes = Vec::new();
    let mut docs = Vec::new();
    let mut skipped = Vec::new();
    let mut offset = 0u64;
    for ((path, name), result) in files.iter().zip(results) {
        match result {
            Ok(ids) => {
                let framed = std::iter::once(tok.bos_id())
                    .chain(ids)
                    .chain(std::iter::once(tok.eos_id()));
                let mut len = 0u32;
                for id in framed {
                    bytes.extend_from_slice(&(id as u16).to_le_bytes());
                    len += 1;
                }
                docs.push(DocEntry {
                    name: name.clone(),
                    offset,
                    len,
                });
                offset += u64::from(len);
            }
            Err(reason) => {
                tracing::warn!("skipped: {reason}");
                skipped.push(Skipped {
                    file: path.clone(),
                    reason,
                });
            }
        }
    }
    let index = Index {
        version: CACHE_VERSION,
        fingerprint,
        vocab_size: tok.vocab_size(),
        docs,
        skipped,
    };
    write_atomic(ids_path, &bytes)?;
    let text = serde_json::to_string(&index).expect("the index always serialises");
    write_atomic(index_path, text.as_bytes())?;
    Ok(index)
}

/// Writes `bytes` to `path` durably, through a temporary file and a rename, so a crash never
/// leaves a half-written file under the real name ([`crate::fs::write_atomically`]).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::fs::write_atomically(path, bytes).map_err(Error::io(path))
}
