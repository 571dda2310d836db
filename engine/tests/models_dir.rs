//! Model directories: a PyTorch-only directory loads and scores; every kind of bad file gives
//! an error naming the file and the tensor, never a panic.

mod common;
use common::fixture_dir;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use engine::models::{Error, LoadOptions, Model, ModelConfig, ModelFiles};

/// A scratch copy of the fixture directory, removed on drop (also on panic).
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("continuator-models-{name}-"))
            .tempdir()
            .unwrap();
        for f in ["config.json", "tokenizer.json", "decoder.safetensors"] {
            std::fs::copy(fixture_dir().join(f), dir.path().join(f)).unwrap();
        }
        Self(dir)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.path().join(f)
    }
    fn load(&self) -> Result<Model, Error> {
        Model::load(self.0.path(), &LoadOptions::default())
    }
    fn weights(&self) -> HashMap<String, Tensor> {
        candle_core::safetensors::load(self.path("decoder.safetensors"), &Device::Cpu).unwrap()
    }
    fn write_weights(&self, w: &HashMap<String, Tensor>) {
        candle_core::safetensors::save(w, self.path("decoder.safetensors")).unwrap();
    }
    fn edit_config(&self, f: impl FnOnce(&mut serde_json::Value)) {
        let p = self.path("config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, v.to_string()).unwrap();
    }
}

/// The error message names `file` and, when given, `tensor`.
fn assert_names(err: &Error, file: &str, tensor: Option<&str>) {
    let msg = err.to_string();
    assert!(msg.contains(file), "`{msg}` does not name {file}");
    if let Some(t) = tensor {
        assert!(msg.contains(t), "`{msg}` does not name {t}");
    }
}

const EMB: &str = "token_emb.emb.weight";
const Q0: &str = "attn_layers.layers.0.1.to_q.weight";

#[test]
fn a_pytorch_only_directory_loads_and_scores() {
    let m = Model::load(fixture_dir(), &LoadOptions::default()).unwrap();
    assert!(m.adapter.is_none() && m.discriminator.is_none());
    assert_eq!(m.config.decoder.attn_dim_head, 8);
    let s = m.score(&[3, 12, 40, 100, 200]).unwrap();
    assert!(s.mean_nll.is_finite() && s.mean_nll > 0.0);
    assert_eq!(s.tokens, 5);
}

#[test]
fn config_round_trips_and_defaults_follow_x_transformers() {
    let text = r#"{"num_tokens": 373, "max_seq_len": 2048,
        "decoder": {"dim": 768, "depth": 12, "heads": 12, "ff_glu": true, "rotary_pos_emb": true}}"#;
    let c = ModelConfig::from_json(text, Path::new("config.json")).unwrap();
    assert_eq!(c.decoder.attn_dim_head, 64);
    assert_eq!(c.decoder.ff_mult, 4);
    assert_eq!(c.decoder.rot_dim(), 32);
    assert_eq!(c.decoder, ModelConfig::seed().decoder);
    for preset in [
        ModelConfig::seed(),
        ModelConfig::small(),
        ModelConfig::tiny(),
    ] {
        let json = serde_json::to_string(&preset).unwrap();
        assert_eq!(
            ModelConfig::from_json(&json, Path::new("c")).unwrap(),
            preset
        );
    }
}

#[test]
fn missing_tensor() {
    let s = Scratch::new("missing");
    let mut w = s.weights();
    w.remove(Q0);
    s.write_weights(&w);
    let e = s.load().unwrap_err();
    assert!(matches!(e, Error::MissingTensor { .. }), "{e}");
    assert_names(&e, "decoder.safetensors", Some(Q0));
}

#[test]
fn wrong_shape() {
    let s = Scratch::new("shape");
    let mut w = s.weights();
    w.insert(
        Q0.into(),
        Tensor::zeros((32, 16), DType::F32, &Device::Cpu).unwrap(),
    );
    s.write_weights(&w);
    let e = s.load().unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    assert_names(&e, "decoder.safetensors", Some(Q0));
}

#[test]
fn wrong_dtype() {
    let s = Scratch::new("dtype");
    let mut w = s.weights();
    w.insert(
        EMB.into(),
        Tensor::zeros((373, 32), DType::I64, &Device::Cpu).unwrap(),
    );
    s.write_weights(&w);
    let e = s.load().unwrap_err();
    assert!(matches!(e, Error::DType { .. }), "{e}");
    assert_names(&e, "decoder.safetensors", Some(EMB));
}

#[test]
fn half_precision_files_load() {
    let s = Scratch::new("f16");
    let w: HashMap<String, Tensor> = s
        .weights()
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F16).unwrap()))
        .collect();
    s.write_weights(&w);
    let m = s.load().unwrap();
    assert!(m.score(&[5, 6, 7]).unwrap().mean_nll.is_finite());
}

#[test]
fn truncated_and_foreign_files() {
    let s = Scratch::new("truncated");
    let bytes = std::fs::read(s.path("decoder.safetensors")).unwrap();
    std::fs::write(s.path("decoder.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = s.load().unwrap_err();
    assert!(matches!(e, Error::Safetensors { .. }), "{e}");
    assert_names(&e, "decoder.safetensors", None);

    for junk in [
        &b"PK\x03\x04 this is a zip, not safetensors"[..],
        b"",
        b"\xff\xff\xff\xff\xff\xff\xff\xff{}",
    ] {
        std::fs::write(s.path("decoder.safetensors"), junk).unwrap();
        let e = s.load().unwrap_err();
        assert!(matches!(e, Error::Safetensors { .. }), "{e}");
    }

    std::fs::remove_file(s.path("decoder.safetensors")).unwrap();
    let e = s.load().unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert_names(&e, "decoder.safetensors", None);
}

#[test]
fn config_disagreeing_with_weights() {
    // Deeper than the weights: the first missing layer is named.
    let s = Scratch::new("deeper");
    s.edit_config(|v| v["decoder"]["depth"] = 3.into());
    let e = s.load().unwrap_err();
    assert!(matches!(e, Error::MissingTensor { .. }), "{e}");
    assert_names(&e, "decoder.safetensors", Some("attn_layers.layers.4."));

    // Shallower: the extra layer is unexpected.
    let s = Scratch::new("shallower");
    s.edit_config(|v| v["decoder"]["depth"] = 1.into());
    let e = s.load().unwrap_err();
    assert!(matches!(e, Error::UnexpectedTensor { .. }), "{e}");
    assert_names(&e, "decoder.safetensors", Some("attn_layers.layers.2"));

    // Wider.
    let s = Scratch::new("wider");
    s.edit_config(|v| v["decoder"]["dim"] = 64.into());
    let e = s.load().unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    assert_names(&e, "decoder.safetensors", Some(EMB));

    // Another head width changes the rotary buffer's shape.
    let s = Scratch::new("rotary");
    s.edit_config(|v| v["decoder"]["rotary_emb_dim"] = 8.into());
    let e = s.load().unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    assert_names(&e, "decoder.safetensors", Some("rotary_pos_emb.inv_freq"));

    // A different rotary base shows in the buffer's values.
    let s = Scratch::new("base");
    let mut w = s.weights();
    let inv = (&w["attn_layers.rotary_pos_emb.inv_freq"] * 0.5).unwrap();
    w.insert("attn_layers.rotary_pos_emb.inv_freq".into(), inv);
    s.write_weights(&w);
    let e = s.load().unwrap_err();
    assert!(matches!(e, Error::Value { .. }), "{e}");

    // Vocabulary size in the config.
    let s = Scratch::new("vocab");
    s.edit_config(|v| v["num_tokens"] = 400.into());
    let e = s.load().unwrap_err();
    assert!(matches!(e, Error::VocabSize { .. }), "{e}");
    assert_names(&e, "tokenizer.json", None);
}

#[test]
fn unsupported_or_unknown_config_keys_are_refused_by_name() {
    for (key, value, needle) in [
        ("use_rmsnorm", serde_json::Value::Bool(true), "use_rmsnorm"),
        ("ff_glu", false.into(), "ff_glu"),
        ("rotary_pos_emb", false.into(), "rotary_pos_emb"),
        ("heads", 0.into(), "heads"),
        ("rotary_emb_dim", 3.into(), "rotary_emb_dim"),
    ] {
        let s = Scratch::new(&format!("key-{key}"));
        s.edit_config(|v| v["decoder"][key] = value.clone());
        let e = s.load().unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{key}: {e}");
        assert_names(&e, "config.json", Some(needle));
    }
    let s = Scratch::new("top-key");
    s.edit_config(|v| v["tie_embedding"] = true.into());
    let e = s.load().unwrap_err();
    assert_names(&e, "config.json", Some("tie_embedding"));

    let s = Scratch::new("not-json");
    std::fs::write(s.path("config.json"), "{ nope").unwrap();
    assert!(matches!(s.load().unwrap_err(), Error::Config { .. }));
}

#[test]
fn tokenizer_with_another_vocabulary_size() {
    let s = Scratch::new("tokenizer");
    let p = s.path("tokenizer.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["config"]["num_velocities"] = 16.into();
    std::fs::write(&p, v.to_string()).unwrap();
    let e = s.load().unwrap_err();
    assert!(matches!(e, Error::VocabSize { expected: 373, .. }), "{e}");
    assert_names(&e, "tokenizer.json", None);
}

#[test]
fn non_finite_weights_are_named() {
    let s = Scratch::new("nan");
    let mut w = s.weights();
    let mut v: Vec<f32> = w[Q0].flatten_all().unwrap().to_vec1().unwrap();
    v[5] = f32::NAN;
    w.insert(
        Q0.into(),
        Tensor::from_vec(v, w[Q0].shape(), &Device::Cpu).unwrap(),
    );
    s.write_weights(&w);
    let e = s.load().unwrap_err();
    assert!(matches!(e, Error::Value { .. }), "{e}");
    assert_names(&e, "decoder.safetensors", Some(Q0));
}

#[test]
fn bad_adapter_and_discriminator_files() {
    let s = Scratch::new("adapter");
    // A file without a header that records its shape, and no "adapter" section in
    // config.json: nothing says what shape it should have.
    let no_header = safetensors::serialize(
        [("x", Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap())],
        None,
    )
    .unwrap();
    std::fs::write(s.path("adapter.safetensors"), no_header).unwrap();
    let e = s.load().unwrap_err();
    assert!(matches!(e, Error::Config { .. }), "{e}");
    assert!(e.to_string().contains("adapter.safetensors"), "{e}");
    std::fs::write(s.path("adapter.safetensors"), b"garbage").unwrap();
    let e = s.load().unwrap_err();
    assert!(matches!(e, Error::Safetensors { .. }), "{e}");
    s.edit_config(|v| {
        v["adapter"] = serde_json::json!({"dim": 32, "depth": 1, "heads": 2, "attn_dim_head": 8})
    });
    let e = s.load().unwrap_err();
    assert!(matches!(e, Error::Safetensors { .. }), "{e}");
    assert_names(&e, "adapter.safetensors", None);
    // Skipped when not asked for.
    let opts = LoadOptions {
        adapter: false,
        ..LoadOptions::default()
    };
    assert!(Model::load(s.0.path(), &opts).is_ok());

    // A discriminator file is checked only when asked for.
    let s = Scratch::new("disc");
    s.edit_config(|v| {
        v["discriminator"] =
            serde_json::json!({"dim": 16, "depth": 1, "heads": 2, "attn_dim_head": 8})
    });
    let mut w = HashMap::new();
    w.insert(
        "token_emb.weight".to_string(),
        Tensor::zeros((373, 16), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&w, s.path("discriminator.safetensors")).unwrap();
    assert!(s.load().is_ok());
    let opts = LoadOptions {
        discriminator: true,
        ..LoadOptions::default()
    };
    let e = Model::load(s.0.path(), &opts).unwrap_err();
    assert!(matches!(e, Error::MissingTensor { .. }), "{e}");
    assert_names(&e, "discriminator.safetensors", Some("prime_encoder."));
}

#[test]
fn a_model_held_in_memory_loads_like_its_directory_and_names_its_label_in_errors() {
    let dir = fixture_dir();
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let (config, tokenizer) = (
        String::from_utf8(read("config.json")).unwrap(),
        String::from_utf8(read("tokenizer.json")).unwrap(),
    );
    let decoder = read("decoder.safetensors");
    let label = Path::new("<embedded model>");
    let files = ModelFiles {
        dir: label,
        config: &config,
        tokenizer: &tokenizer,
        decoder: &decoder,
    };
    let opts = LoadOptions::default();
    let from_memory = Model::from_files(&files, &opts).unwrap();
    let from_disk = Model::load(&dir, &opts).unwrap();
    let ids = Tensor::new(&[[1u32, 4, 40, 100, 200]], &Device::Cpu).unwrap();
    let diff = (from_memory.forward(&ids).unwrap() - from_disk.forward(&ids).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);

    let truncated = ModelFiles {
        decoder: &decoder[..decoder.len() / 2],
        ..files
    };
    let e = Model::from_files(&truncated, &opts).unwrap_err();
    assert!(matches!(e, Error::Safetensors { .. }), "{e}");
    assert_names(&e, "<embedded model>/decoder.safetensors", None);
    let bad_config = ModelFiles {
        config: "{ not json",
        ..files
    };
    let e = Model::from_files(&bad_config, &opts).unwrap_err();
    assert_names(&e, "<embedded model>/config.json", None);
}
