//! The discriminator: shapes, bar grouping, and that padding never changes a score.

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::{VarBuilder, VarMap};
use engine::models::discriminator::bar_indices;
use engine::models::{Discriminator, DiscriminatorConfig, Kernels};

fn disc() -> (Discriminator, VarMap) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let d = Discriminator::new(373, &DiscriminatorConfig::tiny(), vb).unwrap();
    (d, vm)
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
    let (d, _vm) = disc();
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
    let (d, _vm) = disc();
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
    let (d, _vm) = disc();
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
