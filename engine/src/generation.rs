//! Continuing a phrase: prime → tokens → decoder (+ adapter) with a KV cache → grammar-masked
//! nucleus sampling → notes, streamed one by one.
//!
//! **Where the continuation starts.** By default on the bar line at or after the prime's end (the
//! end of its last note, or the file's End of Track when that is later): a clip that closes with
//! a rest is a whole phrase, rest included, and the answer comes on the next downbeat, the way a
//! musician answers a call. [`Start::Now`] starts right where the prime stops instead: the model
//! first finishes that bar (it counts as the continuation's first bar) and may not place an onset
//! before the prime's end. The meter is locked to the prime's, and the grammar guarantees that
//! every continuation decodes and ends exactly after the requested number of bars, each holding at
//! least one note.
//!
//! **Any length.** The prime keeps as many of its last whole bars as fit in the context less a
//! small decoding margin. When a sequence's cache is full, its oldest whole bars are dropped and
//! the cache is rebuilt from what is kept (a *slide*): positions are rotary, so the kept tokens see
//! each other exactly as before, and every bar is written with the same attention budget. Nothing
//! is ever closed early for lack of room, so `bars` is bounded only by [`MAX_BARS`].
//!
//! Variations are one batch: the prime is prefilled once, its cache forked (every variation
//! attends to the one copy of the prime's keys and values), and all variations decode together,
//! each with its own random stream (seed + variation index). A variation that has finished leaves
//! the batch, so the others' remaining steps cost only what they need. A slide rebuilds each
//! variation's cache on its own (they keep different bars), so after one the variations decode
//! as separate batches of one.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::{Device, Storage, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::grammar::{Grammar, GrammarError, GrammarState};
use crate::key::{estimate_key, Key};
use crate::midi::{Note, Score};
use crate::models::{Model, ModelCache};
use crate::sampling::Sampler;
use crate::steering::{PhraseMemory, Plan, Steering};
use crate::time::{Beats, Ticks, TimeSignature};
use crate::tokenizer::{Decoded, NoteDecoder, Token, TokenId, TokenKind, Tokenizer};

/// Most notes a continuation bar may hold: far denser than piano music gets, it only stops a
/// runaway model from stacking notes forever.
pub const MAX_NOTES_PER_BAR: usize = 48;

/// Most bars one continuation may ask for: a sanity bound (about an hour of music at 120 BPM),
/// not a context limit.
pub const MAX_BARS: u32 = 1024;

/// Tokens the prime leaves free in the context: it keeps its last whole bars up to
/// `context - context / PRIME_MARGIN_DIVISOR`, so generation starts with the most the model can
/// hear and slides soon after.
const PRIME_MARGIN_DIVISOR: usize = 8;

/// A slide keeps at most `context - context / SLIDE_ROOM_DIVISOR` tokens. The room it frees is
/// the number of steps until the next slide, and each slide re-prefills what it keeps: a quarter
/// of the context spaces slides out enough that their prefill costs a fraction of decoding
/// (measured in `cargo xtask bench generate`), while the model still hears three quarters of
/// its context right after one.
const SLIDE_ROOM_DIVISOR: usize = 4;

/// Most tokens a prime keeps (BOS included) in a model of context `context`.
pub fn prime_budget(context: usize) -> usize {
    context - context / PRIME_MARGIN_DIVISOR
}

/// Most tokens a sequence keeps (BOS included) after a slide.
fn slide_budget(context: usize) -> usize {
    (context - context / SLIDE_ROOM_DIVISOR).max(2)
}

/// Drops the oldest whole bars of `window` (tokens after BOS) so that at most `limit` remain:
/// it keeps everything from the earliest `Bar` whose suffix fits. A single bar longer than
/// `limit` (only possible with a tiny context) is cut inside, which the model tolerates; the
/// grammar state lives outside the window and is not affected. Returns the tokens dropped.
fn drop_oldest_bars(window: &mut Vec<TokenId>, bar: TokenId, limit: usize) -> usize {
    let len = window.len();
    let cut = window
        .iter()
        .enumerate()
        .position(|(i, &id)| id == bar && len - i <= limit)
        .unwrap_or(len.saturating_sub(limit));
    window.drain(..cut);
    cut
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
    #[error(
        "the prime's last bar alone takes {tokens} tokens, more than the {budget} a prime may \
         keep in this model's context of {context}"
    )]
    BarTooLong {
        tokens: usize,
        budget: usize,
        context: usize,
    },
    #[error("the prime's tokens break the grammar: {0}")]
    Grammar(#[from] GrammarError),
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
    #[error("cancelled")]
    Cancelled,
}

/// Where a continuation starts when the prime's end is not on a bar line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Start {
    /// On the bar line at or after the prime's end: a rest at the end of the prime is part of
    /// the phrase, and every requested bar is a whole new bar.
    #[default]
    NextBar,
    /// Right where the prime stops: the rest of its last bar is the continuation's first bar.
    Now,
}

/// How to continue.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Bars to generate (with [`Start::Now`], the unfinished last bar of the prime counts as the
    /// first).
    pub bars: u32,
    /// Softmax temperature; 0 is greedy.
    pub temperature: f32,
    /// Nucleus mass, in (0, 1].
    pub top_p: f32,
    pub seed: u64,
    /// Continuations to make from one prime (one batch).
    pub variations: usize,
    /// Where the continuation starts when the prime does not end on a bar line.
    pub start: Start,
    /// Faithfulness, key, density and register (none by default).
    pub steering: Steering,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bars: 4,
            temperature: 1.0,
            top_p: 0.95,
            seed: 0,
            variations: 1,
            start: Start::default(),
            steering: Steering::default(),
        }
    }
}

impl Settings {
    pub fn validate(&self) -> Result<(), GenerationError> {
        let bad = |s: String| Err(GenerationError::Settings(s));
        if self.bars == 0 || self.bars > MAX_BARS {
            return bad(format!(
                "bars must be within 1..={MAX_BARS}, not {}",
                self.bars
            ));
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
        self.steering.validate().map_err(GenerationError::Settings)
    }
}

/// Where a prime stops, before the [`Start`] rule moves it to a bar line.
#[derive(Clone, Copy, Debug)]
enum PrimeEnd {
    /// Exactly here (a window cut at a bar line, the plugin's chosen start).
    At(Ticks),
    /// At the end of its last note, or here when that is later (a file's End of Track).
    NotBefore(Ticks),
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
    /// The key of all the prime's notes (Krumhansl–Schmuckler), for `key auto`.
    key: Option<Key>,
    /// The prime's tokens (all of them, also bars cut for the context), plus whatever else the
    /// caller remembers: what faithfulness follows.
    memory: PhraseMemory,
}

impl Prime {
    /// A prime from a whole score, or from its first `prime_bars` bars (the continuation then
    /// starts on the next bar line). A whole score ends at its last note or its End of Track,
    /// whichever is later; `settings.start` says whether the continuation waits for the next
    /// bar line.
    pub fn from_score(
        tok: &Tokenizer,
        grammar: &Grammar,
        score: &Score,
        prime_bars: Option<u32>,
        settings: &Settings,
        context: usize,
    ) -> Result<Prime, GenerationError> {
        let mut ids = tok.encode(score);
        // The End of Track on the tokens' grid (nearest step, as the tokenizer rounds onsets).
        let file_tpq = u64::from(score.ticks_per_quarter.max(1));
        let tok_tpq = u64::from(tok.ticks_per_quarter());
        let mut end = PrimeEnd::NotBefore(Ticks((score.end.0 * tok_tpq + file_tpq / 2) / file_tpq));
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
                end = PrimeEnd::At(d.bar_start() + d.ticks_per_bar());
            }
        }
        Self::build(tok, grammar, &ids, end, settings, context)
    }

    /// A prime from MidiTok ids (no BOS). `end` is where the prime stops on the ids' timeline
    /// (tokenizer resolution); by default the end of its last note. `settings.start` then says
    /// whether the continuation starts there or on the next bar line.
    pub fn from_ids(
        tok: &Tokenizer,
        grammar: &Grammar,
        ids: &[TokenId],
        end: Option<Ticks>,
        settings: &Settings,
        context: usize,
    ) -> Result<Prime, GenerationError> {
        let end = end.map_or(PrimeEnd::NotBefore(Ticks::ZERO), PrimeEnd::At);
        Self::build(tok, grammar, ids, end, settings, context)
    }

    fn build(
        tok: &Tokenizer,
        grammar: &Grammar,
        ids: &[TokenId],
        end: PrimeEnd,
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
        let mut notes = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            grammar.advance(&mut state, id)?;
            let token = tok
                .token(id)
                .expect("grammar-checked ids are in the vocabulary");
            if let Decoded::Note(note) = decoder.push(token) {
                last_end = Some(last_end.map_or(note.end(), |e: Ticks| e.max(note.end())));
                notes.push(note);
            }
            if token == Token::Bar {
                bar_starts.push((i, decoder.bar_start()));
            }
        }
        let Some(notes_end) = last_end else {
            return Err(GenerationError::EmptyPrime);
        };
        let end = match end {
            PrimeEnd::At(end) => end,
            PrimeEnd::NotBefore(end) => end.max(notes_end),
        };
        let meter = decoder.meter();
        if !tok.supports(meter) {
            return Err(GenerationError::UnsupportedMeter(meter));
        }

        // Keep the last whole bars that fit in the context less a small margin: generation
        // slides past the context's end, so the prime need not leave room for the bars to come.
        let budget = prime_budget(context);
        let first_kept = bar_starts
            .iter()
            .find(|(i, _)| 1 + ids.len() - i <= budget)
            .or(bar_starts.last())
            .copied()
            .unwrap_or((0, Ticks::ZERO));
        let kept = &ids[first_kept.0..];
        if 1 + kept.len() > budget {
            return Err(GenerationError::BarTooLong {
                tokens: kept.len(),
                budget,
                context,
            });
        }
        let dropped = first_kept.1;

        let mut prime_ids = Vec::with_capacity(kept.len() + 8);
        prime_ids.push(tok.bos_id());
        prime_ids.extend_from_slice(kept);
        let mut state = grammar.state_after(&prime_ids)?;
        let mut decoder = NoteDecoder::new(tok, first_meter(tok, kept));
        for &id in kept {
            decoder.push(tok.token(id).expect("checked above"));
        }

        // Walk to the bar the continuation starts in (with `Start::NextBar`, to the bar line at
        // or after the prime's end).
        let start = Ticks(end.0.saturating_sub(dropped.0));
        let bar_len = decoder.ticks_per_bar();
        let mut bar_start = decoder.bar_start();
        let mut start = start.max(bar_start);
        let meter_id = tok.time_signature_id(meter).expect("checked above");
        loop {
            while start >= bar_start + bar_len {
                for id in [tok.bar_id(), meter_id] {
                    grammar.advance(&mut state, id)?;
                    decoder.push(tok.token(id).expect("vocabulary ids"));
                    prime_ids.push(id);
                }
                bar_start = decoder.bar_start();
            }
            if settings.start == Start::NextBar && start > bar_start {
                start = bar_start + bar_len;
            } else {
                break;
            }
        }
        // Many empty bars walked (a long rest before the start) can overfill the context: the
        // model then hears the last of them, while the timeline (decoder, grammar) is unchanged.
        if prime_ids.len() > budget {
            let mut body = prime_ids.split_off(1);
            drop_oldest_bars(&mut body, tok.bar_id(), budget - 1);
            prime_ids.extend_from_slice(&body);
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
            key: estimate_key(&notes).map(|(key, _)| key),
            memory: {
                let mut memory = PhraseMemory::default();
                memory.remember(ids);
                memory
            },
        })
    }

    /// The prime's key, as `key auto` finds it.
    pub fn key(&self) -> Option<Key> {
        self.key
    }

    /// Adds other material of the player's to what faithfulness follows (the plugin's playing
    /// memory: everything played since the project opened), as MidiTok ids without BOS.
    pub fn remember(&mut self, ids: &[TokenId]) {
        self.memory.remember(ids);
    }

    /// Replaces what faithfulness follows (the prime's own tokens by default).
    pub fn set_memory(&mut self, memory: PhraseMemory) {
        self.memory = memory;
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
    /// Slides: a sequence's cache rebuilt from its last whole bars when it was full.
    pub slides: usize,
    /// Time the slides took (their re-prefill).
    pub sliding: Duration,
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

    /// Most tokens (BOS included) a prime keeps before its oldest bars are cut (see
    /// [`prime_budget`]).
    pub fn prime_budget(&self) -> usize {
        prime_budget(self.context())
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
        // Steering that cannot be met (a key with no pitch in the range) fails before any work.
        let plan =
            Plan::new(&settings.steering, tok, prime.key).map_err(GenerationError::Settings)?;
        let device = self.model.decoder.device().clone();
        let k = settings.variations;
        let context = self.context();

        let reusable = prefix.filter(|p| !p.ids.is_empty() && prime.ids.starts_with(&p.ids));
        let (mut cache, done, previous) = match reusable {
            // A fork shares the prefix's positions instead of copying them.
            Some(p) => (p.cache.fork()?, p.ids.len(), p.last_logits.clone()),
            None => (self.model.new_cache(context), 0, None),
        };
        let rest = &prime.ids[done..];
        let last = if rest.is_empty() {
            previous.expect("a non-empty prefix has logits")
        } else {
            let input = Tensor::from_slice(rest, (1, rest.len()), &device)?;
            let logits = self.model.step(&input, &mut cache)?;
            logits.narrow(1, rest.len() - 1, 1)?
        };
        let logits = if k > 1 { last.repeat((k, 1, 1))? } else { last };
        let cache: ModelCache = if k > 1 { cache.fork()? } else { cache };
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
                window: prime.ids[1..].to_vec(),
                ids: Vec::new(),
                notes: Vec::new(),
                done: false,
            })
            .collect();
        let faithfulness = plan.faithfulness();
        let tilt = plan.pitch_class_tilt(&prime.memory, settings.temperature);
        let mut shaped = vec![0.0f32; tok.vocab_size()];
        let mut votes = Vec::new();
        let mut sampler = Sampler::new(tok.vocab_size());
        // The sequences being decoded, as batches that share a cache length: one batch of all
        // variations until a slide gives each its own. A run that finishes leaves its batch, so
        // the steps after it cost what the remaining runs need.
        let mut batches = vec![Batch {
            cache,
            runs: (0..k).collect(),
            logits,
        }];
        let vocab = tok.vocab_size();
        let (bar, eos) = (tok.bar_id(), tok.eos_id());

        loop {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(GenerationError::Cancelled);
            }
            let mut stop = false;
            let sampling_started = Instant::now();
            for batch in &batches {
                with_rows(&batch.logits, vocab, |r, row| {
                    let v = batch.runs[r];
                    let run = &mut runs[v];
                    if run.done || stop {
                        return;
                    }
                    let mut allowed = self.grammar.allowed(&run.state);
                    let last_bar = run.bar >= settings.bars;
                    // Every bar gets at least one note (an empty bar in an answer reads as the
                    // model giving up, not as a rest), and a density target sets how many.
                    let target = plan.bar_target(&run.state);
                    let (least, most) = target.map_or((1, MAX_NOTES_PER_BAR), |t| (t, t));
                    if run.state.at_bar_boundary() {
                        if run.notes_in_bar < least {
                            let mut with_note = allowed;
                            with_note.remove(bar);
                            with_note.remove(eos);
                            if !with_note.is_empty() {
                                allowed = with_note;
                            }
                        } else if run.notes_in_bar >= most {
                            // In the last bar a new bar line means "finished": Bar and EOS
                            // both end.
                            allowed = allowed.restricted_to(&[if last_bar { eos } else { bar }]);
                        }
                        if !last_bar {
                            allowed.remove(eos);
                        }
                    }
                    let matched = if faithfulness > 0.0 {
                        // The context reaches back to the note's onset (or bar line), so the
                        // memory speaks from the same place in the bar.
                        let anchor = run
                            .window
                            .iter()
                            .rev()
                            .position(|&id| {
                                matches!(tok.kind(id), Some(TokenKind::Position | TokenKind::Bar))
                            })
                            .map_or(0, |back| back + 1);
                        prime
                            .memory
                            .predict_anchored(&run.window, anchor, &mut votes)
                    } else {
                        0
                    };
                    // Where no context matches, faithfulness still leans on the player's pitch
                    // classes (the memory's reduced viewpoint).
                    let tilted = tilt.as_ref().filter(|_| matched == 0);
                    let row = if plan.shapes_logits() || tilted.is_some() {
                        shaped.copy_from_slice(row);
                        let owed = target.map_or(0, |t| t.saturating_sub(run.notes_in_bar));
                        plan.shape(&mut shaped, &allowed, &run.state, owed);
                        for &(id, offset) in tilted.into_iter().flatten() {
                            shaped[id as usize] += offset;
                        }
                        &shaped[..]
                    } else {
                        row
                    };
                    let id = if matched > 0 {
                        sampler.sample_mixed(
                            row,
                            &allowed,
                            settings.temperature,
                            settings.top_p,
                            &votes,
                            faithfulness,
                            &mut run.rng,
                        )
                    } else {
                        sampler.sample(
                            row,
                            &allowed,
                            settings.temperature,
                            settings.top_p,
                            &mut run.rng,
                        )
                    }
                    .unwrap_or(eos);
                    if last_bar && (id == bar || id == eos) {
                        run.done = true;
                        return;
                    }
                    self.grammar.advance_unchecked(&mut run.state, id);
                    run.ids.push(id);
                    run.window.push(id);
                    stats.tokens += 1;
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
            }
            stats.sampling += sampling_started.elapsed();
            if stop {
                return Err(GenerationError::Cancelled);
            }
            if runs.iter().all(|r| r.done) {
                break;
            }
            let mut next = Vec::with_capacity(batches.len());
            for mut batch in batches {
                let keep: Vec<usize> = (0..batch.runs.len())
                    .filter(|&r| !runs[batch.runs[r]].done)
                    .collect();
                if keep.is_empty() {
                    continue;
                }
                if keep.len() < batch.runs.len() {
                    batch.cache = batch.cache.select_rows(&keep)?;
                    batch.runs = keep.iter().map(|&r| batch.runs[r]).collect();
                }
                if batch.cache.len() >= context {
                    // Full: each sequence keeps its own last whole bars and goes on alone.
                    let sliding = Instant::now();
                    for &v in &batch.runs {
                        next.push(self.slide(&mut runs[v], v, context)?);
                        stats.slides += 1;
                    }
                    stats.sliding += sliding.elapsed();
                    continue;
                }
                let input: Vec<TokenId> = batch
                    .runs
                    .iter()
                    .map(|&v| *runs[v].window.last().expect("a token was just sampled"))
                    .collect();
                let input = Tensor::from_slice(&input, (input.len(), 1), &device)?;
                batch.logits = self.model.step(&input, &mut batch.cache)?;
                stats.steps += 1;
                next.push(batch);
            }
            batches = next;
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

    /// Drops a run's oldest whole bars and rebuilds its cache from BOS and what is kept (its
    /// newest token included), as a batch of its own.
    fn slide(&self, run: &mut Run, v: usize, context: usize) -> Result<Batch, GenerationError> {
        let tok = &self.model.tokenizer;
        drop_oldest_bars(&mut run.window, tok.bar_id(), slide_budget(context) - 1);
        let mut ids = Vec::with_capacity(run.window.len() + 1);
        ids.push(tok.bos_id());
        ids.extend_from_slice(&run.window);
        let mut cache = self.model.new_cache(context);
        let input = Tensor::from_slice(&ids, (1, ids.len()), self.model.decoder.device())?;
        let logits = self.model.step(&input, &mut cache)?;
        Ok(Batch {
            cache,
            runs: vec![v],
            logits: logits.narrow(1, ids.len() - 1, 1)?,
        })
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

/// Sequences decoded together: their caches hold the same number of positions.
struct Batch {
    cache: ModelCache,
    /// The runs whose sequences are the batch's rows, in row order.
    runs: Vec<usize>,
    /// The next-token logits of each row, `(rows, 1, vocab)`.
    logits: Tensor,
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
    /// The tokens in this run's cache after BOS: the prime's kept bars and what was sampled,
    /// less the bars slides dropped.
    window: Vec<TokenId>,
    /// Sampled tokens, in order.
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

#[cfg(test)]
mod tests {
    use super::drop_oldest_bars;

    #[test]
    fn a_slide_drops_whole_bars_from_the_oldest() {
        const BAR: u32 = 4;
        // Three bars of 5, 4 and 3 tokens.
        let bars = [BAR, 1, 2, 3, 9, BAR, 1, 2, 3, BAR, 1, 2];
        let mut window = bars.to_vec();
        assert_eq!(drop_oldest_bars(&mut window, BAR, 8), 5);
        assert_eq!(window, &bars[5..]);
        let mut window = bars.to_vec();
        assert_eq!(drop_oldest_bars(&mut window, BAR, 6), 9);
        assert_eq!(window, &bars[9..]);
        // Everything fits: nothing goes.
        let mut window = bars.to_vec();
        assert_eq!(drop_oldest_bars(&mut window, BAR, 12), 0);
        // The last bar alone is too long: cut inside it, keeping the newest tokens.
        let mut window = bars.to_vec();
        assert_eq!(drop_oldest_bars(&mut window, BAR, 2), 10);
        assert_eq!(window, &[1, 2]);
    }
}
