//! The product's [`Continuer`]: the engine's model, prime and streaming generation.
//!
//! The plugin's [`GridPrime`] (notes on the grid, [`GridTicks::PER_QUARTER`] to a quarter note,
//! from its first bar line) becomes a one-meter [`Score`] at the grid's resolution, which the
//! tokenizer resamples to its own; the engine's [`Prime`] is cut at the requested start,
//! converted to the tokenizer's [`Ticks`] (empty bars in between are walked by the engine, so a
//! pause before the answer is part of what the model hears), and each streamed note goes straight
//! back out, with onsets moved from "after the continuation's start" to the plugin's grid.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use engine::generation::{GenerationError, Generator, Prefix, Prime, Settings, Start};
use engine::midi::{Note, Score, TimeSignatureChange};
use engine::models::{LoadOptions, Model, ModelFiles, Precision};
use engine::time::{GridTicks, Ticks};

use crate::continuer::{
    ContinueError, ContinueRequest, Continuer, Generated, GridNote, GridPrime, Variation,
};

pub struct EngineContinuer {
    model: Model,
    /// How the model's weights were loaded; a style adapter is loaded the same way.
    precision: Precision,
    /// The listening window's tokens already in the model's cache (incremental prefill): a
    /// continuation whose prime begins with them only processes the rest.
    prefix: Option<Prefix>,
}

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// The default model (`assets/model` when the plugin was built), compiled into the plugin
    /// binary, so a bundle copied to another machine or into a host's plugin folder has it.
    Embedded,
    /// A model directory on disk.
    Dir(PathBuf),
}

impl ModelSource {
    /// `CONTINUATOR_MODEL_DIR` when set (to try another model without rebuilding), else the
    /// embedded default.
    pub fn from_env() -> Self {
        match std::env::var_os("CONTINUATOR_MODEL_DIR") {
            Some(dir) => Self::Dir(PathBuf::from(dir)),
            None => Self::Embedded,
        }
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => f.write_str("the built-in model"),
            Self::Dir(dir) => write!(f, "the model at {}", dir.display()),
        }
    }
}

/// The default model's files, read at build time.
mod embedded {
    pub const CONFIG: &str = include_str!("../../assets/model/config.json");
    pub const TOKENIZER: &str = include_str!("../../assets/model/tokenizer.json");
    pub const DECODER: &[u8] = include_bytes!("../../assets/model/decoder.safetensors");
}

impl EngineContinuer {
    /// Loads the model (8-bit weights, the fast CPU path) and the user's adapter, if any.
    pub fn load(
        source: &ModelSource,
        adapter: Option<&Path>,
    ) -> Result<EngineContinuer, ContinueError> {
        let opts = LoadOptions {
            precision: Precision::Q8,
            adapter: adapter.is_none(),
            ..LoadOptions::default()
        };
        let fail = |e: &dyn std::fmt::Display| ContinueError::NoModel(format!("{source}: {e}"));
        let mut model = match source {
            ModelSource::Embedded => {
                let files = ModelFiles {
                    dir: Path::new("built-in model"),
                    config: embedded::CONFIG,
                    tokenizer: embedded::TOKENIZER,
                    decoder: embedded::DECODER,
                };
                Model::from_files(&files, &opts)
            }
            ModelSource::Dir(dir) => {
                if !dir.join("config.json").exists() {
                    return Err(ContinueError::NoModel(format!(
                        "no model at {}",
                        dir.display()
                    )));
                }
                Model::load(dir, &opts)
            }
        }
        .map_err(|e| fail(&e))?;
        if let Some(adapter) = adapter {
            model.load_adapter(adapter, &opts).map_err(|e| fail(&e))?;
        }
        let mut continuer = EngineContinuer::from_model(model).map_err(|e| fail(&e))?;
        continuer.precision = opts.precision;
        Ok(continuer)
    }

    /// Wraps a loaded model; fails now, not at the first trigger, if its vocabulary breaks the
    /// grammar.
    pub fn from_model(model: Model) -> Result<EngineContinuer, GenerationError> {
        Generator::new(&model)?;
        Ok(EngineContinuer {
            model,
            // What `Model::random` and the tests' models hold; `load` says otherwise.
            precision: Precision::F32,
            prefix: None,
        })
    }
}

/// The prime as a score at the grid's resolution ([`GridTicks::PER_QUARTER`] ticks per quarter
/// note), so that a grid tick is a score tick; notes before the first bar line are left out.
fn score(prime: &GridPrime) -> Score {
    let mut score = Score::new(GridTicks::PER_QUARTER);
    score.time_signatures = vec![TimeSignatureChange {
        time: Ticks::ZERO,
        signature: prime.time_signature,
    }];
    score.notes = prime
        .notes
        .iter()
        .filter(|n| n.onset.0 >= 0)
        .map(|n| Note {
            start: Ticks(n.onset.0 as u64),
            duration: Ticks(n.duration.0.max(1) as u64),
            pitch: n.key.min(127),
            velocity: n.velocity.clamp(1, 127),
        })
        .collect();
    score
        .notes
        .sort_by_key(|n| (n.start, n.duration, n.pitch, n.velocity));
    score
}

impl Continuer for EngineContinuer {
    fn set_style(&mut self, adapter: Option<&Path>) -> Result<(), ContinueError> {
        match adapter {
            None => self.model.adapter = None,
            Some(file) => {
                let opts = LoadOptions {
                    precision: self.precision,
                    ..LoadOptions::default()
                };
                // The engine checks every tensor's name and shape before replacing anything: a
                // file for another model leaves the current adapter (or none) in place.
                self.model
                    .load_adapter(file, &opts)
                    .map_err(|e| ContinueError::Style(e.to_string()))?;
            }
        }
        // The cached listening window was computed without (or with another) adapter.
        self.prefix = None;
        Ok(())
    }

    fn listening(&mut self, prime: &GridPrime) {
        let Ok(generator) = Generator::new(&self.model) else {
            return;
        };
        let score = score(prime);
        let tok = generator.tokenizer();
        let mut ids = vec![tok.bos_id()];
        tok.encode_into(&score, &mut ids);
        // Keep what is already cached when the window only grew; start afresh when it slid.
        let mut prefix = match self.prefix.take() {
            Some(prefix) if ids.starts_with(prefix.ids()) => prefix,
            _ => generator.prefix(),
        };
        let done = prefix.ids().len();
        if ids.len() > generator.prime_budget() {
            return; // a prime this long gets cut to fit the context, and would not match
        }
        match generator.extend_prefix(&mut prefix, &ids[done..]) {
            Ok(()) => self.prefix = Some(prefix),
            Err(err) => tracing::debug!(%err, "incremental prefill failed"),
        }
    }

    fn continue_phrase(
        &mut self,
        request: &ContinueRequest,
        emit: &mut dyn FnMut(Variation, GridNote) -> ControlFlow<()>,
    ) -> Result<Generated, ContinueError> {
        let generator =
            Generator::new(&self.model).map_err(|e| ContinueError::Failed(e.to_string()))?;
        let bar_ticks = request.prime.time_signature.grid_ticks_per_bar().0.max(1);
        let settings = Settings {
            bars: ((request.length.0 + bar_ticks - 1) / bar_ticks).max(1) as u32,
            temperature: request.temperature,
            top_p: request.top_p,
            seed: request.seed,
            variations: request.variations.max(1) as usize,
            // The plugin picks its own start (its Start parameter): the engine keeps it.
            start: Start::Now,
            steering: request.steering,
        };
        let tok = generator.tokenizer();
        let ids = tok.encode(&score(&request.prime));
        let end = Ticks::from_quarters(request.start.to_quarters(), tok.ticks_per_quarter());
        let mut prime = Prime::from_ids(
            tok,
            generator.grammar(),
            &ids,
            Some(end),
            &settings,
            generator.context(),
        )
        .map_err(|e| ContinueError::Failed(e.to_string()))?;
        if settings.steering.faithfulness > 0.0 && !request.memory.is_empty() {
            // The playing memory, in the prime's meter: faithfulness follows all of it.
            let memory = GridPrime {
                time_signature: request.prime.time_signature,
                bars: 0,
                notes: request.memory.clone(),
            };
            prime.remember(&tok.encode(&score(&memory)));
        }
        // Where the engine starts may differ from the request by grid rounding: its start rules.
        let start = GridTicks::from_quarters(prime.start_quarters());
        let result =
            generator.generate_from(self.prefix.as_ref(), &prime, &settings, None, |note| {
                let grid = GridNote {
                    onset: GridTicks(start.0 + GridTicks::from_quarters(note.onset).0),
                    duration: GridTicks(GridTicks::from_quarters(note.duration).0.max(1)),
                    key: note.pitch,
                    velocity: note.velocity,
                };
                emit(note.variation, grid)
            });
        match result {
            Ok((_, stats)) => {
                let seconds = stats.total.as_secs_f32();
                Ok(Generated {
                    tokens_per_second: (seconds > 0.0).then(|| stats.tokens as f32 / seconds),
                })
            }
            Err(GenerationError::Cancelled) => Ok(Generated::default()),
            Err(GenerationError::EmptyPrime) => {
                Err(ContinueError::Failed("nothing played to continue".into()))
            }
            Err(e) => Err(ContinueError::Failed(e.to_string())),
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use candle_core::Device;
    use engine::models::{Model, ModelConfig};
    use engine::tokenizer::Tokenizer;

    /// A random-weight tiny model with the reference tokenizer.
    pub(crate) fn tiny_model() -> Model {
        let mut config = ModelConfig::tiny();
        config.max_seq_len = 1024;
        Model::random(config, Tokenizer::reference(), &Device::Cpu).expect("a random tiny model")
    }
}

#[cfg(test)]
mod tests {
    use engine::tokenizer::Tokenizer;

    use super::testing::tiny_model;
    use super::*;
    use engine::time::TimeSignature;

    /// Four bars of quarter notes, continued after one empty bar for two bars.
    fn request(sig: TimeSignature) -> ContinueRequest {
        let bar = sig.grid_ticks_per_bar().0;
        let notes = (0..4 * bar / 12)
            .map(|b| GridNote {
                onset: GridTicks(b * 12),
                duration: GridTicks(6),
                key: 60 + (b % 7) as u8,
                velocity: 80,
            })
            .collect();
        ContinueRequest {
            prime: GridPrime {
                time_signature: sig,
                bars: 4,
                notes,
            },
            start: GridTicks(5 * bar),
            length: GridTicks(2 * bar),
            temperature: 1.0,
            top_p: 0.95,
            seed: 7,
            steering: engine::steering::Steering::default(),
            memory: Vec::new(),
            variations: 1,
        }
    }

    fn continue_with(continuer: &mut EngineContinuer, request: &ContinueRequest) -> Vec<GridNote> {
        let mut notes = Vec::new();
        continuer
            .continue_phrase(request, &mut |_, note| {
                notes.push(note);
                ControlFlow::Continue(())
            })
            .unwrap();
        notes
    }

    #[test]
    fn streams_notes_inside_the_requested_span() {
        for sig in [
            TimeSignature::new(4, 4).unwrap(),
            TimeSignature::new(3, 4).unwrap(),
        ] {
            let request = request(sig);
            let mut continuer = EngineContinuer::from_model(tiny_model()).unwrap();
            let notes = continue_with(&mut continuer, &request);
            assert!(
                !notes.is_empty(),
                "a random model still plays something in {sig:?}"
            );
            let end = request.start.0 + request.length.0;
            for note in &notes {
                assert!(
                    note.onset >= request.start && note.onset.0 < end,
                    "{note:?} outside {sig:?} span"
                );
                assert!(note.duration.0 >= 1 && note.velocity >= 1);
            }
            assert!(
                notes.windows(2).all(|w| w[0].onset <= w[1].onset),
                "streamed in onset order"
            );
        }
    }

    #[test]
    fn steering_and_the_playing_memory_reach_the_model() {
        let mut continuer = EngineContinuer::from_model(tiny_model()).unwrap();
        // Key and register: a random model kept to C major between C4 and C5.
        let mut locked = request(TimeSignature::default());
        locked.steering = engine::steering::Steering {
            key: engine::steering::KeyLock::Fixed("C".parse().unwrap()),
            range: Some(engine::steering::PitchRange::new(60, 72).unwrap()),
            ..Default::default()
        };
        for seed in 0..10 {
            locked.seed = seed;
            for note in continue_with(&mut continuer, &locked) {
                assert!((60..=72).contains(&note.key), "{note:?}");
                assert!(
                    [0, 2, 4, 5, 7, 9, 11].contains(&(note.key % 12)),
                    "{note:?}"
                );
            }
        }
        // Faithfulness 1 with a playing memory of one figure repeated: the continuation plays
        // the figure, bar after bar, though the prime itself is a single different bar.
        let sig = TimeSignature::default();
        let figure = [(0, 64), (12, 67), (24, 71), (36, 67)];
        let memory: Vec<GridNote> = (0..4)
            .flat_map(|bar| {
                figure.map(|(onset, key)| GridNote {
                    onset: GridTicks(bar * 48 + onset),
                    duration: GridTicks(6),
                    key,
                    velocity: 80,
                })
            })
            .collect();
        let faithful = ContinueRequest {
            prime: GridPrime {
                time_signature: sig,
                bars: 1,
                notes: vec![GridNote {
                    onset: GridTicks(0),
                    duration: GridTicks(6),
                    key: 50,
                    velocity: 80,
                }],
            },
            start: GridTicks(48),
            length: GridTicks(2 * 48),
            steering: engine::steering::Steering {
                faithfulness: 1.0,
                ..Default::default()
            },
            memory,
            ..request(sig)
        };
        let notes = continue_with(&mut continuer, &faithful);
        let got: Vec<(i64, u8)> = notes.iter().map(|n| (n.onset.0, n.key)).collect();
        let expected: Vec<(i64, u8)> = (1..3)
            .flat_map(|bar| figure.map(|(onset, key)| (bar * 48 + onset, key)))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn the_built_in_model_loads_and_continues_without_any_file() {
        // Whatever the environment says, the embedded model needs nothing on disk: this is what
        // a bundle copied to another machine runs.
        let mut continuer = EngineContinuer::load(&ModelSource::Embedded, None).unwrap();
        assert_eq!(continuer.model.dir, Path::new("built-in model"));
        for sig in [
            TimeSignature::new(4, 4).unwrap(),
            TimeSignature::new(3, 4).unwrap(),
        ] {
            let request = request(sig);
            let notes = continue_with(&mut continuer, &request);
            assert!(!notes.is_empty(), "the trained model answers in {sig:?}");
            let end = request.start.0 + request.length.0;
            assert!(notes.iter().all(|n| n.onset >= request.start
                && n.onset.0 < end
                && (21..=108).contains(&n.key)));
        }
    }

    #[test]
    fn a_missing_model_directory_or_adapter_is_named_in_the_error() {
        let dir = std::env::temp_dir().join("continuator-no-such-model");
        let err = EngineContinuer::load(&ModelSource::Dir(dir.clone()), None)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{err}"
        );
        let adapter = dir.join("style.safetensors");
        let err = EngineContinuer::load(&ModelSource::Embedded, Some(&adapter))
            .err()
            .unwrap();
        assert!(err.to_string().contains("style.safetensors"), "{err}");
    }

    #[test]
    fn the_grid_is_the_built_in_tokenizers_finest_resolution() {
        // What `GridTicks::PER_QUARTER` documents: a note on the grid is one the model can say.
        let tok = Tokenizer::from_json(embedded::TOKENIZER).unwrap();
        assert_eq!(
            u16::from(tok.config().max_positions_per_beat()),
            GridTicks::PER_QUARTER
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_take_and_break_stops() {
        let request = request(TimeSignature::default());
        let mut continuer = EngineContinuer::from_model(tiny_model()).unwrap();
        let first = continue_with(&mut continuer, &request);
        assert_eq!(first, continue_with(&mut continuer, &request));
        let mut count = 0;
        let result = continuer.continue_phrase(&request, &mut |_, _| {
            count += 1;
            ControlFlow::Break(())
        });
        assert_eq!(result, Ok(Generated::default()));
        assert!(count <= 1);
    }

    /// An adapter file for the tiny model, every tensor the shape `specs` says except those
    /// named in `wrong`, which get one row too many.
    fn adapter_file(dir: &Path, name: &str, wrong: &[&str]) -> PathBuf {
        let model = tiny_model();
        let cfg = model.config.adapter.clone().unwrap();
        let specs = engine::models::Adapter::tensor_specs(
            &cfg,
            model.config.decoder.dim,
            model.config.num_tokens,
        );
        let tensors: std::collections::HashMap<String, candle_core::Tensor> = specs
            .into_iter()
            .map(|(name, mut shape)| {
                if wrong.contains(&name.as_str()) {
                    shape[0] += 1;
                }
                let t = candle_core::Tensor::randn(0f32, 0.02, shape, &candle_core::Device::Cpu)
                    .unwrap();
                (name, t)
            })
            .collect();
        let file = dir.join(name);
        candle_core::safetensors::save(&tensors, &file).unwrap();
        file
    }

    #[test]
    fn a_style_that_does_not_fit_is_refused_by_name_and_the_previous_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let good = adapter_file(dir.path(), "jazz.safetensors", &[]);
        let bad = adapter_file(dir.path(), "other-model.safetensors", &["to_logits.weight"]);
        let mut continuer = EngineContinuer::from_model(tiny_model()).unwrap();
        continuer.set_style(Some(&good)).unwrap();
        assert!(continuer.model.adapter.is_some());
        let styled = continue_with(&mut continuer, &request(TimeSignature::default()));
        let err = continuer.set_style(Some(&bad)).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("other-model.safetensors"), "{message}");
        assert!(message.contains("to_logits.weight"), "{message}");
        // The previous style still plays, exactly as before.
        assert_eq!(
            continue_with(&mut continuer, &request(TimeSignature::default())),
            styled
        );
        let missing = dir.path().join("missing.safetensors");
        assert!(continuer.set_style(Some(&missing)).is_err());
        continuer.set_style(None).unwrap();
        assert!(continuer.model.adapter.is_none());
    }

    #[test]
    fn variations_stream_side_by_side_and_the_first_is_the_single_take() {
        let single = request(TimeSignature::default());
        let mut continuer = EngineContinuer::from_model(tiny_model()).unwrap();
        let alone = continue_with(&mut continuer, &single);
        let mut by_variation = vec![Vec::new(); 3];
        let generated = continuer
            .continue_phrase(
                &ContinueRequest {
                    variations: 3,
                    ..single.clone()
                },
                &mut |v, note| {
                    by_variation[v].push(note);
                    ControlFlow::Continue(())
                },
            )
            .unwrap();
        assert!(generated.tokens_per_second.is_some_and(|r| r > 0.0));
        assert!(by_variation.iter().all(|v| !v.is_empty()));
        assert_ne!(by_variation[0], by_variation[1], "different seeds");
        assert_eq!(
            by_variation[0], alone,
            "variation 0 has the request's own seed"
        );
    }

    #[test]
    fn listening_ahead_changes_nothing_but_the_work_left() {
        let mut request = request(TimeSignature::default());
        // A continuation from the bar line right after the prime, as Manual mode asks.
        request.start = GridTicks(4 * TimeSignature::default().grid_ticks_per_bar().0);
        let mut continuer = EngineContinuer::from_model(tiny_model()).unwrap();
        let cold = continue_with(&mut continuer, &request);
        // Bar by bar, as the musician plays: the window grows, then the continuation comes.
        let bar = TimeSignature::default().grid_ticks_per_bar().0;
        for bars in 1..=4 {
            let mut window = request.prime.clone();
            window.notes.retain(|n| n.onset.0 < bars * bar);
            continuer.listening(&window);
        }
        let prefix = continuer.prefix.as_ref().expect("prefilled");
        // The whole window is cached: the prime's own tokens, after BOS.
        let tok = Tokenizer::reference();
        let mut ids = vec![tok.bos_id()];
        tok.encode_into(&score(&request.prime), &mut ids);
        assert_eq!(prefix.ids(), &ids[..]);
        let warm = continue_with(&mut continuer, &request);
        assert_eq!(cold, warm);
    }
}
