//! `cargo xtask eval` and `cargo xtask visualize` end to end, with a random-weight tiny model
//! saved as a real model directory (1,024-token context, so continuations are real length),
//! and the generated site opened in headless Chromium when it is installed (see e2e/).

mod common;

use common::{root, xtask};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use engine::midi::Score;
use engine::models::model_dir::save_safetensors;
use engine::models::{Adapter, AdapterConfig, Decoder, ModelConfig};

fn temp_dir(tag: &str) -> tempfile::TempDir {
    common::temp_dir("eval", tag)
}

fn tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

/// A model directory with random tiny weights and a 1,024-token context; with `adapter`, a
/// random adapter.safetensors too.
fn random_model(dir: &Path, adapter: bool) {
    let mut config = ModelConfig::tiny();
    config.max_seq_len = 1024;
    config.discriminator = None;
    if !adapter {
        config.adapter = None;
    }
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let decoder = Decoder::new(config.num_tokens, &config.decoder, vb).unwrap();
    let mut weights = tensors(&varmap);
    weights.extend(decoder.buffers().unwrap());
    std::fs::create_dir_all(dir).unwrap();
    config.save(&dir.join("config.json")).unwrap();
    std::fs::copy(
        root().join("engine/tests/data/models/tiny_xt/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    save_safetensors(&dir.join("decoder.safetensors"), &weights).unwrap();
    if adapter {
        let cfg: AdapterConfig = config.adapter.clone().unwrap();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        Adapter::new(&cfg, config.decoder.dim, config.num_tokens, vb).unwrap();
        save_safetensors(&dir.join("adapter.safetensors"), &tensors(&varmap)).unwrap();
    }
}

/// The two example primes and the tokenizer fixtures, plus one file that is not MIDI, in a
/// `data` folder inside the test's scratch folder `tmp`.
fn data_dir(tmp: &Path) -> PathBuf {
    let dir = tmp.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    for folder in ["assets/examples", "engine/tests/data/tokenizer/midi"] {
        for entry in std::fs::read_dir(root().join(folder)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(dir.join("broken.mid"), b"not a MIDI file at all").unwrap();
    dir
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn eval_compares_every_system_on_the_same_windows_and_writes_json() {
    let scratch = temp_dir("json");
    let tmp = scratch.path();
    let data = data_dir(tmp);
    let model = tmp.join("model");
    random_model(&model, true);
    let json = tmp.join("eval.json");
    let args = [
        "eval",
        "--data",
        data.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--prime-bars",
        "2",
        "--bars",
        "2",
        "--cases",
        "4",
        "--seed",
        "5",
        "--json",
        json.to_str().unwrap(),
    ];
    let out = xtask(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for row in [
        "truth", "model", "decoder", "markov", "repeat", "closest", "NLL",
    ] {
        assert!(stdout.contains(row), "no `{row}` in:\n{stdout}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["adapter"], true);
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0]["file"].as_str().unwrap().ends_with("broken.mid"));
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let systems = case["systems"].as_object().unwrap();
        let names: Vec<&str> = systems.keys().map(String::as_str).collect();
        assert_eq!(names, ["decoder", "markov", "model", "repeat"]);
        for (name, m) in systems {
            let overlap = m["pitch_class_overlap"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&overlap), "{name}: {m}");
            assert!(m["seconds"].as_f64().unwrap() >= 0.0);
        }
        // The grammar holds for the model by construction and for the baselines because they
        // only reuse the prime's grid.
        for name in ["model", "decoder", "markov", "repeat"] {
            assert_eq!(systems[name]["grammar_valid"], true, "{name}: {case}");
            // Validity also asks for a note sounding in every requested bar, which generation
            // guarantees for the model.
            let silent = systems[name]["silent_bars"].as_array().unwrap();
            assert_eq!(systems[name]["valid"], silent.is_empty(), "{name}: {case}");
        }
        for name in ["model", "decoder"] {
            assert_eq!(systems[name]["valid"], true, "{name}: {case}");
        }
        // Repeating the last bars copies the prime, bar for bar, wherever the prime's bars
        // have notes.
        assert!(systems["repeat"]["copied_bar_share"].as_f64().unwrap() > 0.0);
        for s in ["model", "decoder"] {
            let nll = case["truth_nll"][s].as_f64().unwrap();
            // A random model over 373 tokens is near ln(373) = 5.92 nats per token.
            assert!(nll.is_finite() && nll > 3.0 && nll < 9.0, "{s}: {nll}");
        }
    }
    // Same seed, same windows and the same sampled continuations.
    let again = tmp.join("again.json");
    let mut args2 = args.to_vec();
    *args2.last_mut().unwrap() = again.to_str().unwrap();
    assert!(xtask(&args2).status.success());
    let report2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&again).unwrap()).unwrap();
    for (a, b) in cases.iter().zip(report2["cases"].as_array().unwrap()) {
        assert_eq!(a["file"], b["file"]);
        assert_eq!(a["first_bar"], b["first_bar"]);
        assert_eq!(
            a["systems"]["model"]["notes"],
            b["systems"]["model"]["notes"]
        );
        assert_eq!(
            a["systems"]["markov"]["notes"],
            b["systems"]["markov"]["notes"]
        );
    }
}

#[test]
fn eval_without_an_adapter_says_the_model_is_the_decoder() {
    let scratch = temp_dir("noadapter");
    let tmp = scratch.path();
    let model = tmp.join("model");
    random_model(&model, false);
    let example = root().join("assets/examples/pop_4_4.mid");
    let out = xtask(&[
        "eval",
        "--data",
        example.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--prime-bars",
        "1",
        "--bars",
        "1",
        "--cases",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("no adapter loaded"), "{stdout}");
    assert!(
        !stdout.lines().any(|l| l.starts_with("decoder ")),
        "{stdout}"
    );
}

#[test]
fn eval_refuses_folders_without_readable_midi_with_one_clear_error() {
    let scratch = temp_dir("errors");
    let tmp = scratch.path();
    let model = tmp.join("model");
    random_model(&model, false);
    let empty = tmp.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = xtask(&[
        "eval",
        "--data",
        empty.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.starts_with("error: ") && err.contains("no MIDI files"),
        "{err}"
    );
    assert!(err.contains(empty.to_str().unwrap()), "{err}");

    let broken = tmp.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("x.mid"), b"MThd garbage").unwrap();
    let out = xtask(&[
        "eval",
        "--data",
        broken.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("could be read") && err.contains("x.mid"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn visualize_writes_a_site_with_pages_and_midi_and_it_plays_in_chromium() {
    let scratch = temp_dir("site");
    let tmp = scratch.path();
    let model = tmp.join("model");
    random_model(&model, false);
    let site = tmp.join("site");
    let examples = root().join("assets/examples");
    let out = xtask(&[
        "visualize",
        "--data",
        examples.to_str().unwrap(),
        "--out",
        site.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--cases",
        "2",
        "--prime-bars",
        "2",
        "--bars",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let index = std::fs::read_to_string(site.join("index.html")).unwrap();
    for asset in ["style.css", "app.js"] {
        assert!(site.join(asset).is_file(), "{asset}");
    }
    let mut pages: Vec<PathBuf> = std::fs::read_dir(site.join("pieces"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    assert_eq!(pages.len(), 2, "one page per example piece");
    for page in &pages {
        let name = page.file_name().unwrap().to_str().unwrap();
        assert!(
            index.contains(&format!("pieces/{name}/index.html")),
            "{name} not in the index"
        );
        let html = std::fs::read_to_string(page.join("index.html")).unwrap();
        assert!(
            html.contains("\"systems\"") && !html.contains("{{"),
            "{name}"
        );
        // Nothing is fetched from the network at view time.
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{name}"
        );
        for midi in ["original", "model", "markov", "repeat"] {
            let score = Score::read_file(page.join(format!("{midi}.mid"))).unwrap();
            assert!(!score.notes.is_empty(), "{name}/{midi}.mid");
            assert!(
                html.contains(&format!("{midi}.mid")),
                "{name}: no link to {midi}.mid"
            );
        }
    }
    browser_check(&site);
}

/// Runs e2e/visualize.test.mjs on the site when Chromium and the e2e packages are installed
/// (`.ci/run` installs them and sets CONTINUATOR_E2E=1, which makes their absence a failure).
fn browser_check(site: &Path) {
    let required = std::env::var_os("CONTINUATOR_E2E").is_some_and(|v| v == "1");
    let chromium = Path::new("/usr/bin/chromium");
    let package = root().join("e2e/node_modules/playwright-core");
    let node = Command::new("node").arg("--version").output().is_ok();
    if !(chromium.exists() && package.exists() && node) {
        assert!(
            !required,
            "CONTINUATOR_E2E=1 but chromium, node or e2e/node_modules is missing"
        );
        eprintln!("skipped the browser check: install chromium and run `npm ci` in e2e/");
        return;
    }
    let shot = root().join("target/e2e/visualize.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let out = Command::new("node")
        .arg(root().join("e2e/visualize.test.mjs"))
        .arg(site)
        .arg(&shot)
        .current_dir(root().join("e2e"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    assert!(shot.is_file());
}
