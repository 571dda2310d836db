//! Each op against the plain-op version it replaces (blocks.rs): forward values, and
//! gradients against candle's autograd of the plain ops, in f32 and f64.

use super::real::{erf_f32, exp_f32};
use super::*;
use crate::models::blocks::{
    causal_mask, gelu_glu_plain, layer_norm_plain, rotary_plain, softmax_plain, Rotary,
    RotaryTables, LN_EPS,
};
use candle_core::{Device, Result, Var};

type Op<'a> = &'a dyn Fn(&[Tensor]) -> Result<Tensor>;

/// Output of `f` on `inputs` and the gradients of a fixed random weighting of it.
fn run(f: Op, inputs: &[Tensor], weights: &Tensor) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts).unwrap();
    let loss = (&out * weights).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let g = ts
        .iter()
        .map(|t| grads.get(t).expect("a gradient").clone())
        .collect();
    (out, g)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let d = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap();
    d.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Checks `fused` against `plain` on `inputs` (f32 as given, then the same in f64):
/// forward within `tol32`/`tol64`, and the gradient of every input within the same
/// tolerance relative to its largest element.
fn check(what: &str, fused: Op, plain: Op, inputs: &[Tensor], tol32: f64, tol64: f64) {
    for (dtype, tol) in [(DType::F32, tol32), (DType::F64, tol64)] {
        let inputs: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(dtype).unwrap()).collect();
        let probe = fused(&inputs).unwrap();
        let w = Tensor::randn(0f64, 1.0, probe.shape(), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let (yf, gf) = run(fused, &inputs, &w);
        let (yp, gp) = run(plain, &inputs, &w);
        assert_eq!(yf.dtype(), dtype);
        let d = max_abs_diff(&yf, &yp);
        assert!(d <= tol, "{what} {dtype:?}: forward differs by {d}");
        for (i, (a, b)) in gf.iter().zip(&gp).enumerate() {
            // A gradient that is itself tracked keeps the step's graph alive (through the
            // optimiser's state) until the end of training.
            assert!(!a.track_op(), "{what} {dtype:?}: gradient {i} is tracked");
            let scale = b
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            let scale = scale.to_scalar::<f64>().unwrap().max(1.0);
            let d = max_abs_diff(a, b) / scale;
            assert!(
                d <= tol,
                "{what} {dtype:?}: gradient of input {i} differs by {d}"
            );
        }
    }
}

fn randn(shape: &[usize], std: f64) -> Tensor {
    Tensor::randn(0f32, std as f32, shape, &Device::Cpu).unwrap()
}

#[test]
fn layer_norm_matches_plain_ops() {
    // Rows of 40: not a multiple of the 8 lanes, so the tails are exercised too. Each case
    // is above `parallel`'s threshold, so that it is split into several tasks where the
    // test has more than one thread.
    for d in [64, 40] {
        let x = (randn(&[4, 300, d], 2.0) + 0.5).unwrap();
        let gamma = randn(&[d], 0.3);
        check(
            "layer norm",
            &|t| layer_norm(&t[0], &t[1], LN_EPS),
            &|t| layer_norm_plain(&t[0], &t[1]),
            &[x, gamma],
            1e-5,
            1e-12,
        );
    }
}

#[test]
fn softmax_matches_plain_ops() {
    // 13 keys: not a multiple of the 8 lanes; 52 K scores: several tasks.
    let (b, h, t) = (31, 10, 13);
    let scores = randn(&[b, h, t, t], 3.0);
    check(
        "softmax",
        &|x| softmax_last_dim(&x[0], None),
        &|x| softmax_plain(&x[0]),
        std::slice::from_ref(&scores),
        1e-5,
        1e-12,
    );
    // A causal mask plus key padding (the last key of the second sequence), as attention
    // builds them.
    let causal = causal_mask(t, 0, DType::F32, &Device::Cpu).unwrap();
    let mut pad = vec![0f32; b * t];
    pad[2 * t - 1] = -1e9;
    pad[b * t - 3] = -1e9;
    let pad = Tensor::from_vec(pad, (b, 1, 1, t), &Device::Cpu).unwrap();
    let mask = causal.broadcast_add(&pad).unwrap();
    for m in [causal, mask] {
        check(
            "masked softmax",
            &|x| softmax_last_dim(&x[0], Some(&m)),
            &|x| softmax_plain(&x[0].broadcast_add(&m.to_dtype(x[0].dtype())?)?),
            std::slice::from_ref(&scores),
            1e-5,
            1e-12,
        );
    }
}

#[test]
fn fully_masked_softmax_rows_are_zero() {
    let x = Tensor::full(f32::NEG_INFINITY, (2, 5), &Device::Cpu).unwrap();
    let y = softmax_last_dim(&x, None).unwrap();
    assert_eq!(y.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn rotary_matches_plain_ops() {
    // dim_head 16 with rot_dim 8: half the pairs are left alone (cos 1, sin 0).
    // 2,600 rows of 16: two tasks, the second starting mid-sequence.
    let (b, h, t, d) = (4, 5, 130, 16);
    let tables = Rotary::new(8)
        .tables(5, t, d, DType::F32, &Device::Cpu)
        .unwrap();
    let x = randn(&[b, h, t, d], 1.0);
    check(
        "rotary",
        &|x| rotary(&x[0], &tables.cos, &tables.sin),
        &|x| {
            let dt = x[0].dtype();
            rotary_plain(&x[0], &tables.cos.to_dtype(dt)?, &tables.sin.to_dtype(dt)?)
        },
        &[x],
        1e-6,
        1e-12,
    );
}

/// [`attention`] from plain ops, as blocks.rs computes it without the training ops.
fn attention_plain(
    x: &[Tensor],
    heads: usize,
    rot: Option<&RotaryTables>,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (b, t, inner) = x[0].dims3()?;
    let d = inner / heads;
    let split = |x: &Tensor| -> Result<Tensor> {
        let tk = x.dim(1)?;
        x.reshape((b, tk, heads, d))?.transpose(1, 2)?.contiguous()
    };
    let (mut q, mut k, v) = (split(&x[0])?, split(&x[1])?, split(&x[2])?);
    let dt = q.dtype();
    if let Some(r) = rot {
        let (c, s) = (r.cos.to_dtype(dt)?, r.sin.to_dtype(dt)?);
        q = rotary_plain(&q, &c, &s)?;
        k = rotary_plain(&k, &c, &s)?;
    }
    let scores = (q * scale)?.matmul(&k.t()?)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(&m.to_dtype(dt)?)?,
        None => scores,
    };
    softmax_plain(&scores)?
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((b, t, inner))
}

#[test]
fn attention_matches_plain_ops() {
    let (b, heads, t, d) = (3, 4, 11, 16);
    let scale = 1.0 / (d as f64).sqrt();
    let tables = Rotary::new(8)
        .tables(0, t, d, DType::F32, &Device::Cpu)
        .unwrap();
    let causal = causal_mask(t, 0, DType::F32, &Device::Cpu).unwrap();
    let x: Vec<Tensor> = (0..3).map(|_| randn(&[b, t, heads * d], 1.5)).collect();
    // Self-attention: rotary and a causal mask, as the decoder runs it.
    check(
        "self-attention",
        &|x| {
            let tables = Some((&tables.cos, &tables.sin));
            attention(&x[0], &x[1], &x[2], heads, tables, Some(&causal), scale)
        },
        &|x| attention_plain(x, heads, Some(&tables), Some(&causal), scale),
        &x,
        1e-5,
        1e-12,
    );
    // Cross-attention: more keys than queries, key padding, no rotary; and no mask at all.
    let tk = 17;
    let mut pad = vec![0f32; b * tk];
    pad[tk - 1] = -1e9;
    pad[2 * tk - 5..2 * tk].fill(-1e9);
    let pad = Tensor::from_vec(pad, (b, 1, 1, tk), &Device::Cpu).unwrap();
    let kv: Vec<Tensor> = (0..2).map(|_| randn(&[b, tk, heads * d], 1.5)).collect();
    let inputs = [x[0].clone(), kv[0].clone(), kv[1].clone()];
    for mask in [Some(&pad), None] {
        check(
            "cross-attention",
            &|x| attention(&x[0], &x[1], &x[2], heads, None, mask, scale),
            &|x| attention_plain(x, heads, None, mask, scale),
            &inputs,
            1e-5,
            1e-12,
        );
    }
}

#[test]
fn gelu_glu_matches_plain_ops() {
    let n = 20;
    // Spread wide enough to reach erf's saturated tails on both sides.
    let h = randn(&[4, 300, 2 * n], 3.0);
    let bias = randn(&[2 * n], 1.0);
    check(
        "gelu glu",
        &|t| gelu_glu(&t[0], &t[1]),
        &|t| gelu_glu_plain(&t[0].broadcast_add(&t[1])?, n),
        &[h, bias],
        1e-5,
        // candle's gelu_erf backward takes 1/√(2π) as 0.398942 (7e-7 relative error); this
        // op uses the exact constant, so f64 agreement stops there.
        2e-6,
    );
}

#[test]
fn linear_matches_plain_ops() {
    // 1,600 rows of 24 → 40: the bias gradient's row sum is split into several tasks.
    let x = randn(&[8, 200, 24], 1.0);
    let w = randn(&[40, 24], 0.3);
    let bias = randn(&[40], 1.0);
    let plain = |t: &[Tensor]| t[0].broadcast_matmul(&t[1].t()?);
    check(
        "linear",
        &|t| linear(&t[0], &t[1], None),
        &plain,
        &[x.clone(), w.clone()],
        1e-5,
        1e-12,
    );
    check(
        "linear with bias",
        &|t| linear(&t[0], &t[1], Some(&t[2])),
        &|t| plain(t)?.broadcast_add(&t[2]),
        &[x, w, bias],
        1e-5,
        1e-12,
    );
}

#[test]
fn erf_f32_is_within_1e7_of_erf() {
    let mut worst = 0f64;
    for i in -600_000..=600_000 {
        let x = i as f32 * 1e-5;
        let err = (erf_f32(x) as f64 - candle_core::cpu::erf::erf_f64(x as f64)).abs();
        worst = worst.max(err);
    }
    assert!(worst <= 1e-7, "erf_f32 is off by up to {worst}");
    assert_eq!(erf_f32(f32::INFINITY), 1.0);
    assert_eq!(erf_f32(f32::NEG_INFINITY), -1.0);
    assert_eq!(erf_f32(0.0), 0.0);
}

#[test]
fn exp_f32_is_within_a_few_ulp_of_exp() {
    let mut worst = 0f64;
    for i in -870_000..=880_000 {
        let x = i as f32 * 1e-4;
        let exact = (x as f64).exp();
        worst = worst.max((exp_f32(x) as f64 - exact).abs() / exact);
    }
    assert!(worst <= 3e-7, "exp_f32 has a relative error up to {worst}");
    assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp_f32(-100.0), 0.0);
    assert_eq!(exp_f32(0.0), 1.0);
}
