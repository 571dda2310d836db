//! Continuing phrases with a random-weight tiny model: every output decodes, ends after the
//! requested bars, starts where the prime stops, keeps its meter, and streams what it returns.

mod common;

use std::ops::ControlFlow;
use std::sync::atomic::AtomicBool;

use common::example;
use engine::generation::{
    Continuation, GenerationError, GenerationStats, Generator, Prime, Settings, Start,
    StreamedNote, MAX_BARS,
};
use engine::midi::Score;
use engine::models::Model;
use engine::time::Ticks;
use engine::tokenizer::Tokenizer;

fn tiny_model() -> Model {
    common::tiny_model(1024)
}

/// Checks one continuation's invariants; returns the number of notes.
fn check(
    tok: &Tokenizer,
    ids: &[u32],
    notes: &[engine::midi::Note],
    bars: u32,
    meter: &str,
) -> usize {
    // The first bar is entered by the prime (or its unfinished last bar), so a continuation of
    // `bars` bars holds exactly `bars - 1` bar lines.
    let bar_lines = ids.iter().filter(|&&id| id == tok.bar_id()).count() as u32;
    assert_eq!(bar_lines, bars - 1, "bar lines for {bars} bars");
    for &id in ids {
        if let Some(engine::tokenizer::Token::TimeSig(ts)) = tok.token(id) {
            assert_eq!(ts.to_string(), meter, "meter changed");
        }
    }
    for n in notes {
        assert!((21..=108).contains(&n.pitch), "{n}");
        assert!(n.duration.0 > 0 && n.velocity > 0, "{n}");
    }
    notes.len()
}

/// Generates, keeping every streamed note too.
fn generate_streamed(
    generator: &Generator<'_>,
    prime: &Prime,
    settings: &Settings,
) -> (Vec<Continuation>, GenerationStats, Vec<StreamedNote>) {
    let mut streamed = Vec::new();
    let (continuations, stats) = generator
        .generate(prime, settings, None, |n| {
            streamed.push(*n);
            ControlFlow::Continue(())
        })
        .unwrap();
    (continuations, stats, streamed)
}

/// Each variation's streamed notes are its returned notes, in the same order, onsets rising.
fn assert_streamed_as_returned(streamed: &[StreamedNote], continuations: &[Continuation]) {
    for (v, c) in continuations.iter().enumerate() {
        let mine: Vec<(f64, f64, u8, u8)> = streamed
            .iter()
            .filter(|n| n.variation == v)
            .map(|n| (n.onset.0, n.duration.0, n.pitch, n.velocity))
            .collect();
        let returned: Vec<(f64, f64, u8, u8)> = c
            .notes
            .iter()
            .map(|n| {
                (
                    n.start.0 as f64 / 24.0,
                    n.duration.0 as f64 / 24.0,
                    n.pitch,
                    n.velocity,
                )
            })
            .collect();
        assert_eq!(mine, returned, "variation {v}");
        assert!(
            mine.windows(2).all(|w| w[0].0 <= w[1].0),
            "onsets out of order"
        );
    }
}

#[test]
fn a_thousand_hot_generations_always_decode_with_the_exact_bar_count() {
    let model = tiny_model();
    let generator = Generator::new(&model).unwrap();
    let tok = &model.tokenizer;
    let prime_score = example("pop_4_4.mid");
    let mut total_notes = 0;
    let mut runs = 0;
    // 100 batches of 10 variations = 1,000 continuations.
    for seed in 0..100u64 {
        let settings = Settings {
            bars: 2,
            temperature: 1.5,
            top_p: 1.0,
            seed: seed * 10,
            variations: 10,
            ..Settings::default()
        };
        let prime = generator.prime(&prime_score, Some(2), &settings).unwrap();
        let (continuations, _) = generator
            .generate(&prime, &settings, None, |_| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(continuations.len(), 10);
        for c in &continuations {
            total_notes += check(tok, &c.ids, &c.notes, 2, "4/4");
            // The continuation is exactly two 4/4 bars long (it starts on a bar line).
            assert_eq!(c.length, Ticks(2 * 4 * 24));
            assert!(c.notes.iter().all(|n| n.start < c.length));
            runs += 1;
        }
    }
    assert_eq!(runs, 1000);
    assert!(
        total_notes > 1000,
        "only {total_notes} notes in 1,000 continuations"
    );
}

#[test]
fn same_seed_same_output_and_different_seeds_differ() {
    let model = tiny_model();
    let generator = Generator::new(&model).unwrap();
    let score = example("pop_4_4.mid");
    let run = |seed| {
        let settings = Settings {
            bars: 2,
            temperature: 1.2,
            seed,
            ..Settings::default()
        };
        let prime = generator.prime(&score, None, &settings).unwrap();
        generator
            .generate(&prime, &settings, None, |_| ControlFlow::Continue(()))
            .unwrap()
            .0
            .remove(0)
    };
    assert_eq!(run(7).ids, run(7).ids);
    assert_ne!(run(7).ids, run(8).ids);
}

#[test]
fn streaming_yields_the_returned_notes_in_order() {
    let model = tiny_model();
    let generator = Generator::new(&model).unwrap();
    let score = example("pop_4_4.mid");
    let settings = Settings {
        bars: 3,
        temperature: 1.3,
        seed: 3,
        variations: 2,
        ..Settings::default()
    };
    let prime = generator.prime(&score, Some(3), &settings).unwrap();
    let (continuations, stats, streamed) = generate_streamed(&generator, &prime, &settings);
    assert_streamed_as_returned(&streamed, &continuations);
    assert!(stats.first_note.is_some() || streamed.is_empty());
}

#[test]
fn cancellation_stops_generation() {
    let model = tiny_model();
    let generator = Generator::new(&model).unwrap();
    let score = example("pop_4_4.mid");
    let settings = Settings {
        bars: 4,
        temperature: 1.5,
        seed: 1,
        ..Settings::default()
    };
    let prime = generator.prime(&score, None, &settings).unwrap();
    let cancel = AtomicBool::new(true);
    let err = generator
        .generate(&prime, &settings, Some(&cancel), |_| {
            ControlFlow::Continue(())
        })
        .unwrap_err();
    assert!(matches!(err, GenerationError::Cancelled));
    let mut seen = 0;
    let result = generator.generate(&prime, &settings, None, |_| {
        seen += 1;
        ControlFlow::Break(())
    });
    assert!(seen <= 1);
    if seen == 1 {
        assert!(matches!(result, Err(GenerationError::Cancelled)));
    }
}

#[test]
fn a_prime_in_three_four_is_continued_in_three_four() {
    let model = tiny_model();
    let generator = Generator::new(&model).unwrap();
    let score = example("waltz_3_4.mid");
    for seed in 0..20 {
        let settings = Settings {
            bars: 3,
            temperature: 1.5,
            top_p: 1.0,
            seed,
            variations: 1,
            ..Settings::default()
        };
        let prime = generator.prime(&score, None, &settings).unwrap();
        assert_eq!(prime.meter().to_string(), "3/4");
        let (c, _) = generator
            .generate(&prime, &settings, None, |_| ControlFlow::Continue(()))
            .unwrap();
        check(&model.tokenizer, &c[0].ids, &c[0].notes, 3, "3/4");
        assert_eq!(c[0].length, Ticks(3 * 3 * 24));
    }
}

#[test]
fn with_start_now_a_prime_ending_mid_bar_is_finished_first_and_onsets_never_precede_its_end() {
    let model = tiny_model();
    let generator = Generator::new(&model).unwrap();
    let mut score = example("pop_4_4.mid");
    // Keep only what starts in the first bar and a half, cut to end at beat 6 (mid bar 2).
    let q = u64::from(score.ticks_per_quarter);
    score.notes.retain(|n| n.start.0 < 5 * q);
    for n in &mut score.notes {
        n.duration = Ticks(n.duration.0.min(6 * q - n.start.0));
    }
    // The file's End of Track (bar 4) would be the prime's end: this clip ends with its notes.
    score.end = Ticks::ZERO;
    for seed in 0..50 {
        let settings = Settings {
            bars: 2,
            temperature: 1.5,
            top_p: 1.0,
            seed,
            variations: 1,
            start: Start::Now,
            steering: Default::default(),
        };
        let prime = generator.prime(&score, None, &settings).unwrap();
        assert_eq!(prime.start(), Ticks(6 * 24), "the prime ends at beat 6");
        let (c, _) = generator
            .generate(&prime, &settings, None, |_| ControlFlow::Continue(()))
            .unwrap();
        // Two bars: the rest of bar 2 (2 beats) and bar 3.
        assert_eq!(c[0].length, Ticks(2 * 24 + 4 * 24));
        check(&model.tokenizer, &c[0].ids, &c[0].notes, 2, "4/4");
        assert!(c[0].notes.iter().all(|n| n.start < c[0].length));
    }
}

#[test]
fn bad_settings_and_empty_primes_are_refused() {
    let model = tiny_model();
    let generator = Generator::new(&model).unwrap();
    let score = example("pop_4_4.mid");
    for settings in [
        Settings {
            temperature: -0.1,
            ..Settings::default()
        },
        Settings {
            top_p: 0.0,
            ..Settings::default()
        },
        Settings {
            top_p: 1.5,
            ..Settings::default()
        },
        Settings {
            bars: 0,
            ..Settings::default()
        },
        Settings {
            temperature: f32::NAN,
            ..Settings::default()
        },
    ] {
        assert!(
            matches!(
                generator.prime(&score, None, &settings),
                Err(GenerationError::Settings(_))
            ),
            "{settings:?}"
        );
    }
    let empty = Score::new(480);
    assert!(matches!(
        generator.prime(&empty, None, &Settings::default()),
        Err(GenerationError::EmptyPrime)
    ));
    let too_many = Settings {
        bars: MAX_BARS + 1,
        ..Settings::default()
    };
    assert!(matches!(
        generator.prime(&score, None, &too_many),
        Err(GenerationError::Settings(_))
    ));
    // Long continuations are bounded by the sanity limit only, not by the context.
    let long = Settings {
        bars: MAX_BARS,
        ..Settings::default()
    };
    assert!(generator.prime(&score, None, &long).is_ok());
}

#[test]
fn greedy_is_deterministic_whatever_the_seed() {
    let model = tiny_model();
    let generator = Generator::new(&model).unwrap();
    let score = example("waltz_3_4.mid");
    let run = |seed| {
        let settings = Settings {
            bars: 2,
            temperature: 0.0,
            seed,
            ..Settings::default()
        };
        let prime = generator.prime(&score, None, &settings).unwrap();
        generator
            .generate(&prime, &settings, None, |_| ControlFlow::Continue(()))
            .unwrap()
            .0
            .remove(0)
            .ids
    };
    assert_eq!(run(1), run(2));
}

#[test]
fn a_prefilled_prefix_gives_the_same_continuation_as_a_full_prefill() {
    let model = tiny_model();
    let generator = Generator::new(&model).unwrap();
    let score = example("pop_4_4.mid");
    let settings = Settings {
        bars: 2,
        temperature: 0.0,
        seed: 5,
        ..Settings::default()
    };
    let prime = generator.prime(&score, Some(3), &settings).unwrap();
    let (full, _) = generator
        .generate(&prime, &settings, None, |_| ControlFlow::Continue(()))
        .unwrap();

    // Feed the prime bar by bar, as the plugin does while the musician plays.
    let ids = prime.ids();
    let bar_starts: Vec<usize> = ids
        .iter()
        .enumerate()
        .filter(|(_, &id)| id == model.tokenizer.bar_id())
        .map(|(i, _)| i)
        .collect();
    let mut prefix = generator.prefix();
    let mut fed = 0;
    for &b in &bar_starts[1..] {
        generator.extend_prefix(&mut prefix, &ids[fed..b]).unwrap();
        fed = b;
    }
    assert!(fed > 0 && fed < ids.len());
    let (incremental, stats) = generator
        .generate_from(Some(&prefix), &prime, &settings, None, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(incremental[0].ids, full[0].ids);
    assert_eq!(incremental[0].notes, full[0].notes);
    assert!(stats.tokens > 0);

    // A prefix that is not a prefix of the prime is ignored, not misused.
    let mut other = generator.prefix();
    generator
        .extend_prefix(
            &mut other,
            &[model.tokenizer.bos_id(), model.tokenizer.bar_id()],
        )
        .unwrap();
    generator
        .extend_prefix(
            &mut other,
            &[model
                .tokenizer
                .time_signature_id(engine::time::TimeSignature::new(3, 4).unwrap())
                .unwrap()],
        )
        .unwrap();
    let (again, _) = generator
        .generate_from(Some(&other), &prime, &settings, None, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(again[0].ids, full[0].ids);
}

#[test]
fn a_prime_longer_than_the_context_keeps_its_last_whole_bars() {
    let model = tiny_model();
    let generator = Generator::new(&model).unwrap();
    let tok = &model.tokenizer;
    // Forty bars: the example repeated ten times.
    let one = example("pop_4_4.mid");
    let bar4 = 16 * u64::from(one.ticks_per_quarter);
    let mut long = one.clone();
    long.notes = (0..10u64)
        .flat_map(|i| {
            one.notes.iter().map(move |n| engine::midi::Note {
                start: Ticks(n.start.0 + i * bar4),
                ..*n
            })
        })
        .collect();
    long.notes
        .sort_by_key(|n| (n.start, n.duration, n.pitch, n.velocity));
    let full_ids = tok.encode(&long);
    assert!(
        full_ids.len() > 1024,
        "the test prime must not fit ({} tokens)",
        full_ids.len()
    );

    let settings = Settings {
        bars: 2,
        temperature: 1.0,
        seed: 1,
        ..Settings::default()
    };
    let prime = generator.prime(&long, None, &settings).unwrap();
    // The prime fills the context less a small margin (generation slides past its end), the
    // kept part starts on a bar line, and the start is still the end of the whole prime (bar
    // 40, in 24-per-quarter ticks).
    let budget = engine::generation::prime_budget(1024);
    assert_eq!(generator.prime_budget(), budget);
    let kept_tokens = prime.ids().len() - 2; // less the walk to the next bar
    assert!(
        kept_tokens <= budget && kept_tokens > 1024 / 2,
        "{} prime tokens",
        prime.ids().len()
    );
    assert_eq!(prime.ids()[0], tok.bos_id());
    assert_eq!(prime.ids()[1], tok.bar_id());
    let kept = &prime.ids()[1..];
    assert!(
        full_ids.ends_with(&kept[..kept.len() - 2]),
        "not a suffix of whole bars"
    );
    assert_eq!(prime.start(), Ticks(40 * 4 * 24));
    let (c, _) = generator
        .generate(&prime, &settings, None, |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(c[0].length, Ticks(2 * 4 * 24));
}

/// A 4-bar prime in `meter` (bar of `bar_quarters` quarter notes) whose notes stop half-way
/// through its last bar: a clip that ends with a rest.
fn prime_ending_with_a_rest(numerator: u8, denominator: u8) -> Score {
    let mut score = Score::new(480);
    score.time_signatures[0].signature =
        engine::time::TimeSignature::new(numerator, denominator).unwrap();
    let bar = 480 * 4 * u64::from(numerator) / u64::from(denominator);
    let eighth = 240;
    let last = 3 * bar + bar / 2;
    score.notes = (0..last / eighth)
        .map(|i| engine::midi::Note {
            start: Ticks(i * eighth),
            duration: Ticks(eighth),
            pitch: 60 + (i % 5) as u8,
            velocity: 80,
        })
        .collect();
    score
}

#[test]
fn a_prime_ending_with_a_rest_is_answered_on_the_next_bar_line_unless_asked_now() {
    let model = tiny_model();
    let generator = Generator::new(&model).unwrap();
    for (num, den) in [(4, 4), (3, 4), (6, 8)] {
        let mut score = prime_ending_with_a_rest(num, den);
        let bar = 24 * 4 * u64::from(num) / u64::from(den); // on the tokenizer's grid
        for seed in 0..10 {
            let next_bar = Settings {
                bars: 2,
                temperature: 1.5,
                top_p: 1.0,
                seed,
                ..Settings::default()
            };
            assert_eq!(next_bar.start, Start::NextBar, "the default");
            let prime = generator.prime(&score, None, &next_bar).unwrap();
            assert_eq!(prime.start(), Ticks(4 * bar), "{num}/{den}: after the rest");
            let (c, _) = generator
                .generate(&prime, &next_bar, None, |_| ControlFlow::Continue(()))
                .unwrap();
            assert_eq!(c[0].length, Ticks(2 * bar));
            assert!(c[0].notes.iter().all(|n| n.start < c[0].length));

            // `now`: the rest is the first bar, and it gets a note (every bar does).
            let now = Settings {
                start: Start::Now,
                ..next_bar.clone()
            };
            let prime = generator.prime(&score, None, &now).unwrap();
            assert_eq!(prime.start(), Ticks(3 * bar + bar / 2), "{num}/{den}");
            let (c, _) = generator
                .generate(&prime, &now, None, |_| ControlFlow::Continue(()))
                .unwrap();
            assert_eq!(c[0].length, Ticks(bar / 2 + bar));
            let first = c[0].notes.first().expect("a note in the rest");
            assert!(first.start < Ticks(bar / 2), "{num}/{den}: {first}");
        }
        // An End of Track after the last note's bar (a clip with a silent bar at its end)
        // moves the start to the bar line at or after it.
        score.end = Ticks(5 * bar * 20);
        let prime = generator.prime(&score, None, &Settings::default()).unwrap();
        assert_eq!(prime.start(), Ticks(5 * bar), "{num}/{den}");
        // Hundreds of silent bars after the notes: the start is still after them, and what the
        // model hears fits its context.
        let short = common::tiny_model(96);
        let short = Generator::new(&short).unwrap();
        score.end = Ticks(400 * bar * 20);
        let prime = short.prime(&score, None, &Settings::default()).unwrap();
        assert_eq!(prime.start(), Ticks(400 * bar), "{num}/{den}");
        assert!(prime.ids().len() <= short.prime_budget());
        let (c, _) = short
            .generate(&prime, &Settings::default(), None, |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(c[0].length, Ticks(4 * bar));
        assert!(c[0].notes.iter().all(|n| n.start < c[0].length));
    }
}

/// A tiny model whose context holds about two bars of the example, so continuations slide.
fn short_context_model() -> Model {
    common::tiny_model(96)
}

#[test]
fn continuations_slide_past_the_context_and_keep_every_bar() {
    let model = short_context_model();
    let generator = Generator::new(&model).unwrap();
    let tok = &model.tokenizer;
    let score = example("pop_4_4.mid");
    let bars = 24;
    let settings = Settings {
        bars,
        temperature: 1.0,
        seed: 5,
        variations: 3,
        ..Settings::default()
    };
    let prime = generator.prime(&score, None, &settings).unwrap();
    assert!(prime.ids().len() <= generator.prime_budget() + 2);
    let (continuations, stats, streamed) = generate_streamed(&generator, &prime, &settings);
    assert!(stats.slides >= 3, "{} slides", stats.slides);
    assert_eq!(continuations.len(), 3, "no variation left behind");
    let bar = 4 * 24;
    for (v, c) in continuations.iter().enumerate() {
        check(tok, &c.ids, &c.notes, bars, "4/4");
        assert_eq!(c.length, Ticks(u64::from(bars) * bar));
        // Every bar has a note, to the last one.
        for b in 0..u64::from(bars) {
            assert!(
                c.notes.iter().any(|n| n.start.0 / bar == b),
                "variation {v}: bar {} is empty",
                b + 1
            );
        }
    }
    // What streamed is what was returned, across the slides.
    assert_streamed_as_returned(&streamed, &continuations);
    // Stopping after the slides have begun still stops, with nothing returned.
    let mut seen = 0;
    let stopped = generator.generate(&prime, &settings, None, |_| {
        seen += 1;
        if seen == 40 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    assert!(matches!(stopped, Err(GenerationError::Cancelled)));
    assert_eq!(seen, 40);
    // The same seed gives the same batch, slides and all.
    let (again, _) = generator
        .generate(&prime, &settings, None, |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(again, continuations);
}
