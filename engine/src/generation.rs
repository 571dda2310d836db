//! Continuing a phrase: prime → tokens → decoder (+ adapter) with a KV cache → grammar-masked
//! nucleus sampling → notes, streamed one by one.
//!
//! The continuation starts where the prime stops. If the prime ends mid-bar, the model first
//! finishes that bar (it counts as the continuation's first bar) and may not place an onset before
//! the prime's end; if it ends on a bar line, the continuation starts a new bar. The meter is
//! locked to the prime's, and the grammar guarantees that every continuation decodes and ends
//! exactly after the requested number of bars.
//!
//! Variations are one batch: the prime is prefilled once, its cache forked (every variation
//! attends to the one copy of the prime's keys and values), and all variations decode together,
//! each with its own random stream (seed + variation index). A variation that has finished leaves
//! the batch, so the others' remaining steps cost only what they need.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::{Device, Storage, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::grammar::{Grammar, GrammarError, GrammarState};
use crate::midi::{Note, Score};
use crate::models::{Model, ModelCache};
use crate::sampling::Sampler;
use crate::time::{Beats, Ticks, TimeSignature};
use crate::tokenizer::{Decoded, NoteDecoder, Token, TokenId, Tokenizer};

/// Most notes a continuation bar may hold: far denser than piano music gets, it only stops a
/// runaway model from stacking notes forever.
pub const MAX_NOTES_PER_BAR: usize = 48;

/// Tokens of a typical dense bar (`Bar TimeSig` + ~23 notes); the prime is cut to leave this much
/// room per continuation bar.
const TOKENS_PER_BAR: usize = 96;

/// Tokens that always suffice to finish the current note (`Position Pitch Velocity Duration`)
/// and end the sequence.
const CLOSING_MARGIN: usize = 8;

/// Context kept free for a continuation of `bars` bars.
fn continuation_reserve(bars: u32, context: usize) -> usize {
    ((bars as usize + 1) * TOKENS_PER_BAR + CLOSING_MARGIN).min(context / 2)
}

/// Tokens needed to close `bars_left` more bars as empty bars, from any point.
fn closing_tokens(bars_left: u32) -> usize {
    2 * (bars_left as usize + 1) + CLOSING_MARGIN
}

/// What can go wrong when continuing.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error("invalid setting: {0}")]
    Settings(String),
    #[error("the prime has no notes")]
    EmptyPrime,
    #[error("the prime's meter {0} has no TimeSig token in this model's vocabulary")]
    UnsupportedMeter(TimeSignature),
    #[error("{bars} bars do not fit in the model's context of {context} tokens (at most {max})")]
    TooManyBars { bars: u32, context: usize, max: u32 },
    #[error("the prime's tokens break the grammar: {0}")]
    Grammar(#[from] GrammarError),
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
    #[error("cancelled")]
    Cancelled,
}

/// How to continue.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Bars to generate (the unfinished last bar of the prime counts as the first).
    pub bars: u32,
    /// Softmax temperature; 0 is greedy.
    pub temperature: f32,
    /// Nucleus mass, in (0, 1].
    pub top_p: f32,
    pub seed: u64,
    /// Continuations to make from one prime (one batch).
    pub variations: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bars: 4,
            temperature: 1.0,
            top_p: 0.95,
            seed: 0,
            variations: 1,
        }
    }
}

impl Settings {
    pub fn validate(&self) -> Result<(), GenerationError> {
        let bad = |s: String| Err(GenerationError::Settings(s));
        if self.bars == 0 || self.bars > 256 {
            return bad(format!("bars must be within 1..=256, not {}", self.bars));
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!(
                "temperature must be a number >= 0, not {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top-p must be within (0, 1], not {}", self.top_p));
        }
        if self.variations == 0 || self.variations > 64 {
            return bad(format!(
                "variations must be within 1..=64, not {}",
                self.variations
            ));
        }
        Ok(())
    }
}

/// A prime ready to continue: its tokens, the grammar state after them and where on its
/// timeline the continuation starts.
#[derive(Clone, Debug)]
pub struct Prime {
    /// BOS, the prime's tokens (its last whole bars if it was too long for the context), and the
    /// `Bar TimeSig` tokens that lead to the continuation's first bar.
    ids: Vec<TokenId>,
    state: GrammarState,
    decoder: NoteDecoder,
    /// Continuation start on the tokens' own timeline (tokenizer resolution).
    start_in_tokens: Ticks,
    /// Ticks of the original timeline dropped with the bars cut for the context.
    dropped: Ticks,
    meter: TimeSignature,
    ticks_per_quarter: u16,
}

impl Prime {
    /// A prime from a whole score, or from its first `prime_bars` bars (the continuation then
    /// starts on the next bar line).
    pub fn from_score(
        tok: &Tokenizer,
        grammar: &Grammar,
        score: &Score,
        prime_bars: Option<u32>,
        settings: &Settings,
        context: usize,
    ) -> Result<Prime, GenerationError> {
        let mut ids = tok.encode(score);
        let mut end = None;
        if let Some(n) = prime_bars {
            let cut = ids
                .iter()
                .enumerate()
                .filter(|(_, &id)| id == tok.bar_id())
                .nth(n as usize)
                .map(|(i, _)| i);
            if let Some(cut) = cut {
                ids.truncate(cut);
                // The continuation starts on the bar line that was cut.
                let mut d = NoteDecoder::new(tok, first_meter(tok, &ids));
                ids.iter().for_each(|&id| {
                    d.push(tok.token(id).expect("encoded ids are in the vocabulary"));
                });
                end = Some(d.bar_start() + d.ticks_per_bar());
            }
        }
        Self::from_ids(tok, grammar, &ids, end, settings, context)
    }

    /// A prime from MidiTok ids (no BOS). `end` is where the prime stops on the ids' timeline
    /// (tokenizer resolution); by default the end of its last note.
    pub fn from_ids(
        tok: &Tokenizer,
        grammar: &Grammar,
        ids: &[TokenId],
        end: Option<Ticks>,
        settings: &Settings,
        context: usize,
    ) -> Result<Prime, GenerationError> {
        settings.validate()?;
        // Check the whole sequence once, and find where each bar starts in time.
        let mut state = grammar.start();
        grammar.advance(&mut state, tok.bos_id())?;
        let mut decoder = NoteDecoder::new(tok, first_meter(tok, ids));
        let mut bar_starts = Vec::new();
        let mut last_end = None::<Ticks>;
        for (i, &id) in ids.iter().enumerate() {
            grammar.advance(&mut state, id)?;
            let token = tok
                .token(id)
                .expect("grammar-checked ids are in the vocabulary");
            if let Decoded::Note(note) = decoder.push(token) {
                last_end = Some(last_end.map_or(note.end(), |e: Ticks| e.max(note.end())));
            }
            if token == Token::Bar {
                bar_starts.push((i, decoder.bar_start()));
            }
        }
        let Some(notes_end) = last_end else {
            return Err(GenerationError::EmptyPrime);
        };
        let end = end.unwrap_or(notes_end);
        let meter = decoder.meter();
        if !tok.supports(meter) {
            return Err(GenerationError::UnsupportedMeter(meter));
        }

        // Room for the continuation: a typical bar's worth of tokens per bar, at most half the
        // context. Generation closes bars early (empty) rather than overflow it, so even the
        // densest continuation keeps its bar count.
        let reserve = continuation_reserve(settings.bars, context);
        if closing_tokens(settings.bars) > context / 2 {
            let max = (context / 2).saturating_sub(CLOSING_MARGIN) / 2;
            return Err(GenerationError::TooManyBars {
                bars: settings.bars,
                context,
                max: max.saturating_sub(1) as u32,
            });
        }
        let budget = context - reserve;
        // Keep the last whole bars that fit (and at least the last bar).
        let first_kept = bar_starts
            .iter()
            .find(|(i, _)| 1 + ids.len() - i <= budget)
            .or(bar_starts.last())
            .copied()
            .unwrap_or((0, Ticks::ZERO));
        let kept = &ids[first_kept.0..];
        let dropped = first_kept.1;

        let mut prime_ids = Vec::with_capacity(kept.len() + 8);
        prime_ids.push(tok.bos_id());
        prime_ids.extend_from_slice(kept);
        let mut state = grammar.state_after(&prime_ids)?;
        let mut decoder = NoteDecoder::new(tok, first_meter(tok, kept));
        for &id in kept {
            decoder.push(tok.token(id).expect("checked above"));
        }

        // Walk to the bar the continuation starts in.
        let start = Ticks(end.0.saturating_sub(dropped.0));
        let bar_len = decoder.ticks_per_bar();
        let mut bar_start = decoder.bar_start();
        let start = start.max(bar_start);
        let meter_id = tok.time_signature_id(meter).expect("checked above");
        while start >= bar_start + bar_len {
            for id in [tok.bar_id(), meter_id] {
                grammar.advance(&mut state, id)?;
                decoder.push(tok.token(id).expect("vocabulary ids"));
                prime_ids.push(id);
            }
            bar_start = decoder.bar_start();
        }
        let step = decoder.ticks_per_position().0.max(1);
        let min_position = (start - bar_start).0.div_ceil(step);
        state.require_position_at_least(min_position as u16);
        state.lock_meter(meter);
        Ok(Prime {
            ids: prime_ids,
            state,
            decoder,
            start_in_tokens: start,
            dropped,
            meter,
            ticks_per_quarter: tok.ticks_per_quarter(),
        })
    }

    /// The tokens fed to the model (BOS first).
    pub fn ids(&self) -> &[TokenId] {
        &self.ids
    }

    /// Where the continuation starts on the prime's timeline, at the tokenizer's resolution.
    pub fn start(&self) -> Ticks {
        self.start_in_tokens + self.dropped
    }

    /// Where the continuation starts on the prime's timeline, in quarter notes.
    pub fn start_quarters(&self) -> Beats {
        self.start().to_quarters(self.ticks_per_quarter)
    }

    pub fn meter(&self) -> TimeSignature {
        self.meter
    }
}

fn first_meter(tok: &Tokenizer, ids: &[TokenId]) -> TimeSignature {
    ids.iter()
        .filter_map(|&id| tok.token(id))
        .take_while(|t| !matches!(t, Token::Pitch(_) | Token::Velocity(_) | Token::Duration(_)))
        .find_map(|t| match t {
            Token::TimeSig(ts) => Some(ts),
            _ => None,
        })
        .unwrap_or(TimeSignature::COMMON)
}

/// A note handed out as soon as it is sampled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StreamedNote {
    pub variation: usize,
    /// Onset in quarter notes after the continuation's start.
    pub onset: Beats,
    pub duration: Beats,
    pub pitch: u8,
    pub velocity: u8,
}

/// One finished continuation.
#[derive(Clone, Debug, PartialEq)]
pub struct Continuation {
    pub seed: u64,
    /// Sampled tokens, in order.
    pub ids: Vec<TokenId>,
    /// Notes on the tokenizer's grid, onsets relative to the continuation start.
    pub notes: Vec<Note>,
    /// Bars generated (always the requested number).
    pub bars: u32,
    /// From the continuation start to the end of its last bar, in ticks of the tokenizer grid.
    pub length: Ticks,
}

/// Timing of one generation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationStats {
    pub prefill: Duration,
    pub first_note: Option<Duration>,
    pub total: Duration,
    /// Tokens sampled, all variations together.
    pub tokens: usize,
    /// Decoding steps (each advances every variation by one token).
    pub steps: usize,
    /// Time spent masking and sampling (the rest of a step is the model).
    pub sampling: Duration,
}

/// Generation for one model.
#[derive(Debug)]
pub struct Generator<'m> {
    model: &'m Model,
    grammar: Grammar,
}

impl<'m> Generator<'m> {
    pub fn new(model: &'m Model) -> Result<Self, GenerationError> {
        Ok(Generator {
            model,
            grammar: Grammar::new(&model.tokenizer)?,
        })
    }

    pub fn grammar(&self) -> &Grammar {
        &self.grammar
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.model.tokenizer
    }

    /// The model's context length in tokens.
    pub fn context(&self) -> usize {
        self.model.config.max_seq_len
    }

    /// A prime from a score (see [`Prime::from_score`]) sized to this model's context.
    pub fn prime(
        &self,
        score: &Score,
        prime_bars: Option<u32>,
        settings: &Settings,
    ) -> Result<Prime, GenerationError> {
        Prime::from_score(
            &self.model.tokenizer,
            &self.grammar,
            score,
            prime_bars,
            settings,
            self.context(),
        )
    }

    /// An empty [`Prefix`] for incremental prefill.
    pub fn prefix(&self) -> Prefix {
        Prefix {
            ids: Vec::new(),
            cache: self.model.new_cache(self.context()),
            last_logits: None,
        }
    }

    /// Feeds more tokens into a prefix's cache (e.g. each bar as the musician finishes it), so
    /// that a continuation asked for later only processes what came after.
    pub fn extend_prefix(
        &self,
        prefix: &mut Prefix,
        ids: &[TokenId],
    ) -> Result<(), GenerationError> {
        if ids.is_empty() {
            return Ok(());
        }
        let device = self.model.decoder.device();
        let input = Tensor::from_slice(ids, (1, ids.len()), device)?;
        let logits = self.model.step(&input, &mut prefix.cache)?;
        prefix.last_logits = Some(logits.narrow(1, ids.len() - 1, 1)?);
        prefix.ids.extend_from_slice(ids);
        Ok(())
    }

    /// Continues `prime`, calling `on_note` for each note the moment its duration is sampled.
    /// `on_note` returning `Break`, or `cancel` becoming true, stops generation with
    /// [`GenerationError::Cancelled`].
    pub fn generate(
        &self,
        prime: &Prime,
        settings: &Settings,
        cancel: Option<&AtomicBool>,
        on_note: impl FnMut(&StreamedNote) -> ControlFlow<()>,
    ) -> Result<(Vec<Continuation>, GenerationStats), GenerationError> {
        self.generate_from(None, prime, settings, cancel, on_note)
    }

    /// [`Generator::generate`], starting from a prefix already in the model's cache when the
    /// prime's tokens begin with it (otherwise the prime is prefilled from scratch).
    pub fn generate_from(
        &self,
        prefix: Option<&Prefix>,
        prime: &Prime,
        settings: &Settings,
        cancel: Option<&AtomicBool>,
        mut on_note: impl FnMut(&StreamedNote) -> ControlFlow<()>,
    ) -> Result<(Vec<Continuation>, GenerationStats), GenerationError> {
        settings.validate()?;
        let started = Instant::now();
        let tok = &self.model.tokenizer;
        let device = self.model.decoder.device().clone();
        let k = settings.variations;
        let context = self.context();
        let capacity =
            (prime.ids.len() + continuation_reserve(settings.bars, context)).min(context);

        let reusable = prefix.filter(|p| !p.ids.is_empty() && prime.ids.starts_with(&p.ids));
        let (mut cache, done, previous) = match reusable {
            // A fork shares the prefix's positions instead of copying them.
            Some(p) => (p.cache.fork()?, p.ids.len(), p.last_logits.clone()),
            None => (self.model.new_cache(capacity), 0, None),
        };
        let rest = &prime.ids[done..];
        let last = if rest.is_empty() {
            previous.expect("a non-empty prefix has logits")
        } else {
            let input = Tensor::from_slice(rest, (1, rest.len()), &device)?;
            let logits = self.model.step(&input, &mut cache)?;
            logits.narrow(1, rest.len() - 1, 1)?
        };
        let mut logits = if k > 1 { last.repeat((k, 1, 1))? } else { last };
        let mut cache: ModelCache = if k > 1 { cache.fork()? } else { cache };
        let mut stats = GenerationStats {
            prefill: started.elapsed(),
            ..Default::default()
        };

        let mut runs: Vec<Run> = (0..k)
            .map(|v| Run {
                rng: ChaCha8Rng::seed_from_u64(settings.seed.wrapping_add(v as u64)),
                seed: settings.seed.wrapping_add(v as u64),
                state: prime.state,
                decoder: prime.decoder.clone(),
                bar: 1,
                notes_in_bar: 0,
                ids: Vec::with_capacity(capacity - prime.ids.len()),
                notes: Vec::new(),
                done: false,
            })
            .collect();
        let mut sampler = Sampler::new(tok.vocab_size());
        // Which run each row of the batch belongs to. A run that finishes leaves the batch, so
        // the steps after it cost what the remaining runs need.
        let mut active: Vec<usize> = (0..k).collect();
        let mut next_ids: Vec<TokenId> = vec![tok.pad_id(); k];
        let vocab = tok.vocab_size();
        let (bar, eos) = (tok.bar_id(), tok.eos_id());

        loop {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(GenerationError::Cancelled);
            }
            let mut stop = false;
            let sampling_started = Instant::now();
            with_rows(&logits, vocab, |r, row| {
                let v = active[r];
                let run = &mut runs[v];
                if run.done || stop {
                    next_ids[r] = tok.pad_id();
                    return;
                }
                let mut allowed = self.grammar.allowed(&run.state);
                let last_bar = run.bar >= settings.bars;
                if run.state.at_bar_boundary() {
                    // Close the bar now if it is full or the context is nearly used up.
                    let left = context.saturating_sub(prime.ids.len() + run.ids.len());
                    let must_close = run.notes_in_bar >= MAX_NOTES_PER_BAR
                        || left <= closing_tokens(settings.bars - run.bar.min(settings.bars));
                    if last_bar {
                        // In the last bar a new bar line means "finished": Bar and EOS both end.
                        if must_close {
                            allowed = allowed.restricted_to(&[eos]);
                        }
                    } else {
                        allowed.remove(eos);
                        if must_close {
                            allowed = allowed.restricted_to(&[bar]);
                        }
                    }
                }
                let id = sampler
                    .sample(
                        row,
                        &allowed,
                        settings.temperature,
                        settings.top_p,
                        &mut run.rng,
                    )
                    .unwrap_or(eos);
                if last_bar && (id == bar || id == eos) {
                    run.done = true;
                    next_ids[r] = tok.pad_id();
                    return;
                }
                self.grammar.advance_unchecked(&mut run.state, id);
                run.ids.push(id);
                stats.tokens += 1;
                next_ids[r] = id;
                let token = tok.token(id).expect("sampled ids are allowed ids");
                match token {
                    Token::Bar => {
                        run.bar += 1;
                        run.notes_in_bar = 0;
                    }
                    Token::Duration(_) => run.notes_in_bar += 1,
                    _ => {}
                }
                if let Decoded::Note(note) = run.decoder.push(token) {
                    let rel = Note {
                        start: note.start - prime.start_in_tokens,
                        ..note
                    };
                    run.notes.push(rel);
                    let tpq = prime.ticks_per_quarter;
                    let streamed = StreamedNote {
                        variation: v,
                        onset: rel.start.to_quarters(tpq),
                        duration: rel.duration.to_quarters(tpq),
                        pitch: rel.pitch,
                        velocity: rel.velocity,
                    };
                    stats.first_note.get_or_insert_with(|| started.elapsed());
                    if on_note(&streamed).is_break() {
                        stop = true;
                    }
                }
            })?;
            stats.sampling += sampling_started.elapsed();
            if stop {
                return Err(GenerationError::Cancelled);
            }
            if runs.iter().all(|r| r.done) {
                break;
            }
            let keep: Vec<usize> = (0..active.len())
                .filter(|&r| !runs[active[r]].done)
                .collect();
            if keep.len() < active.len() {
                cache = cache.select_rows(&keep)?;
                active = keep.iter().map(|&r| active[r]).collect();
                next_ids = keep.iter().map(|&r| next_ids[r]).collect();
            }
            let input = Tensor::from_slice(&next_ids, (active.len(), 1), &device)?;
            logits = self.model.step(&input, &mut cache)?;
            stats.steps += 1;
        }
        stats.total = started.elapsed();

        let continuations = runs
            .into_iter()
            .map(|run| {
                let end = run.decoder.bar_start() + run.decoder.ticks_per_bar();
                Continuation {
                    seed: run.seed,
                    ids: run.ids,
                    notes: run.notes,
                    bars: settings.bars,
                    length: end - prime.start_in_tokens,
                }
            })
            .collect();
        Ok((continuations, stats))
    }
}

/// Tokens already in a model cache, for incremental prefill (see [`Generator::extend_prefix`]).
#[derive(Clone, Debug)]
pub struct Prefix {
    ids: Vec<TokenId>,
    cache: ModelCache,
    last_logits: Option<Tensor>,
}

impl Prefix {
    /// The tokens fed so far.
    pub fn ids(&self) -> &[TokenId] {
        &self.ids
    }
}

/// One variation's progress.
struct Run {
    rng: ChaCha8Rng,
    seed: u64,
    state: GrammarState,
    decoder: NoteDecoder,
    /// The continuation bar being written, from 1.
    bar: u32,
    notes_in_bar: usize,
    ids: Vec<TokenId>,
    notes: Vec<Note>,
    done: bool,
}

/// Calls `f(row, logits)` for each row of `(k, 1, vocab)` logits, reading CPU memory in place
/// (no copy per step) and copying to the host once per step on other devices.
fn with_rows(
    logits: &Tensor,
    vocab: usize,
    mut f: impl FnMut(usize, &[f32]),
) -> candle_core::Result<()> {
    let logits = logits.to_dtype(candle_core::DType::F32)?.contiguous()?;
    let rows = logits.elem_count() / vocab;
    if matches!(logits.device(), Device::Cpu) {
        let (storage, layout) = logits.storage_and_layout();
        if let Storage::Cpu(cpu) = &*storage {
            let data = &cpu.as_slice::<f32>()?[layout.start_offset()..];
            for r in 0..rows {
                f(r, &data[r * vocab..(r + 1) * vocab]);
            }
            return Ok(());
        }
    }
    let data = logits.flatten_all()?.to_vec1::<f32>()?;
    for r in 0..rows {
        f(r, &data[r * vocab..(r + 1) * vocab]);
    }
    Ok(())
}
