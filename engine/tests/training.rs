//! Pretraining: exact resumption, data errors, the id cache, and export to a model directory.
//! Everything runs on the tokenizer's test MIDI files (copied into a temporary folder) with the
//! tiny preset, in seconds. (That every trainable tensor gets a finite, non-zero gradient
//! through the training path is checked in `models_training.rs`.)

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use engine::models::{LoadOptions, Model, ModelConfig};
use engine::tokenizer::Tokenizer;
use engine::training::checkpoint::CHECKPOINT_FILE;
use engine::training::optim::AdamWConfig;
use engine::training::schedule::Schedule;
use engine::training::{Corpus, CorpusOptions, Error, RunOptions, TrainConfig, Trainer};
use tempfile::TempDir;

const MIDI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tokenizer/midi");

/// A fresh, empty temporary folder for one test, removed when dropped (also on panic).
fn temp(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("continuator-training-{name}-"))
        .tempdir()
        .unwrap()
}

/// A copy of the test MIDI files (so tests can add bad files next to them).
fn midi_copy(root: &Path) -> PathBuf {
    let data = root.join("midi");
    std::fs::create_dir_all(&data).unwrap();
    for entry in std::fs::read_dir(MIDI).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, data.join(path.file_name().unwrap())).unwrap();
    }
    data
}

fn corpus(data: &Path, cache: &Path) -> Result<Corpus, Error> {
    Corpus::load(
        &CorpusOptions {
            dirs: vec![data.to_path_buf()],
            cache_dir: cache.to_path_buf(),
            val_fraction: 0.05,
        },
        &Tokenizer::reference(),
        &|_, _| {},
    )
}

fn config(data: &Path, steps: u64) -> TrainConfig {
    let mut model = ModelConfig::tiny();
    model.max_seq_len = 32;
    model.adapter = None;
    model.discriminator = None;
    TrainConfig {
        preset: "tiny".into(),
        model,
        data: vec![data.to_path_buf()],
        seq: 32,
        batch: 2,
        accum: 2,
        steps,
        schedule: Schedule {
            peak: 3e-3,
            warmup: 3,
            total: steps,
            min_ratio: 0.1,
        },
        adamw: AdamWConfig::default(),
        clip: 1.0,
        val_every: 7,
        val_windows: 8,
        val_fraction: 0.05,
        checkpoint_every: 1000,
        checkpoint_minutes: 1000.0,
        seed: 7,
        transpose: true,
        init: None,
    }
}

fn train(cfg: &TrainConfig, out: &Path, resume: bool, stop_at: Option<u64>) -> Trainer {
    let c = corpus(&cfg.data[0], &out.join("data")).unwrap();
    let mut t = Trainer::new(cfg.clone(), out, c, Device::Cpu, resume).unwrap();
    t.run(
        &RunOptions {
            stop: None,
            stop_at,
        },
        &mut (),
    )
    .unwrap();
    t
}

fn bits(t: &Trainer) -> Vec<(String, Vec<u32>)> {
    let mut w: Vec<_> = t
        .weights()
        .into_iter()
        .map(|(n, t)| {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            (n, v.into_iter().map(f32::to_bits).collect())
        })
        .collect();
    w.sort();
    w
}

#[test]
fn twenty_steps_equal_ten_plus_resume_plus_ten_bit_for_bit() {
    let tmp = temp("resume");
    let root = tmp.path();
    let data = midi_copy(root);
    let cfg = config(&data, 20);

    let straight = train(&cfg, &root.join("straight"), false, None);
    assert_eq!(straight.state().step, 20);

    let half = train(&cfg, &root.join("split"), false, Some(10));
    assert_eq!(half.state().step, 10);
    assert!(root.join("split").join(CHECKPOINT_FILE).exists());
    drop(half);
    let resumed = train(&cfg, &root.join("split"), true, None);
    assert_eq!(resumed.state().step, 20);
    assert_eq!(resumed.state().tokens_seen, straight.state().tokens_seen);
    assert!(
        bits(&straight) == bits(&resumed),
        "weights differ after resume"
    );

    // The metrics file has exactly one line per step and one per validation, across the resume.
    let metrics = std::fs::read_to_string(root.join("split/metrics.jsonl")).unwrap();
    let train_lines = metrics.lines().filter(|l| l.contains("\"train\"")).count();
    let val_lines = metrics.lines().filter(|l| l.contains("\"val\"")).count();
    assert_eq!((train_lines, val_lines), (20, 3)); // steps 7, 14 and the last

    // It learned something: validation below the uniform ln(373) ≈ 5.92.
    let val = resumed.state().val_loss.unwrap();
    assert!(val.is_finite() && val < 5.5, "validation loss {val}");
    assert!(resumed.bigram_val_loss() < 5.92);
}

/// The thread count changes how work is split, never the result: a run continued on a machine
/// with more cores (or resumed with a different `RAYON_NUM_THREADS`) stays reproducible. The
/// shapes are large enough for the fused ops' parallel paths, which add per-task partial
/// gradients together.
#[test]
fn one_thread_and_two_threads_train_the_same_bits() {
    let tmp = temp("threads");
    let root = tmp.path();
    let data = midi_copy(root);
    let mut cfg = config(&data, 3);
    cfg.model.max_seq_len = 64;
    cfg.seq = 64;
    cfg.batch = 8;
    cfg.accum = 1;
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let t = pool.install(|| train(&cfg, &root.join(format!("threads-{threads}")), false, None));
        assert_eq!(t.state().step, 3);
        bits(&t)
    };
    assert!(run(1) == run(2), "weights differ between 1 and 2 threads");
}

#[test]
fn an_empty_or_midi_less_folder_is_a_clear_error() {
    let tmp = temp("empty");
    let root = tmp.path();
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = corpus(&empty, &root.join("cache")).unwrap_err();
    assert!(matches!(err, Error::NoMidi { .. }), "{err}");
    assert!(err.to_string().contains("no MIDI files"), "{err}");

    std::fs::write(empty.join("notes.txt"), "not a MIDI file").unwrap();
    let err = corpus(&empty, &root.join("cache")).unwrap_err();
    assert!(
        err.to_string().contains(&empty.display().to_string()),
        "{err}"
    );

    let missing = root.join("missing");
    let err = corpus(&missing, &root.join("cache")).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");

    // Only unreadable files: an error, not a run on nothing.
    std::fs::write(empty.join("bad.mid"), b"MThd garbage").unwrap();
    let err = corpus(&empty, &root.join("cache")).unwrap_err();
    assert!(
        matches!(err, Error::NothingUsable { files: 1, .. }),
        "{err}"
    );
}

#[test]
fn a_corrupt_file_is_skipped_and_listed_and_the_cache_is_reused() {
    let tmp = temp("corrupt");
    let root = tmp.path();
    let data = midi_copy(root);
    let bad = data.join("zz_corrupt.mid");
    std::fs::write(&bad, b"MThd\x00\x00\x00\x06 this is not MIDI").unwrap();
    let cache = root.join("cache");

    let first = corpus(&data, &cache).unwrap();
    assert!(!first.from_cache());
    assert_eq!(first.files(), 11);
    let skipped: Vec<&Path> = first.skipped().iter().map(|s| s.file.as_path()).collect();
    assert!(skipped.contains(&bad.as_path()), "{skipped:?}");
    assert!(first.skipped().iter().all(|s| !s.reason.is_empty()));
    let (train, val) = first.split_sizes();
    assert!(train >= 1 && val >= 1);

    let second = corpus(&data, &cache).unwrap();
    assert!(second.from_cache(), "the id cache was not reused");
    assert_eq!(second.token_counts(), first.token_counts());
    assert_eq!(second.skipped(), first.skipped());
    assert_eq!(second.val_names(), first.val_names());

    // A changed folder invalidates the cache.
    std::fs::remove_file(&bad).unwrap();
    let third = corpus(&data, &cache).unwrap();
    assert!(!third.from_cache());
    assert!(third.skipped().iter().all(|s| s.file != bad));
}

#[test]
fn windows_start_at_bars_and_transposition_stays_in_range() {
    use engine::tokenizer::TokenKind;
    use rand::SeedableRng;
    let tmp = temp("windows");
    let root = tmp.path();
    let data = midi_copy(root);
    let c = corpus(&data, &root.join("cache")).unwrap();
    let tok = Tokenizer::reference();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for transpose in [false, true] {
        let ids = c.sample_batch(&mut rng, 16, 24, transpose);
        assert_eq!(ids.len(), 16 * 25);
        for w in ids.chunks_exact(25) {
            let first = tok.kind(w[0]);
            assert!(
                matches!(first, Some(TokenKind::Bar | TokenKind::Bos)),
                "window starts with {first:?}"
            );
            assert!(w.iter().all(|&id| (id as usize) < tok.vocab_size()));
        }
    }
}

#[test]
fn an_exported_run_loads_as_a_model_directory() {
    let tmp = temp("export");
    let root = tmp.path();
    let data = midi_copy(root);
    let cfg = config(&data, 3);
    let run = root.join("run");
    train(&cfg, &run, false, None);
    for dtype in [DType::F32, DType::F16] {
        let out = root.join(format!("model-{dtype:?}"));
        let done =
            engine::training::export::export(&run.join(CHECKPOINT_FILE), &cfg.model, &out, dtype)
                .unwrap();
        assert_eq!(done.step, 3);
        let model = Model::load(&out, &LoadOptions::default()).unwrap();
        assert_eq!(model.config.max_seq_len, 32);
        let score = engine::midi::Score::read_file(format!("{MIDI}/scale_4_4.mid")).unwrap();
        let ids = model.tokenizer.encode(&score);
        let nll = model.score(&ids).unwrap();
        assert!(nll.mean_nll.is_finite() && nll.mean_nll > 0.0);
    }
}

#[test]
fn a_run_can_start_from_a_model_directory_with_a_longer_context() {
    let tmp = temp("init");
    let root = tmp.path();
    let data = midi_copy(root);
    let cfg = config(&data, 4);
    let first = train(&cfg, &root.join("first"), false, None);
    let model = root.join("model");
    engine::training::export::export(
        &root.join("first").join(CHECKPOINT_FILE),
        &cfg.model,
        &model,
        DType::F32,
    )
    .unwrap();

    // A second run, twice the context, starting from the exported weights: before its first
    // step it holds exactly them (not a seeded random init), and it trains from there.
    let mut longer = cfg.clone();
    longer.seq = 64;
    longer.model.max_seq_len = 64;
    longer.init = Some(model.clone());
    let c = corpus(&data, &root.join("second/data")).unwrap();
    let mut second =
        Trainer::new(longer.clone(), &root.join("second"), c, Device::Cpu, false).unwrap();
    assert!(
        bits(&second) == bits(&first),
        "--init did not load the weights"
    );
    let fresh = {
        let mut plain = longer.clone();
        plain.init = None;
        let c = corpus(&data, &root.join("third/data")).unwrap();
        Trainer::new(plain, &root.join("third"), c, Device::Cpu, false).unwrap()
    };
    assert!(bits(&fresh) != bits(&first));
    second.run(&RunOptions::default(), &mut ()).unwrap();
    assert_eq!(second.state().step, 4);
    assert!(second.state().val_loss.unwrap().is_finite());
    assert!(bits(&second) != bits(&first));

    // Another shape is refused, naming the model's config.json.
    let mut wider = longer.clone();
    wider.model.decoder.dim *= 2;
    let c = corpus(&data, &root.join("fourth/data")).unwrap();
    let err = Trainer::new(wider, &root.join("fourth"), c, Device::Cpu, false)
        .err()
        .expect("a different shape must be refused")
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("decoder shape"),
        "{err}"
    );
}

/// Sets the stop flag (what Ctrl-C does) once a step is reported.
struct StopAfter {
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
    step: u64,
}

impl engine::training::Observer for StopAfter {
    fn step(&mut self, r: &engine::training::StepReport) {
        if r.step == self.step {
            self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

#[test]
fn a_stop_request_checkpoints_after_the_current_step() {
    let tmp = temp("stop");
    let root = tmp.path();
    let data = midi_copy(root);
    let cfg = config(&data, 50);
    let out = root.join("run");
    let c = corpus(&data, &out.join("data")).unwrap();
    let mut t = Trainer::new(cfg.clone(), &out, c, Device::Cpu, false).unwrap();
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let state = t
        .run(
            &RunOptions {
                stop: Some(flag.clone()),
                stop_at: None,
            },
            &mut StopAfter { flag, step: 4 },
        )
        .unwrap();
    assert_eq!(state.step, 4);
    let ck = engine::training::checkpoint::load(&out.join(CHECKPOINT_FILE), &Device::Cpu).unwrap();
    assert_eq!(ck.state.step, 4);
    assert_eq!(ck.params.len(), ck.adam_m.len());
    assert_eq!(ck.params.len(), ck.adam_v.len());
}
