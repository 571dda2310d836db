//! The style adapter: exact pass-through at initialisation, KV cache, and its own file.

mod common;
use common::{fixture_dir, max_abs_diff};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use engine::models::{Adapter, AdapterConfig, Kernels, LoadOptions, Model};

fn model() -> Model {
    Model::load(fixture_dir(), &LoadOptions::default()).unwrap()
}

fn tokens() -> Tensor {
    let t =
        candle_core::safetensors::load(fixture_dir().join("expected.safetensors"), &Device::Cpu)
            .unwrap();
    t["tokens"].to_dtype(DType::U32).unwrap()
}

fn cfg(dim: usize) -> AdapterConfig {
    AdapterConfig {
        dim,
        ..AdapterConfig::tiny()
    }
}

/// Gives every variable of `varmap` random values, so the adapter is no longer the identity.
fn randomise(varmap: &VarMap) {
    for (i, var) in varmap.all_vars().iter().enumerate() {
        let t = Tensor::randn(0f32, 0.1, var.shape(), &Device::Cpu).unwrap();
        let _ = i;
        var.set(&t).unwrap();
    }
}

#[test]
fn fresh_adapter_is_an_exact_pass_through() {
    let m = model();
    let ids = tokens();
    let want = m.decoder.forward(&ids, None).unwrap();
    let hidden = m
        .decoder
        .forward_hidden(&ids, None, Kernels::Inference)
        .unwrap();
    // Same width (identity input projection) and a different width (proj_in / proj_out).
    for dim in [32, 16] {
        let vm = VarMap::new();
        let a = Adapter::fresh(&cfg(dim), &m.decoder, &vm, DType::F32, &Device::Cpu).unwrap();
        let got = a.forward(&hidden, None).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(
            d <= 1e-5,
            "dim {dim}: fresh adapter differs from the decoder by {d}"
        );
        let got = a.forward_train(&hidden).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-5, "dim {dim}: training path differs by {d}");
    }
}

#[test]
fn a_trained_adapter_changes_the_logits() {
    // Guards the pass-through test against passing for the wrong reason (adapter ignored).
    let m = model();
    let ids = tokens();
    let want = m.decoder.forward(&ids, None).unwrap();
    let vm = VarMap::new();
    let a = Adapter::fresh(&cfg(32), &m.decoder, &vm, DType::F32, &Device::Cpu).unwrap();
    randomise(&vm);
    let hidden = m
        .decoder
        .forward_hidden(&ids, None, Kernels::Inference)
        .unwrap();
    let got = a.forward(&hidden, None).unwrap();
    assert!(max_abs_diff(&got, &want) > 1e-2);
}

#[test]
fn incremental_adapter_matches_full_forward() {
    let m = model();
    let ids = tokens();
    let vm = VarMap::new();
    let a = Adapter::fresh(&cfg(16), &m.decoder, &vm, DType::F32, &Device::Cpu).unwrap();
    randomise(&vm);
    let full = a
        .forward(
            &m.decoder
                .forward_hidden(&ids, None, Kernels::Inference)
                .unwrap(),
            None,
        )
        .unwrap();
    let mut dc = m.decoder.new_cache(16);
    let mut ac = a.new_cache(16);
    let mut outs = Vec::new();
    for (s, len) in [(0, 7), (7, 1), (8, 1), (9, 31)] {
        let h = m
            .decoder
            .forward_hidden(
                &ids.narrow(1, s, len).unwrap(),
                Some(&mut dc),
                Kernels::Inference,
            )
            .unwrap();
        outs.push(a.forward(&h, Some(&mut ac)).unwrap());
    }
    let d = max_abs_diff(&Tensor::cat(&outs, 1).unwrap(), &full);
    assert!(d <= 1e-4, "cached adapter differs by {d}");
}

#[test]
fn adapter_file_round_trips_through_a_model_directory() {
    let tmp = tempfile::Builder::new()
        .prefix("continuator-adapter-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    for f in ["decoder.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture_dir().join(f), dir.join(f)).unwrap();
    }
    let m = model();
    let mut config = m.config.clone();
    config.adapter = Some(cfg(16));
    config.save(&dir.join("config.json")).unwrap();
    let vm = VarMap::new();
    let a = Adapter::fresh(&cfg(16), &m.decoder, &vm, DType::F32, &Device::Cpu).unwrap();
    randomise(&vm);
    vm.save(dir.join("adapter.safetensors")).unwrap();

    let loaded = Model::load(dir, &LoadOptions::default()).unwrap();
    assert!(loaded.adapter.is_some());
    let ids = tokens();
    let want = a
        .forward(
            &m.decoder
                .forward_hidden(&ids, None, Kernels::Inference)
                .unwrap(),
            None,
        )
        .unwrap();
    let got = loaded.forward(&ids).unwrap();
    assert!(max_abs_diff(&got, &want) <= 1e-6);
    // Model::step runs decoder and adapter caches together.
    let mut cache = loaded.new_cache(64);
    let a1 = loaded
        .step(&ids.narrow(1, 0, 39).unwrap(), &mut cache)
        .unwrap();
    let a2 = loaded
        .step(&ids.narrow(1, 39, 1).unwrap(), &mut cache)
        .unwrap();
    assert!(max_abs_diff(&Tensor::cat(&[a1, a2], 1).unwrap(), &want) <= 1e-4);
    // Scoring with the adapter differs from the decoder alone.
    let row: Vec<u32> = ids.get(0).unwrap().to_vec1().unwrap();
    let with = loaded.score(&row[1..]).unwrap().mean_nll;
    let without = loaded.score_decoder(&row[1..]).unwrap().mean_nll;
    assert!((with - without).abs() > 1e-3);
    // Swapping styles: a second adapter file, loaded explicitly.
    let vm2 = VarMap::new();
    Adapter::fresh(&cfg(16), &m.decoder, &vm2, DType::F32, &Device::Cpu).unwrap();
    vm2.save(dir.join("plain.safetensors")).unwrap();
    let mut swapped = loaded.clone();
    swapped
        .load_adapter(&dir.join("plain.safetensors"), &LoadOptions::default())
        .unwrap();
    assert!(
        max_abs_diff(
            &swapped.forward(&ids).unwrap(),
            &m.decoder.forward(&ids, None).unwrap()
        ) <= 1e-5
    );
}
