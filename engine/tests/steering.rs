//! Steering at sampling time: key lock, register, density and faithfulness hold for hot
//! random models and for the default model, across variations and context slides, and
//! impossible combinations are refused with an error that names them.

mod common;

use std::ops::ControlFlow;
use std::path::Path;

use common::{example, tiny_model};
use engine::generation::{Continuation, GenerationError, Generator, Prime, Settings};
use engine::key::Key;
use engine::midi::{Note, Score};
use engine::models::{LoadOptions, Model, Precision};
use engine::steering::{KeyLock, PhraseMemory, PitchRange, Steering};
use engine::time::Ticks;

fn generate(generator: &Generator<'_>, prime: &Prime, settings: &Settings) -> Vec<Continuation> {
    generator
        .generate(prime, settings, None, |_| ControlFlow::Continue(()))
        .unwrap()
        .0
}

/// A melody on `degrees` of the scale of `tonic`, tonic and fifth held longer.
fn scale_prime(tonic: u8, degrees: &[u8]) -> Score {
    let mut score = Score::new(480);
    let mut t = 0;
    for octave in [60u8, 72, 60, 72] {
        for &d in degrees {
            let duration = if d == 0 || d == 7 { 480 } else { 240 };
            score.notes.push(Note {
                start: Ticks(t),
                duration: Ticks(duration),
                pitch: octave + (tonic + d) % 12,
                velocity: 80,
            });
            t += duration;
        }
    }
    score
}

#[test]
fn auto_finds_c_major_and_a_minor() {
    let model = tiny_model(1024);
    let generator = Generator::new(&model).unwrap();
    let settings = Settings::default();
    let c = generator
        .prime(&scale_prime(0, &[0, 2, 4, 5, 7, 9, 11]), None, &settings)
        .unwrap();
    assert_eq!(c.key(), Some("C".parse::<Key>().unwrap()));
    let a = generator
        .prime(&scale_prime(9, &[0, 2, 3, 5, 7, 8, 10]), None, &settings)
        .unwrap();
    assert_eq!(a.key(), Some("Am".parse::<Key>().unwrap()));
}

#[test]
fn a_thousand_hot_generations_keep_the_key_and_the_range() {
    let model = tiny_model(1024);
    let generator = Generator::new(&model).unwrap();
    let score = example("pop_4_4.mid");
    let key: Key = "Am".parse().unwrap();
    let range = PitchRange::new(55, 79).unwrap();
    let mut notes = 0;
    for seed in 0..100 {
        let settings = Settings {
            bars: 2,
            temperature: 1.5,
            top_p: 1.0,
            seed: seed * 10,
            variations: 10,
            steering: Steering {
                key: KeyLock::Fixed(key),
                range: Some(range),
                ..Steering::default()
            },
            ..Settings::default()
        };
        let prime = generator.prime(&score, None, &settings).unwrap();
        for c in generate(&generator, &prime, &settings) {
            for n in &c.notes {
                assert!(key.contains(n.pitch), "{n} outside {key}");
                assert!(range.contains(n.pitch), "{n} outside {range}");
            }
            notes += c.notes.len();
        }
    }
    assert!(notes > 1000, "{notes} notes");
}

#[test]
fn the_key_lock_holds_across_slides_and_variations() {
    let model = tiny_model(96);
    let generator = Generator::new(&model).unwrap();
    let settings = Settings {
        bars: 12,
        temperature: 1.5,
        seed: 2,
        variations: 3,
        steering: Steering {
            key: KeyLock::Auto,
            faithfulness: 0.5,
            ..Steering::default()
        },
        ..Settings::default()
    };
    let score = scale_prime(2, &[0, 2, 4, 5, 7, 9, 11]);
    let prime = generator.prime(&score, None, &settings).unwrap();
    let key = prime.key().unwrap();
    assert_eq!(key, "D".parse().unwrap());
    let mut streamed = vec![Vec::new(); 3];
    let (out, stats) = generator
        .generate(&prime, &settings, None, |n| {
            streamed[n.variation].push(n.pitch);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert!(stats.slides > 0);
    for (v, c) in out.iter().enumerate() {
        assert!(c.notes.iter().all(|n| key.contains(n.pitch)));
        let pitches: Vec<u8> = c.notes.iter().map(|n| n.pitch).collect();
        assert_eq!(pitches, streamed[v]);
    }
}

#[test]
fn faithfulness_one_continues_a_repeated_bar_and_zero_is_the_model_alone() {
    let model = tiny_model(1024);
    let generator = Generator::new(&model).unwrap();
    // One bar (distinct pitches, a rhythm of quarters and eighths) played four times.
    let bar: [(u64, u64, u8); 6] = [
        (0, 480, 60),
        (480, 240, 64),
        (720, 240, 67),
        (960, 480, 72),
        (1440, 240, 71),
        (1680, 240, 69),
    ];
    let mut score = Score::new(480);
    for b in 0..4u64 {
        for &(start, duration, pitch) in &bar {
            score.notes.push(Note {
                start: Ticks(b * 1920 + start),
                duration: Ticks(duration),
                pitch,
                velocity: 80,
            });
        }
    }
    let faithful = Settings {
        bars: 3,
        temperature: 1.0,
        seed: 11,
        variations: 4,
        steering: Steering {
            faithfulness: 1.0,
            ..Steering::default()
        },
        ..Settings::default()
    };
    let prime = generator.prime(&score, None, &faithful).unwrap();
    // On the tokenizer's grid (24 a quarter), bar by bar.
    let expected: Vec<(u64, u8)> = bar.iter().map(|&(s, _, p)| (s / 20, p)).collect();
    for c in generate(&generator, &prime, &faithful) {
        for b in 0..3u64 {
            let got: Vec<(u64, u8)> = c
                .notes
                .iter()
                .filter(|n| n.start.0 / 96 == b)
                .map(|n| (n.start.0 % 96, n.pitch))
                .collect();
            assert_eq!(got, expected, "bar {} of seed {}", b + 1, c.seed);
        }
    }

    // Faithfulness 0: the memory is never consulted; and a memory with nothing to say leaves
    // the model alone at any faithfulness.
    let alone = Settings {
        steering: Steering::default(),
        ..faithful.clone()
    };
    let zero = Settings {
        steering: Steering {
            faithfulness: 0.0,
            ..Steering::default()
        },
        ..faithful.clone()
    };
    let reference = generate(&generator, &prime, &zero);
    let mut silent = prime.clone();
    silent.set_memory(PhraseMemory::default());
    assert_eq!(generate(&generator, &silent, &zero), reference);
    assert_eq!(generate(&generator, &silent, &faithful), reference);
    if alone.steering.faithfulness == 0.0 {
        assert_eq!(generate(&generator, &prime, &alone), reference);
    }
}

#[test]
fn impossible_combinations_are_refused_by_name() {
    let model = tiny_model(1024);
    let generator = Generator::new(&model).unwrap();
    let score = example("pop_4_4.mid");
    let tok = &model.tokenizer;
    let c_sharp_only = Steering {
        key: KeyLock::Fixed("C".parse().unwrap()),
        range: Some(PitchRange::new(61, 61).unwrap()),
        ..Steering::default()
    };
    let err = c_sharp_only.check(tok, None).unwrap_err();
    assert!(
        err.contains("key C major") && err.contains("range"),
        "{err}"
    );
    let settings = Settings {
        steering: c_sharp_only,
        ..Settings::default()
    };
    let prime = generator.prime(&score, None, &settings).unwrap();
    let err = generator
        .generate(&prime, &settings, None, |_| ControlFlow::Continue(()))
        .unwrap_err();
    assert!(
        matches!(err, GenerationError::Settings(ref m) if m.contains("key")),
        "{err}"
    );

    let below_piano = Steering {
        range: Some(PitchRange::new(0, 20).unwrap()),
        ..Steering::default()
    };
    assert!(below_piano.check(tok, None).unwrap_err().contains("range"));
    assert!(PitchRange::new(70, 60).is_err());
    for bad in [
        Steering {
            density: Some(0),
            ..Steering::default()
        },
        Steering {
            density: Some(49),
            ..Steering::default()
        },
        Steering {
            faithfulness: 1.5,
            ..Steering::default()
        },
        Steering {
            faithfulness: f32::NAN,
            ..Steering::default()
        },
    ] {
        let settings = Settings {
            steering: bad,
            ..Settings::default()
        };
        assert!(
            matches!(
                generator.prime(&score, None, &settings),
                Err(GenerationError::Settings(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn the_default_model_reaches_a_density_target() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/model");
    let opts = LoadOptions {
        precision: Precision::Q8,
        ..LoadOptions::default()
    };
    let model = Model::load(&dir, &opts).unwrap();
    let generator = Generator::new(&model).unwrap();
    let score = example("pop_4_4.mid");
    for target in [4u32, 12, 24] {
        let mut notes = 0usize;
        let mut continuations = 0usize;
        for seed in 0..5 {
            let settings = Settings {
                bars: 2,
                seed: seed * 10,
                variations: 10,
                steering: Steering {
                    density: Some(target),
                    ..Steering::default()
                },
                ..Settings::default()
            };
            let prime = generator.prime(&score, None, &settings).unwrap();
            for c in generate(&generator, &prime, &settings) {
                notes += c.notes.len();
                continuations += 1;
            }
        }
        assert_eq!(continuations, 50);
        let per_bar = notes as f64 / (2.0 * continuations as f64);
        let t = f64::from(target);
        assert!(
            (per_bar - t).abs() <= 0.15 * t,
            "target {target}: {per_bar:.1} notes a bar"
        );
    }
}
