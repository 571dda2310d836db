//! The decoder against PyTorch x-transformers (the `tiny_xt` fixture), the KV cache against the
//! full forward, batched decoding, and reduced precision.

mod common;
use common::{fixture_dir, max_abs_diff};

use candle_core::{DType, Device, IndexOp, Tensor, D};
use engine::models::{Kernels, LoadOptions, Model, Precision};

fn load(precision: Precision) -> Model {
    let opts = LoadOptions {
        precision,
        ..LoadOptions::default()
    };
    Model::load(fixture_dir(), &opts).expect("tiny_xt loads")
}

/// (tokens (2, 40) u32, logits (2, 40, 373) f32) computed by PyTorch.
fn expected() -> (Tensor, Tensor) {
    let t =
        candle_core::safetensors::load(fixture_dir().join("expected.safetensors"), &Device::Cpu)
            .unwrap();
    (
        t["tokens"].to_dtype(DType::U32).unwrap(),
        t["logits"].clone(),
    )
}

#[test]
fn reproduces_pytorch_logits() {
    let model = load(Precision::F32);
    let (tokens, logits) = expected();
    let ours = model.decoder.forward(&tokens, None).unwrap();
    assert_eq!(ours.dims(), logits.dims());
    let d = max_abs_diff(&ours, &logits);
    assert!(d <= 1e-4, "fused path differs from PyTorch by {d}");
    // The training path computes the same function.
    let plain = model.decoder.forward_train(&tokens).unwrap();
    let d = max_abs_diff(&plain, &logits);
    assert!(d <= 1e-4, "plain path differs from PyTorch by {d}");
}

#[test]
fn incremental_decoding_matches_full_forward() {
    let model = load(Precision::F32);
    let (tokens, logits) = expected();
    let row = tokens.i(0..1).unwrap();
    let mut cache = model.new_cache(8); // small on purpose: the cache must grow
                                        // Prefill 10 tokens, then one at a time.
    let mut outs = vec![model
        .step(&row.narrow(1, 0, 10).unwrap(), &mut cache)
        .unwrap()];
    for p in 10..40 {
        outs.push(
            model
                .step(&row.narrow(1, p, 1).unwrap(), &mut cache)
                .unwrap(),
        );
    }
    assert_eq!(cache.len(), 40);
    let inc = Tensor::cat(&outs, 1).unwrap();
    let d = max_abs_diff(&inc, &logits.i(0..1).unwrap());
    assert!(d <= 1e-4, "cached decoding differs by {d}");
}

#[test]
fn batched_decoding_matches_single_sequences() {
    let model = load(Precision::F32);
    let (tokens, logits) = expected();
    let mut cache = model.new_cache(64);
    let mut outs = vec![model
        .step(&tokens.narrow(1, 0, 5).unwrap(), &mut cache)
        .unwrap()];
    for p in 5..40 {
        outs.push(
            model
                .step(&tokens.narrow(1, p, 1).unwrap(), &mut cache)
                .unwrap(),
        );
    }
    let d = max_abs_diff(&Tensor::cat(&outs, 1).unwrap(), &logits);
    assert!(d <= 1e-4, "batched decoding differs by {d}");
}

#[test]
fn repeated_cache_decodes_variations() {
    let model = load(Precision::F32);
    let (tokens, logits) = expected();
    let row = tokens.i(0..1).unwrap();
    let mut cache = model.new_cache(64);
    model
        .step(&row.narrow(1, 0, 20).unwrap(), &mut cache)
        .unwrap();
    let mut batch = cache.fork().unwrap();
    let next = row.narrow(1, 20, 1).unwrap().repeat((3, 1)).unwrap();
    let out = model.step(&next, &mut batch).unwrap();
    assert_eq!(out.dims(), &[3, 1, 373]);
    for b in 0..3 {
        let d = max_abs_diff(&out.i(b).unwrap(), &logits.i((0, 20..21)).unwrap());
        assert!(d <= 1e-4, "variation {b} differs by {d}");
    }
}

#[test]
fn forked_cache_prefills_and_steps_like_one_cache() {
    // A fork shares the original's positions: prefilling more than one token after them (the
    // general attention path) and then stepping (the decoding kernel), for one and for three
    // sequences, must give the full forward's logits. Forking a fork, and extending the original
    // after forking it, must not disturb either.
    for precision in [Precision::F32, Precision::Q8] {
        let model = load(precision);
        let (tokens, _) = expected();
        let row = tokens.i(0..1).unwrap();
        let full = model.decoder.forward(&row, None).unwrap();
        let mut cache = model.new_cache(16);
        model
            .step(&row.narrow(1, 0, 12).unwrap(), &mut cache)
            .unwrap();
        let mut fork = cache.fork().unwrap();
        let prefill = model
            .step(&row.narrow(1, 12, 8).unwrap(), &mut fork)
            .unwrap();
        // The original goes on elsewhere; the fork must not see it.
        model
            .step(
                &tokens.i(1..2).unwrap().narrow(1, 12, 5).unwrap(),
                &mut cache,
            )
            .unwrap();
        let mut outs = vec![prefill];
        for p in 20..30 {
            outs.push(
                model
                    .step(&row.narrow(1, p, 1).unwrap(), &mut fork)
                    .unwrap(),
            );
        }
        let d = max_abs_diff(
            &Tensor::cat(&outs, 1).unwrap(),
            &full.narrow(1, 12, 18).unwrap(),
        );
        assert!(d <= 1e-3, "{precision:?}: forked decoding differs by {d}");

        let mut three = fork.fork().unwrap();
        for p in 30..40 {
            let next = row.narrow(1, p, 1).unwrap().repeat((3, 1)).unwrap();
            let out = model.step(&next, &mut three).unwrap();
            for b in 0..3 {
                let d = max_abs_diff(&out.i(b).unwrap(), &full.i((0, p..p + 1)).unwrap());
                assert!(
                    d <= 1e-3,
                    "{precision:?}: sequence {b} at {p} differs by {d}"
                );
            }
        }
        assert_eq!(three.len(), 40);
    }
}

/// Mean NLL of the fixture's sequences under a model.
fn nll(model: &Model) -> f64 {
    let (tokens, _) = expected();
    let ids: Vec<u32> = tokens.i(0).unwrap().to_vec1().unwrap();
    model.score_decoder(&ids[1..]).unwrap().mean_nll
}

#[test]
fn reduced_precision_stays_close() {
    let (tokens, logits) = expected();
    let reference = nll(&load(Precision::F32));
    for (p, tol) in [
        (Precision::F16, 2e-2),
        (Precision::BF16, 1.5e-1),
        (Precision::Q8, 5e-2),
    ] {
        let model = load(p);
        let out = model.decoder.forward(&tokens, None).unwrap();
        let d = max_abs_diff(&out, &logits);
        assert!(d <= tol, "{p:?} logits differ by {d}");
        let n = nll(&model);
        assert!(
            (n - reference).abs() / reference < 0.01,
            "{p:?}: NLL {n} vs f32 {reference}"
        );
        // Quantized and half models must also decode incrementally like their full forward.
        let mut cache = model.new_cache(64);
        let row = tokens.i(0..1).unwrap();
        let a = model
            .step(&row.narrow(1, 0, 39).unwrap(), &mut cache)
            .unwrap();
        let b = model
            .step(&row.narrow(1, 39, 1).unwrap(), &mut cache)
            .unwrap();
        let inc = Tensor::cat(&[a, b], 1).unwrap();
        let full = model.decoder.forward(&row, None).unwrap();
        let d = max_abs_diff(&inc, &full);
        assert!(d <= tol, "{p:?} incremental differs by {d}");
    }
}

#[test]
fn score_matches_pytorch_nll_and_windows_cover_every_token() {
    let model = load(Precision::F32);
    let (tokens, logits) = expected();
    let ids: Vec<u32> = tokens.i(0).unwrap().to_vec1().unwrap();
    // Reference from PyTorch's logits: row i predicts token i + 1.
    let logp = candle_nn::ops::log_softmax(&logits.i(0).unwrap(), D::Minus1).unwrap();
    let mut want = 0f64;
    for i in 0..39 {
        want -= logp
            .i((i, ids[i + 1] as usize))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
    }
    want /= 39.0;
    let got = model.score_decoder(&ids[1..]).unwrap();
    assert_eq!(got.tokens, 39);
    assert!(
        (got.mean_nll - want).abs() < 1e-5,
        "{} vs {want}",
        got.mean_nll
    );

    // Windows: recompute each token's NLL by hand with the window rule (start advances to
    // end - context/2) and compare.
    let ctx = 16;
    let scored =
        engine::models::mean_nll(&model.decoder, None, &ids[1..], 1, ctx, &Device::Cpu).unwrap();
    let mut total = 0f64;
    let mut start = 0usize;
    let mut next = 1usize;
    while next < 40 {
        let end = (start + ctx).min(40);
        let w = Tensor::new(&ids[start..end], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let lp = candle_nn::ops::log_softmax(
            &model.decoder.forward(&w, None).unwrap().i(0).unwrap(),
            D::Minus1,
        )
        .unwrap();
        for (p, &id) in ids.iter().enumerate().take(end).skip(next) {
            total -= lp
                .i((p - 1 - start, id as usize))
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
        }
        next = end;
        start = end - ctx / 2;
    }
    assert!((scored.mean_nll - total / 39.0).abs() < 1e-6);
    // A short window sees less context, so it cannot be identical to the full score.
    assert!((scored.mean_nll - got.mean_nll).abs() > 1e-6);
}

#[test]
fn fused_and_plain_paths_agree_on_hidden_states() {
    let model = load(Precision::F32);
    let (tokens, _) = expected();
    let a = model
        .decoder
        .forward_hidden(&tokens, None, Kernels::Inference)
        .unwrap();
    let b = model
        .decoder
        .forward_hidden(&tokens, None, Kernels::Training)
        .unwrap();
    assert!(max_abs_diff(&a, &b) <= 1e-4);
}

#[test]
fn cloned_caches_are_independent() {
    let model = load(Precision::F32);
    let (tokens, logits) = expected();
    let row = tokens.i(0..1).unwrap();
    let mut a = model.new_cache(64);
    model.step(&row.narrow(1, 0, 20).unwrap(), &mut a).unwrap();
    let mut b = a.clone();
    // Interleave: a steps, branch b takes other tokens (the positions a just wrote), a steps
    // again and must still match the reference.
    model.step(&row.narrow(1, 20, 1).unwrap(), &mut a).unwrap();
    let other = Tensor::new(&[[7u32, 8, 9]], &Device::Cpu).unwrap();
    model.step(&other, &mut b).unwrap();
    let out = model.step(&row.narrow(1, 21, 1).unwrap(), &mut a).unwrap();
    let d = max_abs_diff(&out, &logits.i((0..1, 21..22)).unwrap());
    assert!(d <= 1e-4, "a clone's steps leaked into the original: {d}");
    assert_eq!((a.len(), b.len()), (22, 23));
}
