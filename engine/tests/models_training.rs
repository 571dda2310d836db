//! Training safety: candle's fused kernels silently drop gradients, so every trainable
//! variable of every network must get a finite, non-zero gradient through the training path,
//! and those gradients must be right (finite differences in f64).

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use engine::models::{
    Adapter, AdapterConfig, Decoder, DecoderConfig, Discriminator, DiscriminatorConfig, Kernels,
};

const V: usize = 373;

fn ids(dev: &Device) -> Tensor {
    let v: Vec<u32> = (0..2 * 12).map(|i| ((i * 37 + 5) % V) as u32).collect();
    Tensor::from_vec(v, (2, 12), dev).unwrap()
}

fn decoder(dtype: DType) -> (Decoder, VarMap) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, dtype, &Device::Cpu);
    let d = Decoder::new(V, &DecoderConfig::tiny(), vb).unwrap();
    (d, vm)
}

/// A fixed random weighting of the outputs: the loss whose gradient is checked.
fn weighted_sum(x: &Tensor, seed: u64) -> Tensor {
    let n = x.elem_count();
    let mut s = seed;
    let w: Vec<f64> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        })
        .collect();
    let w = Tensor::from_vec(w, x.shape(), x.device())
        .unwrap()
        .to_dtype(x.dtype())
        .unwrap();
    (x * w).unwrap().sum_all().unwrap()
}

/// Asserts every variable has a finite gradient that is not all zero.
fn assert_all_grads(vm: &VarMap, loss: &Tensor, what: &str) {
    assert_all_grads_but_shift_invariant(vm, loss, what, &[]);
}

/// [`assert_all_grads`], except that the variables in `shift_invariant` feed only a softmax as
/// an added constant: the softmax cancels them, so their true gradient is exactly zero and the
/// computed one is rounding noise (sometimes exactly 0.0). They must still be connected to the
/// loss, finite, and near zero.
fn assert_all_grads_but_shift_invariant(
    vm: &VarMap,
    loss: &Tensor,
    what: &str,
    shift_invariant: &[&str],
) {
    let grads = loss.backward().unwrap();
    let data = vm.data().lock().unwrap();
    assert!(!data.is_empty());
    for (name, var) in data.iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{what}: `{name}` got no gradient"));
        let v: Vec<f32> = g
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{what}: `{name}` has a non-finite gradient"
        );
        if shift_invariant.contains(&name.as_str()) {
            assert!(
                v.iter().all(|x| x.abs() < 1e-4),
                "{what}: `{name}` only shifts a softmax, yet its gradient is {v:?}"
            );
            continue;
        }
        assert!(
            v.iter().any(|&x| x != 0.0),
            "{what}: `{name}` has an all-zero gradient"
        );
    }
}

fn cross_entropy(logits: &Tensor, ids: &Tensor) -> Tensor {
    let (b, t, v) = logits.dims3().unwrap();
    let l = logits
        .narrow(1, 0, t - 1)
        .unwrap()
        .reshape((b * (t - 1), v))
        .unwrap();
    let y = ids
        .narrow(1, 1, t - 1)
        .unwrap()
        .reshape(b * (t - 1))
        .unwrap();
    candle_nn::loss::cross_entropy(&l, &y).unwrap()
}

#[test]
fn every_decoder_variable_gets_a_gradient() {
    let (d, vm) = decoder(DType::F32);
    let x = ids(&Device::Cpu);
    let loss = cross_entropy(&d.forward_train(&x).unwrap(), &x);
    assert_all_grads(&vm, &loss, "decoder");
}

#[test]
fn the_inference_kernels_really_drop_gradients() {
    // Documents why the training kernels exist: if candle ever fixes this, the note can go.
    let (d, vm) = decoder(DType::F32);
    let x = ids(&Device::Cpu);
    let loss = cross_entropy(&d.forward(&x, None).unwrap(), &x);
    let grads = loss.backward().unwrap();
    let data = vm.data().lock().unwrap();
    let missing = data
        .values()
        .filter(|v| grads.get(v.as_tensor()).is_none())
        .count();
    assert!(missing > 0);
}

#[test]
fn every_adapter_variable_gets_a_gradient() {
    let (d, _) = decoder(DType::F32);
    let x = ids(&Device::Cpu);
    let hidden = d
        .forward_hidden(&x, None, Kernels::Training)
        .unwrap()
        .detach();
    for dim in [32, 16] {
        let cfg = AdapterConfig {
            dim,
            ..AdapterConfig::tiny()
        };
        let vm = VarMap::new();
        let a = Adapter::fresh(&cfg, &d, &vm, DType::F32, &Device::Cpu).unwrap();
        // At the pass-through start, the zero-initialised output projections must get a
        // gradient, or training could never leave the start.
        let loss = cross_entropy(&a.forward_train(&hidden).unwrap(), &x);
        let grads = loss.backward().unwrap();
        for (name, var) in vm.data().lock().unwrap().iter() {
            let zero_start = if dim == 32 {
                name.ends_with("to_out.weight") || name.ends_with("ff.2.weight")
            } else {
                name == "proj_out.weight"
            };
            if zero_start {
                let g = grads.get(var.as_tensor()).unwrap();
                let m: f32 = g
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                assert!(m > 0.0, "{name} gets no gradient at the pass-through start");
            }
        }
        // Away from the start, every variable gets one.
        for var in vm.all_vars() {
            let t = (var.as_tensor()
                + Tensor::randn(0f32, 0.05, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
            var.set(&t).unwrap();
        }
        let loss = cross_entropy(&a.forward_train(&hidden).unwrap(), &x);
        assert_all_grads(&vm, &loss, "adapter");
    }
}

#[test]
fn every_discriminator_variable_gets_a_gradient() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let d = Discriminator::new(V, &DiscriminatorConfig::tiny(), vb).unwrap();
    every_discriminator_variable_gets_a_gradient_of(&d, &vm);
    // Reading the decoder's states (`proj_in` instead of the token embedding).
    let (dec, _dec_vars) = decoder(DType::F32);
    let cfg = DiscriminatorConfig {
        input: engine::models::discriminator::DiscriminatorInput::Decoder,
        ..DiscriminatorConfig::tiny()
    };
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let d = Discriminator::with_decoder(&dec, &cfg, vb).unwrap();
    every_discriminator_variable_gets_a_gradient_of(&d, &vm);
}

fn every_discriminator_variable_gets_a_gradient_of(d: &Discriminator, vm: &VarMap) {
    let p0: Vec<u32> = vec![3, 10, 50, 60, 3, 12];
    let c0: Vec<u32> = vec![3, 40, 41, 42, 3, 43, 44, 3, 45];
    let c1: Vec<u32> = vec![70, 71, 3, 72];
    let batch = d
        .batch(&[&p0, &p0[..3]], &[&c0, &c1], &Device::Cpu)
        .unwrap();
    let out = d.forward(&batch, Kernels::Training).unwrap();
    // Binary cross-entropy against "first real, second fake", plus the sub-scores so each
    // head's own parameters matter on their own too.
    let y = Tensor::new(&[1f32, 0.], &Device::Cpu).unwrap();
    let logit = &out.logit;
    let bce = (logit.relu().unwrap() - (logit * &y).unwrap()).unwrap();
    let bce = (bce
        + logit
            .abs()
            .unwrap()
            .neg()
            .unwrap()
            .exp()
            .unwrap()
            .affine(1.0, 1.0)
            .unwrap()
            .log()
            .unwrap())
    .unwrap();
    let loss = (bce.mean_all().unwrap() + weighted_sum(&out.bar_scores, 3)).unwrap();
    // The bar attention's bias adds one constant to every score of a softmax over a bar.
    assert_all_grads_but_shift_invariant(vm, &loss, "discriminator", &["bar_attn.bias"]);
}

/// Central finite differences in f64 on a few elements of every variable.
fn finite_difference_check(vm: &VarMap, loss_fn: &dyn Fn() -> Tensor, what: &str) {
    let loss = loss_fn();
    let grads = loss.backward().unwrap();
    let vars: Vec<(String, Var)> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let eps = 1e-6;
    let mut checked = 0;
    for (name, var) in vars {
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let orig: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let n = orig.len();
        for &i in &[0, n / 2, n - 1] {
            let eval = |delta: f64| {
                let mut w = orig.clone();
                w[i] += delta;
                var.set(&Tensor::from_vec(w, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss_fn().to_scalar::<f64>().unwrap()
            };
            let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
            var.set(&Tensor::from_vec(orig.clone(), var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let err = (numeric - g[i]).abs();
            assert!(
                err <= 1e-6 + 1e-4 * numeric.abs().max(g[i].abs()),
                "{what}: `{name}`[{i}]: backprop {} vs finite difference {numeric}",
                g[i]
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
}

#[test]
fn decoder_and_adapter_gradients_match_finite_differences() {
    let (d, vm) = decoder(DType::F64);
    let x = ids(&Device::Cpu);
    finite_difference_check(
        &vm,
        &|| weighted_sum(&d.forward_train(&x).unwrap(), 1),
        "decoder",
    );

    let cfg = AdapterConfig {
        dim: 16,
        ..AdapterConfig::tiny()
    };
    let avm = VarMap::new();
    let a = Adapter::fresh(&cfg, &d, &avm, DType::F64, &Device::Cpu).unwrap();
    for var in avm.all_vars() {
        let t = (var.as_tensor() + Tensor::randn(0f64, 0.05, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
        var.set(&t).unwrap();
    }
    let h = d
        .forward_hidden(&x, None, Kernels::Training)
        .unwrap()
        .detach();
    finite_difference_check(
        &avm,
        &|| weighted_sum(&a.forward_train(&h).unwrap(), 2),
        "adapter",
    );
}

#[test]
fn discriminator_gradients_match_finite_differences() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu);
    let d = Discriminator::new(V, &DiscriminatorConfig::tiny(), vb).unwrap();
    let p: Vec<u32> = vec![3, 10, 50];
    let c0: Vec<u32> = vec![3, 40, 41, 3, 43, 44];
    let c1: Vec<u32> = vec![70, 3, 72];
    let batch = d.batch(&[&p, &p], &[&c0, &c1], &Device::Cpu).unwrap();
    finite_difference_check(
        &vm,
        &|| {
            let o = d.forward(&batch, Kernels::Training).unwrap();
            (weighted_sum(&o.logit, 4) + weighted_sum(&o.bar_scores, 5)).unwrap()
        },
        "discriminator",
    );
    let _ = D::Minus1;
}
