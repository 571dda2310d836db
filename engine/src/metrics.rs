//! Measuring a continuation: against the true continuation, against its prime, and against the
//! token grammar.
//!
//! No single number says whether a continuation is good, so each function here measures one
//! musical property that a listener notices when it is wrong (wrong notes, wrong density, wrong
//! rhythm, wrong register, wrong key, looping, plain copying). All work on notes whose onsets are
//! relative to the start of what they describe (the prime's first bar line, or the continuation's
//! start, which is a bar line), at any one resolution shared by the arguments.
//!
//! Every score is a plain `f64`; where a measure is undefined (a ratio to zero notes, a key of
//! silence) the function returns `None` rather than inventing a value, so that averages over
//! many cases only count cases where the measure means something.

use crate::grammar::Grammar;
use crate::midi::{Note, Score};
use crate::time::Ticks;
use crate::tokenizer::{TokenId, Tokenizer};

/// Share of notes per pitch class (C = 0 … B = 11), summing to 1; all zero for no notes.
///
/// Counts notes rather than weighting by duration: a held chord and a run of the same pitches
/// are the same harmony, and counts match what `distinct_ngram_ratio` sees.
pub fn pitch_class_histogram(notes: &[Note]) -> [f64; 12] {
    let mut h = [0.0; 12];
    for n in notes {
        h[usize::from(n.pitch % 12)] += 1.0;
    }
    let total: f64 = h.iter().sum();
    if total > 0.0 {
        h.iter_mut().for_each(|v| *v /= total);
    }
    h
}

/// Histogram intersection of two pitch-class distributions, in [0, 1]: 1 when both use the
/// pitch classes in the same proportions. Two silences agree (1); silence and notes do not (0).
pub fn pitch_class_overlap(a: &[Note], b: &[Note]) -> f64 {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        _ => {
            let (ha, hb) = (pitch_class_histogram(a), pitch_class_histogram(b));
            ha.iter().zip(&hb).map(|(x, y)| x.min(*y)).sum()
        }
    }
}

/// Notes generated per note of the truth over the same span: 1 is the right density, 2 twice
/// too busy. `None` when the truth is silent (any ratio to zero is meaningless).
pub fn note_density_ratio(generated: &[Note], truth: &[Note]) -> Option<f64> {
    (!truth.is_empty()).then(|| generated.len() as f64 / truth.len() as f64)
}

/// Which steps of each bar hold at least one onset: `bars` rows of `bar_len / step` cells.
/// Onsets round to the nearest step (so a swung or triplet onset lands on its neighbour) and
/// onsets at or past `bars` bars are ignored.
pub fn onset_grid(notes: &[Note], bar_len: Ticks, step: Ticks, bars: u32) -> Vec<Vec<bool>> {
    let step = step.0.max(1);
    let cells = (bar_len.0 / step).max(1) as usize;
    let mut grid = vec![vec![false; cells]; bars as usize];
    for n in notes {
        let bar = (n.start.0 / bar_len.0.max(1)) as usize;
        if bar >= grid.len() {
            continue;
        }
        let in_bar = n.start.0 % bar_len.0.max(1);
        let cell = (((in_bar + step / 2) / step) as usize).min(cells - 1);
        grid[bar][cell] = true;
    }
    grid
}

/// Groove similarity (after Wu & Yang's "grooving pattern similarity", 2020): per bar,
/// `1 - (cells where exactly one of the two has an onset) / cells`, averaged over the bars.
/// 1 means every bar has onsets at the same steps as the truth's bar. Comparing bar `i` with
/// bar `i` (rather than all pairs) keeps a rhythm that is right but a bar late from scoring as
/// well as one that is on time.
pub fn groove_similarity(a: &[Note], b: &[Note], bar_len: Ticks, step: Ticks, bars: u32) -> f64 {
    if bars == 0 {
        return 1.0;
    }
    let (ga, gb) = (
        onset_grid(a, bar_len, step, bars),
        onset_grid(b, bar_len, step, bars),
    );
    let per_bar = ga.iter().zip(&gb).map(|(x, y)| {
        let differ = x.iter().zip(y).filter(|(p, q)| p != q).count();
        1.0 - differ as f64 / x.len() as f64
    });
    per_bar.sum::<f64>() / f64::from(bars)
}

/// Overlap of the pitch ranges (lowest to highest key, inclusive) as intersection over union, in
/// [0, 1]: did the continuation stay in the register the truth uses? Two silences agree (1);
/// silence and notes do not (0).
pub fn pitch_range_overlap(a: &[Note], b: &[Note]) -> f64 {
    let range = |notes: &[Note]| {
        let lo = notes.iter().map(|n| n.pitch).min()?;
        let hi = notes.iter().map(|n| n.pitch).max()?;
        Some((i32::from(lo), i32::from(hi)))
    };
    match (range(a), range(b)) {
        (None, None) => 1.0,
        (Some((alo, ahi)), Some((blo, bhi))) => {
            let inter = (ahi.min(bhi) - alo.max(blo) + 1).max(0);
            let union = ahi.max(bhi) - alo.min(blo) + 1;
            f64::from(inter) / f64::from(union)
        }
        _ => 0.0,
    }
}

pub use crate::key::{estimate_key, key_correlation, Key};

/// Key consistency with the prime: the correlation of the continuation's pitch classes with the
/// profile of the key estimated from the prime. A continuation that modulates or plays wrong
/// notes scores low even if its own notes form some other clear key. `None` when either is
/// silent.
pub fn key_consistency(prime: &[Note], continuation: &[Note]) -> Option<f64> {
    let (key, _) = estimate_key(prime)?;
    key_correlation(continuation, key)
}

/// Distinct n-grams over all n-grams of the pitch sequence (notes in onset order, chords low to
/// high), in (0, 1]: low values mean the same figure over and over. `None` with fewer than `n`
/// notes. Compare with the truth's own ratio: real music repeats too.
pub fn distinct_ngram_ratio(notes: &[Note], n: usize) -> Option<f64> {
    if n == 0 || notes.len() < n {
        return None;
    }
    let mut sorted: Vec<&Note> = notes.iter().collect();
    sorted.sort_by_key(|x| (x.start, x.pitch));
    let pitches: Vec<u8> = sorted.iter().map(|x| x.pitch).collect();
    let grams: std::collections::HashSet<&[u8]> = pitches.windows(n).collect();
    Some(grams.len() as f64 / (pitches.len() - n + 1) as f64)
}

/// The notes of each bar as (onset in the bar, pitch, duration), sorted: what "the same bar"
/// means for [`copied_bar_share`].
fn bar_contents(notes: &[Note], bar_len: Ticks) -> std::collections::BTreeMap<u64, Vec<[u64; 3]>> {
    let len = bar_len.0.max(1);
    let mut bars = std::collections::BTreeMap::<u64, Vec<[u64; 3]>>::new();
    for n in notes {
        bars.entry(n.start.0 / len).or_default().push([
            n.start.0 % len,
            u64::from(n.pitch),
            n.duration.0,
        ]);
    }
    bars.values_mut().for_each(|v| v.sort_unstable());
    bars
}

/// Share of the continuation's `bars` bars that repeat some bar of the prime note for note (same
/// onsets in the bar, pitches and durations; velocity ignored). Empty bars never count as copies.
/// High values mean the system loops the prime instead of continuing it.
pub fn copied_bar_share(prime: &[Note], continuation: &[Note], bar_len: Ticks, bars: u32) -> f64 {
    if bars == 0 {
        return 0.0;
    }
    let prime_bars: Vec<Vec<[u64; 3]>> = bar_contents(prime, bar_len).into_values().collect();
    let copied = bar_contents(continuation, bar_len)
        .iter()
        .filter(|(bar, notes)| **bar < u64::from(bars) && prime_bars.contains(notes))
        .count();
    copied as f64 / f64::from(bars)
}

/// Which of the `bars` bars (from 0, each `bar_len` long from the continuation's start) have no
/// note sounding in them: no onset, and nothing held over from before. A continuation that
/// stops partway, or leaves its last bars silent, shows here while still following the grammar.
pub fn silent_bars(notes: &[Note], bar_len: Ticks, bars: u32) -> Vec<u32> {
    let len = bar_len.0.max(1);
    (0..bars)
        .filter(|&bar| {
            let (from, to) = (u64::from(bar) * len, u64::from(bar + 1) * len);
            !notes.iter().any(|n| n.start.0 < to && n.end().0 > from)
        })
        .collect()
}

/// Whether `ids` (BOS first) follow the token grammar from start to end: the guarantee
/// generation makes, checked rather than assumed.
pub fn ids_follow_grammar(grammar: &Grammar, ids: &[TokenId]) -> bool {
    grammar.state_after(ids).is_ok()
}

/// Whether a score can be said in the vocabulary: its tokens (BOS first) follow the grammar and
/// decode back to the same notes. A system that works on notes (a baseline) can place notes the
/// tokens cannot express (off the grid, out of the pitch range, too long); this catches that.
pub fn notes_follow_grammar(tok: &Tokenizer, grammar: &Grammar, score: &Score) -> bool {
    let mut ids = vec![tok.bos_id()];
    tok.encode_into(score, &mut ids);
    if !ids_follow_grammar(grammar, &ids) {
        return false;
    }
    let Ok(decoded) = tok.decode(&ids[1..]) else {
        return false;
    };
    if score.ticks_per_quarter != decoded.ticks_per_quarter {
        return false;
    }
    let key = |n: &Note| (n.start, n.pitch, n.duration);
    let mut a: Vec<_> = score.notes.iter().map(key).collect();
    let mut b: Vec<_> = decoded.notes.iter().map(key).collect();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_is_silent_only_when_nothing_sounds_in_it() {
        let note = |start, duration| Note {
            start: Ticks(start),
            duration: Ticks(duration),
            pitch: 60,
            velocity: 80,
        };
        // Bars of 96: an onset in bar 0, a note held from bar 1 into bar 2, nothing in bar 3.
        let notes = [note(0, 10), note(150, 100)];
        assert_eq!(silent_bars(&notes, Ticks(96), 4), vec![3]);
        // A note ending exactly on a bar line does not sound in the next bar.
        assert_eq!(silent_bars(&[note(0, 96)], Ticks(96), 2), vec![1]);
        assert_eq!(silent_bars(&[], Ticks(96), 2), vec![0, 1]);
    }

    fn note(start: u64, duration: u64, pitch: u8) -> Note {
        Note {
            start: Ticks(start),
            duration: Ticks(duration),
            pitch,
            velocity: 80,
        }
    }

    #[test]
    fn pitch_class_overlap_is_histogram_intersection() {
        // a: C C E G → C 0.5, E 0.25, G 0.25. b: C E E A → C 0.25, E 0.5, A 0.25.
        let a = [
            note(0, 1, 60),
            note(1, 1, 72),
            note(2, 1, 64),
            note(3, 1, 67),
        ];
        let b = [
            note(0, 1, 48),
            note(1, 1, 64),
            note(2, 1, 76),
            note(3, 1, 69),
        ];
        // min: C 0.25 + E 0.25 + G 0 + A 0 = 0.5.
        assert!((pitch_class_overlap(&a, &b) - 0.5).abs() < 1e-12);
        assert_eq!(pitch_class_overlap(&a, &a), 1.0);
        assert_eq!(pitch_class_overlap(&a, &[]), 0.0);
        assert_eq!(pitch_class_overlap(&[], &[]), 1.0);
    }

    #[test]
    fn density_ratio_counts_notes_and_refuses_a_silent_truth() {
        let three = [note(0, 1, 60), note(1, 1, 62), note(2, 1, 64)];
        assert_eq!(note_density_ratio(&three, &three[..2]), Some(1.5));
        assert_eq!(note_density_ratio(&three, &[]), None);
    }

    #[test]
    fn groove_counts_differing_cells_per_bar() {
        // 4/4 at 24 ticks per quarter, sixteenth steps: 16 cells per bar, 2 bars.
        let (bar, step) = (Ticks(96), Ticks(6));
        // a: onsets on beats 1 and 3 of bar 1, beat 1 of bar 2.
        let a = [note(0, 6, 60), note(48, 6, 60), note(96, 6, 60)];
        // b: beats 1 and 2 of bar 1 (one cell added, one removed: 2 differ), bar 2 the same,
        // plus an onset 2 ticks late that rounds onto beat 1 (no difference).
        let b = [note(0, 6, 60), note(24, 6, 60), note(98, 6, 60)];
        // Bar 1: 1 - 2/16 = 0.875; bar 2: 1. Mean 0.9375.
        assert!((groove_similarity(&a, &b, bar, step, 2) - 0.9375).abs() < 1e-12);
        assert_eq!(groove_similarity(&a, &a, bar, step, 2), 1.0);
        let grid = onset_grid(&b, bar, step, 2);
        assert!(grid[0][0] && grid[0][4] && grid[1][0]);
        assert_eq!(grid[0].iter().filter(|c| **c).count(), 2);
    }

    #[test]
    fn pitch_range_overlap_is_intersection_over_union() {
        // 60..=67 (8 keys) and 64..=71 (8 keys): 4 shared of 12.
        let a = [note(0, 1, 60), note(1, 1, 67)];
        let b = [note(0, 1, 64), note(1, 1, 71)];
        assert!((pitch_range_overlap(&a, &b) - 4.0 / 12.0).abs() < 1e-12);
        assert_eq!(pitch_range_overlap(&a, &[note(0, 1, 80)]), 0.0);
        assert_eq!(pitch_range_overlap(&a, &[]), 0.0);
    }

    #[test]
    fn krumhansl_schmuckler_finds_the_key_of_a_scale_and_its_chords() {
        let c_major: Vec<Note> = [60, 62, 64, 65, 67, 69, 71, 72, 67, 64, 60]
            .iter()
            .enumerate()
            .map(|(i, &p)| note(i as u64 * 24, 24, p))
            .collect();
        let (key, r) = estimate_key(&c_major).unwrap();
        assert_eq!(key.to_string(), "C major");
        assert!(r > 0.8, "{r}");
        // A minor triad held long with passing E and C: A minor.
        let a_minor = [
            note(0, 96, 57),
            note(0, 96, 60),
            note(0, 96, 64),
            note(96, 48, 69),
        ];
        assert_eq!(estimate_key(&a_minor).unwrap().0.to_string(), "A minor");
        // The C major scale against itself correlates as estimated; the same line a tritone
        // away (F# major) is far less consistent with a C major prime.
        let same = key_consistency(&c_major, &c_major).unwrap();
        assert!((same - r).abs() < 1e-12);
        let tritone: Vec<Note> = c_major
            .iter()
            .map(|n| note(n.start.0, 24, n.pitch + 6))
            .collect();
        assert!(key_consistency(&c_major, &tritone).unwrap() < 0.0);
        assert_eq!(key_consistency(&[], &c_major), None);
    }

    #[test]
    fn distinct_ngrams_of_a_loop_and_of_a_line() {
        // C D E C D E C: 4-grams CDEC DECD ECDE CDEC → 3 distinct of 4.
        let loop_: Vec<Note> = [60, 62, 64, 60, 62, 64, 60]
            .iter()
            .enumerate()
            .map(|(i, &p)| note(i as u64, 1, p))
            .collect();
        assert_eq!(distinct_ngram_ratio(&loop_, 4), Some(0.75));
        let line: Vec<Note> = (0..8).map(|i| note(i, 1, 60 + i as u8)).collect();
        assert_eq!(distinct_ngram_ratio(&line, 4), Some(1.0));
        assert_eq!(distinct_ngram_ratio(&line[..3], 4), None);
    }

    #[test]
    fn copied_bars_match_note_for_note_ignoring_velocity() {
        let bar = Ticks(96);
        // Prime bar 0: C then E (quarters); bar 1: G (half).
        let prime = [note(0, 24, 60), note(24, 24, 64), note(96, 48, 67)];
        let mut loud_e = note(120, 24, 64);
        loud_e.velocity = 120;
        // Continuation bar 0 = prime bar 1, bar 1 = prime bar 0 louder (still a copy), bar 2 is
        // new, bar 3 is empty (not a copy): 2 of 4.
        let continuation = [note(0, 48, 67), note(96, 24, 60), loud_e, note(192, 24, 62)];
        assert_eq!(copied_bar_share(&prime, &continuation, bar, 4), 0.5);
        // Moving C by one tick breaks the copy of bar 0's content.
        let shifted = [note(0, 48, 67), note(97, 24, 60), loud_e, note(192, 24, 62)];
        assert_eq!(copied_bar_share(&prime, &shifted, bar, 4), 0.25);
    }

    #[test]
    fn grammar_accepts_encoded_scores_and_rejects_broken_ids() {
        let tok = Tokenizer::reference();
        let grammar = Grammar::new(&tok).unwrap();
        let mut score = Score::new(tok.ticks_per_quarter());
        score.notes = vec![note(0, 24, 60), note(24, 24, 64)];
        assert!(notes_follow_grammar(&tok, &grammar, &score));
        // A pitch below the vocabulary's range cannot be said.
        score.notes.push(note(48, 24, 5));
        assert!(!notes_follow_grammar(&tok, &grammar, &score));
        let mut ids = vec![tok.bos_id()];
        tok.encode_into(&Score::new(24), &mut ids);
        assert!(ids_follow_grammar(&grammar, &ids));
        // A Pitch right after BOS breaks it.
        let pitch = tok.id(crate::tokenizer::Token::Pitch(60)).unwrap();
        assert!(!ids_follow_grammar(&grammar, &[tok.bos_id(), pitch]));
    }
}
