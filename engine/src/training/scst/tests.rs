//! Evidence that SCST learns, on a synthetic task small enough for seconds.
//!
//! The task: a one-bar prime holds one note of pitch `p` (eight choices); the continuation is one
//! bar with one note. A tiny decoder is pretrained on continuations a fourth **or** a fifth
//! above `p`, half and half, so it follows "a fourth above" about half the time. The pairs SCST
//! trains on always go a fourth up. SCST must raise the share of a-fourth-up samples; with
//! rewards shuffled across the batch, or with a random discriminator that never trains, it must
//! not. Whether a sample goes a fourth up depends on the prime, so neither the discriminator nor
//! the adapter can solve it without reading the prime.

use std::path::Path;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::models::{Decoder, Discriminator, DiscriminatorConfig, Kernels, Model, ModelConfig};
use crate::tokenizer::{Token, TokenKind};
use crate::training::optim::{AdamW, AdamWConfig};
use crate::training::pretrain::{seeded_init, RunOptions};
use crate::training::Error;

const PRIMES: [u8; 8] = [48, 50, 52, 55, 57, 60, 62, 65];

fn id(tok: &Tokenizer, t: Token) -> u32 {
    tok.id(t).expect("in the vocabulary")
}

fn first_of(tok: &Tokenizer, kind: TokenKind) -> u32 {
    (0..tok.vocab_size() as u32)
        .find(|&i| tok.kind(i) == Some(kind))
        .unwrap()
}

/// `BOS, bar(p), bar(q), EOS`, one note per bar on the downbeat.
fn doc(tok: &Tokenizer, p: u8, q: u8) -> Vec<u32> {
    let bar = |pitch: u8| {
        vec![
            tok.bar_id(),
            first_of(tok, TokenKind::TimeSig),
            tok.position_ids()[0],
            id(tok, Token::Pitch(pitch)),
            first_of(tok, TokenKind::Velocity),
            first_of(tok, TokenKind::Duration),
        ]
    };
    let mut d = vec![tok.bos_id()];
    d.extend(bar(p));
    d.extend(bar(q));
    d.push(tok.eos_id());
    d
}

fn model_config() -> ModelConfig {
    ModelConfig {
        adapter: None,
        discriminator: None,
        ..ModelConfig::tiny()
    }
}

/// The tiny decoder, pretrained on a-fourth-or-a-fifth-up continuations (once per test binary).
fn pretrained() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let tok = Tokenizer::reference();
        let cfg = model_config();
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let decoder = Decoder::new(
            cfg.num_tokens,
            &cfg.decoder,
            VarBuilder::from_varmap(&varmap, DType::F32, &dev),
        )
        .unwrap();
        let vars: Vec<_> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        seeded_init(&vars, 11).unwrap();
        let mut opt = AdamW::new(
            vars,
            AdamWConfig {
                weight_decay: 0.0,
                ..AdamWConfig::default()
            },
        )
        .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (b, len) = (32, doc(&tok, 50, 55).len());
        for _ in 0..250 {
            let mut ids = Vec::with_capacity(b * len);
            for _ in 0..b {
                let p = PRIMES[rng.random_range(0..PRIMES.len())];
                let q = p + if rng.random::<bool>() { 5 } else { 7 };
                ids.extend(doc(&tok, p, q));
            }
            let all = Tensor::from_vec(ids, (b, len), &dev).unwrap();
            let inputs = all.narrow(1, 0, len - 1).unwrap().contiguous().unwrap();
            let targets = all.narrow(1, 1, len - 1).unwrap().contiguous().unwrap();
            let logits = decoder.forward_train(&inputs).unwrap();
            let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
            let loss = logp
                .gather(&targets.unsqueeze(D::Minus1).unwrap(), D::Minus1)
                .unwrap()
                .mean_all()
                .unwrap()
                .neg()
                .unwrap();
            let grads = loss.backward().unwrap();
            let g: Vec<Tensor> = opt
                .params()
                .iter()
                .map(|(_, v)| grads.get(v.as_tensor()).unwrap().clone())
                .collect();
            opt.step(&g, 1e-2, 1.0).unwrap();
        }
        let frozen = opt
            .params()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect();
        let decoder = Decoder::new(
            cfg.num_tokens,
            &cfg.decoder,
            VarBuilder::from_tensors(frozen, DType::F32, &dev),
        )
        .unwrap();
        Model {
            dir: "synthetic".into(),
            config: cfg,
            tokenizer: tok,
            decoder,
            adapter: None,
            discriminator: None,
        }
    })
}

/// Pairs whose continuation always goes a fourth up.
fn fourth_pairs(copies: usize) -> PairSet {
    let tok = Tokenizer::reference();
    let docs = |n: usize| -> Vec<Vec<u32>> {
        (0..n)
            .flat_map(|_| PRIMES.iter().map(|&p| doc(&tok, p, p + 5)))
            .collect()
    };
    let shape = PairShape {
        prime_bars: 1,
        bars: 1,
        context: model_config().max_seq_len,
    };
    PairSet::cut(docs(copies), docs(2), &tok, shape)
}

fn config(control: Control, baseline: Baseline, steps: u64) -> ScstConfig {
    let model = pretrained();
    let mut c = ScstConfig::for_model(Path::new("synthetic"), &model.config, &model.tokenizer);
    c.adapter = crate::models::AdapterConfig::tiny();
    c.discriminator = crate::models::DiscriminatorConfig {
        dim: 32,
        depth: 1,
        heads: 2,
        attn_dim_head: 16,
        ff_mult: 2,
        prime_depth: 1,
        order_depth: 1,
        ..c.discriminator
    };
    c.prime_bars = 1;
    c.bars = 1;
    c.steps = steps;
    c.batch = 8;
    c.samples = 4;
    c.baseline = baseline;
    c.kl = 0.01;
    c.top_p = 1.0;
    c.adapter_lr = ADAPTER_LR.with(|l| l.get());
    c.discriminator_lr = 1e-2;
    c.phases = PhaseConfig {
        warmup_exit: 0.6,
        warmup_max_steps: 15,
        focus_enter: 0.95,
        focus_exit: 0.55,
        smoothing: 3,
    };
    c.heldout = 8;
    c.eval_every = 1000;
    c.val_pairs = 8;
    c.checkpoint_every = 1000;
    c.seed = SEED.with(|s| s.get());
    c.control = control;
    c
}

/// Share of samples (16 per prime) whose note is a fourth above the prime's.
fn fourth_share(model: &Model, pairs: &[Pair]) -> f64 {
    let tok = &model.tokenizer;
    let gen = Generator::new(model).unwrap();
    let sampling = rollout::Sampling {
        bars: 1,
        temperature: 1.0,
        top_p: 1.0,
    };
    let pitch = |ids: &[u32]| {
        ids.iter().find_map(|&i| match tok.token(i) {
            Some(Token::Pitch(p)) => Some(p),
            _ => None,
        })
    };
    let (mut hits, mut total) = (0, 0);
    for (k, pair) in pairs.iter().enumerate() {
        let prime = rollout::prime(&gen, pair, &sampling).unwrap();
        for s in rollout::sample(&gen, &prime, &sampling, 16, 1000 + k as u64, false).unwrap() {
            total += 1;
            if pitch(&s) == pitch(&pair.prime).map(|p| p + 5) {
                hits += 1;
            }
        }
    }
    hits as f64 / total as f64
}

use crate::generation::Generator;

thread_local! {
    static ADAPTER_LR: std::cell::Cell<f64> = const { std::cell::Cell::new(1e-3) };
    static SEED: std::cell::Cell<u64> = const { std::cell::Cell::new(5) };
}

fn train(control: Control, baseline: Baseline, steps: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let pairs = fourth_pairs(8);
    let before = fourth_share(pretrained(), &pairs.val[..PRIMES.len()]);
    let mut s = Scst::new(
        config(control, baseline, steps),
        pretrained(),
        None,
        pairs.clone(),
        dir.path(),
        &dir.path().join("adapter.safetensors"),
        false,
    )
    .unwrap();
    s.run(&RunOptions::default(), &mut ()).unwrap();
    let after = fourth_share(s.model(), &pairs.val[..PRIMES.len()]);
    (before, after)
}

/// Steps of each run. With this configuration and the old discriminator init (head fusion drawn
/// at 0.02) the SCST share measured 0.695, 0.859, 0.930, 0.938 after 40, 80, 120, 160 steps;
/// with the fusion starting as the plain sum (the trainer's init since), 0.812 after 120 and
/// 0.883 after 160 (0.719 after 120 at a discriminator learning rate of 3e-3); shuffled rewards
/// and the frozen random discriminator stayed within 0.41–0.58.
const STEPS: u64 = 160;

/// Not a test: the measurement behind the default baseline (`cargo test -p continuator-engine
/// --lib measure_baselines -- --ignored --nocapture`).
#[test]
#[ignore]
fn measure_baselines() {
    for lr in [1e-3, 3e-3] {
        ADAPTER_LR.with(|l| l.set(lr));
        for steps in [60, 120] {
            for baseline in [Baseline::Greedy, Baseline::Others] {
                let mut shares = Vec::new();
                for seed in [5, 6, 7] {
                    SEED.with(|s| s.set(seed));
                    shares.push(train(Control::None, baseline, steps).1);
                }
                let mean = shares.iter().sum::<f64>() / shares.len() as f64;
                eprintln!("lr {lr:e}, {steps} steps, {baseline:?}: {shares:.3?}, mean {mean:.3}");
            }
        }
    }
}

#[test]
fn scst_raises_the_share_of_the_property_and_the_controls_do_not() {
    let (before, after) = train(Control::None, Baseline::Others, STEPS);
    eprintln!("SCST (others): fourth-up share {before:.3} → {after:.3}");
    assert!((0.3..=0.7).contains(&before), "decoder share {before}");
    let (_, shuffled) = train(Control::ShuffledRewards, Baseline::Others, STEPS);
    let (_, frozen) = train(Control::FrozenDiscriminator, Baseline::Others, STEPS);
    eprintln!("controls: shuffled rewards {shuffled:.3}, frozen random discriminator {frozen:.3}");
    assert!(after >= 0.8, "SCST reached only {after}");
    assert!(shuffled < 0.7, "shuffled rewards reached {shuffled}");
    assert!(
        frozen < 0.7,
        "a frozen random discriminator reached {frozen}"
    );
}

#[test]
fn step_zero_generates_exactly_what_the_decoder_generates() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = fourth_pairs(2);
    let s = fresh_run(
        config(Control::None, Baseline::Greedy, 1),
        pairs.clone(),
        dir.path(),
    );
    let gen = Generator::new(pretrained()).unwrap();
    let sampling = rollout::Sampling {
        bars: 1,
        temperature: 1.0,
        top_p: 1.0,
    };
    for (k, pair) in pairs.train.iter().enumerate() {
        let prime = rollout::prime(&gen, pair, &sampling).unwrap();
        let decoder_alone = rollout::sample(&gen, &prime, &sampling, 4, k as u64, false).unwrap();
        assert_eq!(s.rollout(pair, 4, k as u64, false).unwrap(), decoder_alone);
    }
}

#[test]
fn feature_matching_reaches_the_adapter_through_the_samples() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = fourth_pairs(2);
    let mut cfg = config(Control::None, Baseline::Others, 1);
    cfg.feature_matching = 1.0;
    let s = fresh_run(cfg, pairs, dir.path());
    let gen = s.generator().unwrap();
    let sampling = rollout::Sampling {
        bars: 1,
        temperature: 1.0,
        top_p: 1.0,
    };
    let mut rolls = Vec::new();
    for (k, pair) in s.pairs().train.iter().enumerate().take(4) {
        let prime = rollout::prime(&gen, pair, &sampling).unwrap();
        rolls.push(trainer::Rollout {
            pair: k,
            prefix: prime.ids().to_vec(),
            samples: rollout::sample(&gen, &prime, &sampling, 2, k as u64, false).unwrap(),
            greedy: None,
        });
    }
    drop(gen);
    let train = &s.pairs().train;
    let mut seqs: Vec<(&[u32], &[u32])> = Vec::new();
    let (mut primes, mut conts): (Vec<&[u32]>, Vec<&[u32]>) = (Vec::new(), Vec::new());
    for r in &rolls {
        for c in &r.samples {
            seqs.push((&r.prefix, c));
            primes.push(&train[r.pair].prime);
            conts.push(c);
        }
    }
    let pad = s.model().tokenizer.pad_id();
    let bar = s.model().tokenizer.bar_id();
    let context = s.model().config.max_seq_len;
    let scored = rollout::score(
        &s.model().decoder,
        s.adapter(),
        &seqs,
        pad,
        bar,
        context,
        true,
        true,
    )
    .unwrap();
    let term = s
        .feature_matching(&scored.continuation_logits, &primes, &conts, &rolls)
        .unwrap();
    assert!(term.to_scalar::<f32>().unwrap() > 0.0);
    let grads = term.backward().unwrap();
    let mut norm = 0f64;
    let mut reached = 0;
    for v in s.adapter_weights().values() {
        if let Some(g) = grads.get(v) {
            reached += 1;
            norm += g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
        }
    }
    assert!(reached > 0 && norm > 0.0, "no gradient reached the adapter");
    // Detached logits (the sampled ids alone) leave the adapter without any gradient: the
    // straight-through weights are the path.
    let detached: Vec<Tensor> = scored
        .continuation_logits
        .iter()
        .map(|l| l.detach())
        .collect();
    let term = s
        .feature_matching(&detached, &primes, &conts, &rolls)
        .unwrap();
    let grads = term.backward().unwrap();
    assert!(s.adapter_weights().values().all(|v| grads.get(v).is_none()));
}

#[test]
fn a_resumed_run_continues_bit_for_bit() {
    let pairs = fourth_pairs(2);
    let straight = tempfile::tempdir().unwrap();
    let cfg = config(Control::None, Baseline::Greedy, 6);
    let cfg = ScstConfig {
        phases: PhaseConfig {
            warmup_max_steps: 2,
            ..cfg.phases
        },
        feature_matching: 0.5,
        ..cfg
    };
    let new = |dir: &Path, resume: bool| {
        Scst::new(
            cfg.clone(),
            pretrained(),
            None,
            pairs.clone(),
            dir,
            &dir.join("a.safetensors"),
            resume,
        )
    };
    let mut a = new(straight.path(), false).unwrap();
    a.run(&RunOptions::default(), &mut ()).unwrap();
    let split = tempfile::tempdir().unwrap();
    let mut b = new(split.path(), false).unwrap();
    let opts = RunOptions {
        stop_at: Some(3),
        ..Default::default()
    };
    b.run(&opts, &mut ()).unwrap();
    drop(b);
    let mut b = new(split.path(), true).unwrap();
    assert_eq!(b.step(), 3);
    b.run(&RunOptions::default(), &mut ()).unwrap();
    assert_eq!(a.step(), 6);
    assert_eq!(a.phase(), b.phase());
    let (wa, wb) = (a.adapter_weights(), b.adapter_weights());
    let mut moved = false;
    for (name, ta) in &wa {
        let va: Vec<f32> = ta.flatten_all().unwrap().to_vec1().unwrap();
        let vb: Vec<f32> = wb[name].flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name} differs after resuming"
        );
        moved |= name.contains("to_out") && va.iter().any(|&x| x != 0.0);
    }
    assert!(moved, "the adapter never trained in this run");
    // The metrics of the resumed run hold each step once.
    let text = std::fs::read_to_string(split.path().join(METRICS_FILE)).unwrap();
    let steps: Vec<u64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=6).collect::<Vec<_>>());
}

#[test]
fn bad_inputs_are_clear_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let adapter_file = dir.path().join("a.safetensors");
    // Too few pairs: one training pair.
    let mut few = fourth_pairs(1);
    few.train.truncate(1);
    let err = Scst::new(
        config(Control::None, Baseline::Others, 1),
        pretrained(),
        None,
        few,
        dir.path(),
        &adapter_file,
        false,
    )
    .err()
    .unwrap();
    assert!(matches!(err, Error::TooFewPairs { train: 1, .. }), "{err}");

    // A corrupt checkpoint.
    std::fs::write(dir.path().join(CHECKPOINT_FILE), b"not a checkpoint").unwrap();
    let err = Scst::new(
        config(Control::None, Baseline::Others, 1),
        pretrained(),
        None,
        fourth_pairs(1),
        dir.path(),
        &adapter_file,
        true,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains(CHECKPOINT_FILE), "{err}");

    // An adapter trained for another decoder shape.
    let mut s = Scst::new(
        config(Control::None, Baseline::Others, 1),
        pretrained(),
        None,
        fourth_pairs(1),
        dir.path(),
        &adapter_file,
        false,
    )
    .unwrap();
    s.evaluate().unwrap();
    assert!(adapter_file.exists() && companion_discriminator(&adapter_file).exists());
    let mut same = pretrained().clone();
    same.load_adapter(&adapter_file, &Default::default())
        .unwrap();
    same.load_discriminator(&companion_discriminator(&adapter_file), &Default::default())
        .unwrap();
    let mut other_cfg = model_config();
    other_cfg.decoder.depth = 3;
    let mut other = Model::random(other_cfg, Tokenizer::reference(), &Device::Cpu).unwrap();
    let err = other
        .load_adapter(&adapter_file, &Default::default())
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("a.safetensors") && msg.contains("another decoder"),
        "{msg}"
    );
}

/// A new run of `cfg` on `pairs` in `dir` over the pretrained tiny decoder.
fn fresh_run(cfg: ScstConfig, pairs: PairSet, dir: &Path) -> Scst {
    Scst::new(
        cfg,
        pretrained(),
        None,
        pairs,
        dir,
        &dir.join("a.safetensors"),
        false,
    )
    .unwrap()
}

/// Tokens generated by each step of a run (its `StepReport`s).
#[derive(Default)]
struct StepTokens(Vec<(Phase, u64)>);

impl Observer for StepTokens {
    fn step(&mut self, report: &StepReport) {
        self.0.push((report.phase, report.tokens));
    }
}

#[test]
fn the_critic_warm_up_generates_one_sample_per_prime() {
    let pairs = fourth_pairs(2);
    let run = |samples: usize| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(Control::None, Baseline::Others, 2);
        let cfg = ScstConfig {
            samples,
            phases: PhaseConfig {
                warmup_max_steps: 1,
                ..cfg.phases
            },
            ..cfg
        };
        let mut s = fresh_run(cfg, pairs.clone(), dir.path());
        let mut seen = StepTokens::default();
        s.run(&RunOptions::default(), &mut seen).unwrap();
        seen.0
    };
    let (four, two) = (run(4), run(2));
    assert_eq!(four[0].0, Phase::Warmup);
    assert_eq!(four[1].0, Phase::Joint);
    // The same primes and seeds: a warm-up step's rollouts do not depend on --samples…
    assert_eq!(four[0].1, two[0].1, "warm-up tokens with 4 and 2 samples");
    // …while the joint step generates every sample the adapter's baseline needs.
    assert!(
        four[1].1 > two[1].1,
        "joint-phase tokens: {} with 4 samples, {} with 2",
        four[1].1,
        two[1].1
    );
}

/// A fresh discriminator (`cfg`, initialised as the trainer does) trained for `steps` on
/// `(prime, continuation, real)` rows at `lr`; returns it with the last training loss.
fn train_discriminator(
    cfg: DiscriminatorConfig,
    rows: &[(&[u32], &[u32], bool)],
    lr: f64,
    steps: usize,
) -> (Discriminator, f32) {
    use super::trainer::{bce_with_logits, collect_grads, init_discriminator, vars_of};
    let tok = Tokenizer::reference();
    let cfg = DiscriminatorConfig {
        bar_token_id: tok.bar_id(),
        pad_token_id: tok.pad_id(),
        bos_token_id: tok.bos_id(),
        ..cfg
    };
    let map = VarMap::new();
    let dev = Device::Cpu;
    let d = Discriminator::with_decoder(
        &pretrained().decoder,
        &cfg,
        VarBuilder::from_varmap(&map, DType::F32, &dev),
    )
    .unwrap();
    init_discriminator(&vars_of(&map), 3).unwrap();
    let defaults = config(Control::None, Baseline::Others, 1);
    let mut opt = AdamW::new(
        vars_of(&map),
        AdamWConfig {
            weight_decay: 0.0,
            beta2: 0.99,
            ..AdamWConfig::default()
        },
    )
    .unwrap();
    let primes: Vec<&[u32]> = rows.iter().map(|r| r.0).collect();
    let conts: Vec<&[u32]> = rows.iter().map(|r| r.1).collect();
    let batch = d.batch(&primes, &conts, &dev).unwrap();
    let labels: Vec<f32> = rows
        .iter()
        .map(|r| {
            if r.2 {
                1.0 - defaults.label_smoothing as f32
            } else {
                0.0
            }
        })
        .collect();
    let labels = Tensor::from_vec(labels, rows.len(), &dev).unwrap();
    let mut loss = f32::NAN;
    for _ in 0..steps {
        let out = d.forward(&batch, Kernels::Training).unwrap();
        let l = bce_with_logits(&out.logit, &labels).unwrap();
        loss = l.to_scalar::<f32>().unwrap();
        let grads = collect_grads(&opt, &l.backward().unwrap()).unwrap();
        opt.step(&grads, lr, defaults.clip).unwrap();
    }
    (d, loss)
}

/// P(real) of each `(prime, continuation)`.
fn p_real(d: &Discriminator, rows: &[(&[u32], &[u32])]) -> Vec<f32> {
    let primes: Vec<&[u32]> = rows.iter().map(|r| r.0).collect();
    let conts: Vec<&[u32]> = rows.iter().map(|r| r.1).collect();
    let batch = d.batch(&primes, &conts, &Device::Cpu).unwrap();
    d.forward(&batch, Kernels::Inference)
        .unwrap()
        .p_real()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// A fresh discriminator of the default shape (`small`), at the default learning rate, learns
/// to tell apart continuations that differ in one token within 30 steps. Drawn like every other
/// matrix, the head fusion made the logit a product of near-zero factors: the loss was still
/// 0.61 here after 30 steps (the constant predictor's is 0.688 with one-sided smoothing).
#[test]
fn a_fresh_discriminator_learns_from_its_first_steps() {
    let tok = Tokenizer::reference();
    let pairs = fourth_pairs(1).train;
    let durations: Vec<u32> = (0..tok.vocab_size() as u32)
        .filter(|&i| tok.kind(i) == Some(TokenKind::Duration))
        .collect();
    // The fakes hold another duration: nothing else differs.
    let fakes: Vec<Vec<u32>> = pairs
        .iter()
        .map(|p| {
            p.continuation
                .iter()
                .map(|&i| if i == durations[0] { durations[4] } else { i })
                .collect()
        })
        .collect();
    assert!(pairs.iter().zip(&fakes).all(|(p, f)| p.continuation != *f));
    let mut rows: Vec<(&[u32], &[u32], bool)> = pairs
        .iter()
        .map(|p| (&p.prime[..], &p.continuation[..], true))
        .collect();
    rows.extend(
        pairs
            .iter()
            .zip(&fakes)
            .map(|(p, f)| (&p.prime[..], &f[..], false)),
    );
    let lr = ScstConfig::for_model(Path::new("m"), &model_config(), &tok).discriminator_lr;
    let (d, loss) = train_discriminator(DiscriminatorConfig::small(), &rows, lr, 30);
    let pairs_only: Vec<(&[u32], &[u32])> = rows.iter().map(|r| (r.0, r.1)).collect();
    let p = p_real(&d, &pairs_only);
    let correct = rows
        .iter()
        .zip(&p)
        .filter(|(r, &p)| (p > 0.5) == r.2)
        .count();
    eprintln!(
        "loss after 30 steps {loss:.4}, accuracy {correct}/{}",
        rows.len()
    );
    assert!(loss < 0.5, "loss {loss} after 30 steps at lr {lr}");
    assert_eq!(correct, rows.len());
}

#[test]
fn mismatched_pairs_cycle_through_the_primes_and_never_pair_one_with_itself() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let primes = [3usize, 0, 7];
    let m = super::trainer::mismatched_pairs(primes.iter().copied(), 2.0, 8, &mut rng);
    assert_eq!(m.len(), 6);
    for (k, &(own, other)) in m.iter().enumerate() {
        assert_eq!(own, primes[k % 3]);
        assert!(other != own && other < 8, "{own} with {other}");
    }
    let m = super::trainer::mismatched_pairs(primes.iter().copied(), 0.5, 8, &mut rng);
    assert_eq!(m.len(), 2);
    assert!(super::trainer::mismatched_pairs(primes.iter().copied(), 0.0, 8, &mut rng).is_empty());
    // One pair in all: nothing to mismatch it with.
    assert!(super::trainer::mismatched_pairs([0usize].into_iter(), 1.0, 1, &mut rng).is_empty());
}

#[test]
fn the_critic_pre_training_judges_mismatched_pairs_without_generating() {
    let pairs = fourth_pairs(2);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(Control::None, Baseline::Others, 4);
    let cfg = ScstConfig {
        critic_pretrain: 2,
        phases: PhaseConfig {
            warmup_max_steps: 3,
            ..cfg.phases
        },
        ..cfg
    };
    assert!(ScstConfig {
        mismatched: 0.0,
        ..cfg.clone()
    }
    .validate()
    .unwrap_err()
    .contains("--mismatched"));
    let mut s = fresh_run(cfg, pairs, dir.path());
    let mut seen = StepTokens::default();
    s.run(&RunOptions::default(), &mut seen).unwrap();
    let phases: Vec<Phase> = seen.0.iter().map(|s| s.0).collect();
    let tokens: Vec<u64> = seen.0.iter().map(|s| s.1).collect();
    assert_eq!(phases[..3], [Phase::Warmup; 3]);
    assert_eq!(tokens[..2], [0, 0], "pre-training steps generated tokens");
    assert!(tokens[2] > 0 && tokens[3] > 0, "{tokens:?}");
    // The discriminator trained on them: a loss was reported for each step.
    let text = std::fs::read_to_string(dir.path().join(METRICS_FILE)).unwrap();
    let losses = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train" && v["step"].as_u64().unwrap() <= 2)
        .filter(|v| v["discriminator_loss"].as_f64().is_some_and(f64::is_finite))
        .count();
    assert_eq!(losses, 2);
}
