//! The systems compared on a window: the model (decoder + adapter), the decoder alone, the
//! Markov continuator and "repeat the last bars". Each turns a window's prime into notes of the
//! continuation on the tokenizer's grid, timed, with its grammar checked.

use std::ops::ControlFlow;
use std::time::Instant;

use anyhow::{Context, Result};
use engine::baselines::{repeat_last_bars, MarkovContinuator};
use engine::generation::{Generator, Prime, Settings};
use engine::grammar::Grammar;
use engine::metrics;
use engine::midi::Note;
use engine::tokenizer::Tokenizer;

use crate::windows::{grid_score, shifted, Window};

/// Longest context the Markov continuator matches by default, in events. Pachet's
/// Continuator matches the longest context it has; learned from a few bars that rarely repeat a
/// long context, that replays the prime almost verbatim. Measured on 8 POP909 windows of 4 + 4
/// bars (seed 1): order 4 copies 94% of bars (as many as repeating them outright), order 3 78%,
/// order 2 66%, order 1 none but with far fewer distinct 4-grams (0.71 against the truth's
/// 0.99). Order 2 follows the prime's pitch pairs and branches wherever the prime reuses one.
pub const MARKOV_ORDER: usize = 2;

/// A system's continuation of one window.
#[derive(Clone, Debug)]
pub struct Output {
    /// Onsets from the continuation's start.
    pub notes: Vec<Note>,
    pub seconds: f64,
    /// The prime and the continuation together follow the token grammar (and, for systems that
    /// make notes rather than tokens, the notes survive tokenizing unchanged).
    pub grammar_valid: bool,
}

/// Continues a window with a model through its generator (grammar-masked sampling).
pub fn model(generator: &Generator<'_>, window: &Window, settings: &Settings) -> Result<Output> {
    let started = Instant::now();
    let prime = Prime::from_ids(
        generator.tokenizer(),
        generator.grammar(),
        &window.prime_ids,
        Some(window.start()),
        settings,
        generator.context(),
    )
    .with_context(|| format!("{}: cannot use it as a prime", window.name()))?;
    let (mut continuations, _) =
        generator.generate(&prime, settings, None, |_| ControlFlow::Continue(()))?;
    let seconds = started.elapsed().as_secs_f64();
    let continuation = continuations.remove(0);
    let mut ids = prime.ids().to_vec();
    ids.extend_from_slice(&continuation.ids);
    Ok(Output {
        notes: continuation.notes,
        seconds,
        grammar_valid: metrics::ids_follow_grammar(generator.grammar(), &ids),
    })
}

/// Continues a window with the model, sampling `k` candidates and keeping the one its
/// discriminator scores highest (judged with the prime's last `prime_bars` bars).
pub fn reranked(
    generator: &Generator<'_>,
    model: &engine::models::Model,
    window: &Window,
    settings: &Settings,
    k: usize,
    prime_bars: usize,
) -> Result<Output> {
    let started = Instant::now();
    let settings = Settings {
        variations: k,
        ..settings.clone()
    };
    let prime = Prime::from_ids(
        generator.tokenizer(),
        generator.grammar(),
        &window.prime_ids,
        Some(window.start()),
        &settings,
        generator.context(),
    )
    .with_context(|| format!("{}: cannot use it as a prime", window.name()))?;
    let (mut continuations, _) =
        generator.generate(&prime, &settings, None, |_| ControlFlow::Continue(()))?;
    let scores = engine::rerank::scores(model, &prime, &continuations, prime_bars)?;
    let best = engine::rerank::best(&scores).context("no candidate to rerank")?;
    let seconds = started.elapsed().as_secs_f64();
    let continuation = continuations.swap_remove(best);
    let mut ids = prime.ids().to_vec();
    ids.extend_from_slice(&continuation.ids);
    Ok(Output {
        notes: continuation.notes,
        seconds,
        grammar_valid: metrics::ids_follow_grammar(generator.grammar(), &ids),
    })
}

/// Continues a window with a Markov continuator of contexts up to `order` events, learned from
/// its prime.
pub fn markov(
    tok: &Tokenizer,
    grammar: &Grammar,
    window: &Window,
    order: usize,
    seed: u64,
) -> Output {
    let started = Instant::now();
    let markov = MarkovContinuator::learn(&window.prime, window.start(), order);
    let notes = markov.continue_from(window.start(), window.length(), seed);
    let seconds = started.elapsed().as_secs_f64();
    notes_output(tok, grammar, window, notes, seconds)
}

/// Continues a window by repeating the prime's last bars.
pub fn repeat(tok: &Tokenizer, grammar: &Grammar, window: &Window) -> Output {
    let started = Instant::now();
    let notes = repeat_last_bars(&window.prime, window.start(), window.bar_len, window.bars);
    let seconds = started.elapsed().as_secs_f64();
    notes_output(tok, grammar, window, notes, seconds)
}

fn notes_output(
    tok: &Tokenizer,
    grammar: &Grammar,
    window: &Window,
    notes: Vec<Note>,
    seconds: f64,
) -> Output {
    let mut score = grid_score(tok, window);
    score.notes = window.prime.clone();
    score.notes.extend(shifted(&notes, window.start()));
    score
        .notes
        .sort_by_key(|n| (n.start, n.duration, n.pitch, n.velocity));
    Output {
        grammar_valid: metrics::notes_follow_grammar(tok, grammar, &score),
        notes,
        seconds,
    }
}
