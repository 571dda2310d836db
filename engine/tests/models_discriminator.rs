//! The discriminator: shapes, bar grouping, and that padding never changes a score.

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::{VarBuilder, VarMap};
use engine::models::discriminator::bar_indices;
use engine::models::discriminator::DiscriminatorInput;
use engine::models::{Decoder, DecoderConfig, Discriminator, DiscriminatorConfig, Kernels};

fn disc() -> (Discriminator, VarMap) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let d = Discriminator::new(373, &DiscriminatorConfig::tiny(), vb).unwrap();
    (d, vm)
}

/// A tiny discriminator that reads a (random) tiny decoder's states.
fn disc_on_decoder() -> (Discriminator, VarMap) {
    let dm = VarMap::new();
    let dec = Decoder::new(
        373,
        &DecoderConfig::tiny(),
        VarBuilder::from_varmap(&dm, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let vm = VarMap::new();
    let cfg = DiscriminatorConfig {
        input: DiscriminatorInput::Decoder,
        ..DiscriminatorConfig::tiny()
    };
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let d = Discriminator::with_decoder(&dec, &cfg, vb).unwrap();
    (d, vm)
}

/// Both kinds of input, for the tests that hold for each.
fn discriminators() -> [(Discriminator, VarMap); 2] {
    [disc(), disc_on_decoder()]
}

const BAR: u32 = 3;

fn seq(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| {
            if i % 7 == 2 {
                BAR
            } else {
                4 + (i * 31 + salt * 17) % 360
            }
        })
        .collect()
}

#[test]
fn bars_are_grouped_by_bar_tokens() {
    assert_eq!(bar_indices(&[3, 5, 6, 3, 7, 3], 3), vec![0, 0, 0, 1, 1, 2]);
    // Tokens before the first Bar are a (partial) bar of their own.
    assert_eq!(bar_indices(&[5, 6, 3, 7], 3), vec![0, 0, 1, 1]);
    assert_eq!(bar_indices(&[9, 9], 3), vec![0, 0]);
    // The bar id is a parameter.
    assert_eq!(bar_indices(&[3, 5, 6, 3], 5), vec![0, 1, 1, 1]);
}

#[test]
fn output_shapes() {
    for (d, _vm) in discriminators() {
        output_shapes_of(&d);
    }
}

fn output_shapes_of(d: &Discriminator) {
    let (p0, p1, p2) = (seq(5, 1), seq(9, 2), seq(3, 3));
    let (c0, c1, c2) = (seq(20, 4), seq(11, 5), seq(2, 6));
    let batch = d
        .batch(&[&p0, &p1, &p2], &[&c0, &c1, &c2], &Device::Cpu)
        .unwrap();
    // Bar tokens at 2, 9, 16: the tokens before the first one are a bar too.
    assert_eq!(batch.bars, vec![4, 3, 1]);
    let out = d.forward(&batch, Kernels::Inference).unwrap();
    assert_eq!(out.logit.dims(), &[3]);
    for s in [&out.token_score, &out.bar_score, &out.order_score] {
        assert_eq!(s.dims(), &[3]);
    }
    assert_eq!(out.bar_scores.dims(), &[3, 4]);
    assert_eq!(out.bar_embeddings.dims(), &[3, 4, 16]);
    assert_eq!(
        out.bar_mask.to_vec2::<f32>().unwrap(),
        vec![
            vec![1., 1., 1., 1.],
            vec![1., 1., 1., 0.],
            vec![1., 0., 0., 0.]
        ]
    );
    let p: Vec<f32> = out.p_real().unwrap().to_vec1().unwrap();
    assert!(p.iter().all(|&x| x > 0.0 && x < 1.0));
    // Training and inference paths compute the same function.
    let plain = d.forward(&batch, Kernels::Training).unwrap();
    let diff: f32 = (plain.logit - out.logit)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(diff < 1e-4);
}

#[test]
fn padding_does_not_change_a_sequence_score() {
    for (d, _vm) in discriminators() {
        padding_does_not_change_a_sequence_score_of(&d);
    }
}

fn padding_does_not_change_a_sequence_score_of(d: &Discriminator) {
    let (p, c) = (seq(6, 1), seq(10, 2));
    let alone = d
        .forward(
            &d.batch(&[&p], &[&c], &Device::Cpu).unwrap(),
            Kernels::Training,
        )
        .unwrap();
    // Same pair next to longer sequences: its prime, continuation and bars get padded.
    let (p2, c2) = (seq(15, 3), seq(30, 4));
    let batch = d
        .batch(&[&p2, &p, &p2], &[&c2, &c, &c2], &Device::Cpu)
        .unwrap();
    let padded = d.forward(&batch, Kernels::Training).unwrap();
    let close = |a: &Tensor, b: &Tensor| {
        let m: f32 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(m < 1e-5, "padding changed a score by {m}");
    };
    close(&alone.logit.i(0).unwrap(), &padded.logit.i(1).unwrap());
    close(
        &alone.token_score.i(0).unwrap(),
        &padded.token_score.i(1).unwrap(),
    );
    close(
        &alone.bar_score.i(0).unwrap(),
        &padded.bar_score.i(1).unwrap(),
    );
    close(
        &alone.order_score.i(0).unwrap(),
        &padded.order_score.i(1).unwrap(),
    );
    let nb = alone.bar_scores.dim(1).unwrap();
    close(
        &alone.bar_scores.i(0).unwrap(),
        &padded.bar_scores.i((1, 0..nb)).unwrap(),
    );
    close(
        &alone.bar_embeddings.i(0).unwrap(),
        &padded.bar_embeddings.i((1, 0..nb)).unwrap(),
    );
    // And the content does matter (so the test above can fail).
    let other = d
        .forward(
            &d.batch(&[&p], &[&seq(10, 9)], &Device::Cpu).unwrap(),
            Kernels::Training,
        )
        .unwrap();
    let m: f32 = (alone.logit - other.logit)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(m > 1e-6);
}

#[test]
fn empty_or_mismatched_batches_are_refused() {
    let (d, _vm) = disc();
    let p = seq(3, 1);
    let empty: Vec<u32> = vec![];
    assert!(d.batch(&[&p], &[&empty], &Device::Cpu).is_err());
    assert!(d.batch(&[&p, &p], &[&p], &Device::Cpu).is_err());
    assert!(d.batch(&[], &[], &Device::Cpu).is_err());
}

#[test]
fn all_bars_in_one_and_many_bars() {
    let (d, _vm) = disc();
    let p = seq(4, 1);
    let one: Vec<u32> = vec![10, 11, 12, 13];
    let many: Vec<u32> = vec![BAR, 10, BAR, 11, BAR, BAR, 12];
    let b = d.batch(&[&p, &p], &[&one, &many], &Device::Cpu).unwrap();
    assert_eq!(b.bars, vec![1, 4]);
    let out = d.forward(&b, Kernels::Inference).unwrap();
    let v: Vec<f32> = out.logit.to_vec1().unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
}

/// One-hot token weights are the ids themselves: `forward_relaxed` with them gives the logits
/// of `forward` (feature matching relies on it: its value is the judgement of the sample).
#[test]
fn one_hot_weights_score_as_the_ids_do() {
    for (d, _vm) in discriminators() {
        one_hot_weights_score_as_the_ids_do_of(&d);
    }
}

fn one_hot_weights_score_as_the_ids_do_of(d: &Discriminator) {
    let (p0, p1) = (seq(5, 1), seq(9, 2));
    let (c0, c1) = (seq(12, 4), seq(7, 5));
    let batch = d.batch(&[&p0, &p1], &[&c0, &c1], &Device::Cpu).unwrap();
    let mut w = vec![0f32; 2 * 12 * 373];
    for (b, c) in [&c0, &c1].iter().enumerate() {
        for (t, &id) in c.iter().enumerate() {
            w[(b * 12 + t) * 373 + id as usize] = 1.0;
        }
    }
    let w = Tensor::from_vec(w, (2, 12, 373), &Device::Cpu).unwrap();
    for kernels in [Kernels::Inference, Kernels::Training] {
        let ids = d.forward(&batch, kernels).unwrap().logit;
        let relaxed = d.forward_relaxed(&batch, &w, kernels).unwrap().logit;
        let (a, b): (Vec<f32>, Vec<f32>) = (ids.to_vec1().unwrap(), relaxed.to_vec1().unwrap());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }
}

/// Reading the decoder, a continuation is judged in the light of its prime twice over (the
/// decoder's states and the cross-attention): the same continuation after another prime scores
/// differently, and a batch built for the other kind of input is refused, not misread.
#[test]
fn a_discriminator_on_the_decoder_reads_the_continuation_after_its_prime() {
    let (d, _vm) = disc_on_decoder();
    let c = seq(10, 2);
    let score = |p: &[u32]| -> f32 {
        let b = d.batch(&[p], &[&c], &Device::Cpu).unwrap();
        d.forward(&b, Kernels::Inference)
            .unwrap()
            .logit
            .to_vec1()
            .unwrap()[0]
    };
    assert!((score(&seq(6, 1)) - score(&seq(6, 7))).abs() > 1e-6);

    let (tokens, _vm2) = disc();
    let foreign = tokens.batch(&[&seq(6, 1)], &[&c], &Device::Cpu).unwrap();
    let err = d.forward(&foreign, Kernels::Inference).unwrap_err();
    assert!(err.to_string().contains("reads tokens"), "{err}");
    // Its file holds a projection from the decoder's width, no token embedding.
    let specs = Discriminator::tensor_specs(373, 32, d.config());
    assert_eq!(specs[0], ("proj_in.weight".to_string(), vec![16, 32]));
    assert!(specs.iter().all(|(n, _)| n != "token_emb.weight"));
}

/// The decoder path passes the relaxed continuation through the frozen decoder: the gradient
/// reaches the token weights (what feature matching needs) and no decoder tensor is a variable.
#[test]
fn the_relaxed_path_through_the_decoder_carries_a_gradient_to_the_weights() {
    let (d, vm) = disc_on_decoder();
    let (p, c) = (seq(5, 1), seq(8, 3));
    let batch = d.batch(&[&p], &[&c], &Device::Cpu).unwrap();
    let w = candle_core::Var::from_tensor(
        &(Tensor::ones((1, 8, 373), DType::F32, &Device::Cpu).unwrap() / 373.0).unwrap(),
    )
    .unwrap();
    let out = d
        .forward_relaxed(&batch, w.as_tensor(), Kernels::Training)
        .unwrap();
    let grads = out.logit.sum_all().unwrap().backward().unwrap();
    let g = grads
        .get(w.as_tensor())
        .expect("a gradient for the weights");
    let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
    assert!(norm > 0.0);
    // Only the discriminator's own tensors are variables of its map.
    let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
    assert!(names.iter().any(|n| n == "proj_in.weight"));
    assert!(names
        .iter()
        .all(|n| !n.starts_with("attn_layers.") && !n.starts_with("token_emb")));
}
