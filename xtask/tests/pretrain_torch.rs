//! `scripts/pretrain_torch.py` end to end: the engine writes an id cache, two `torchrun`
//! processes (gloo, CPU) train a tiny x-transformers decoder on it with DDP, and the engine
//! scores and continues with the model directory the script wrote.
//!
//! Skipped (with a message) where Python lacks torch, x-transformers, safetensors or numpy:
//! CI does not install them.

mod common;

use std::process::Command;

use common::{root, s, text, xtask_one_thread as xtask};
use engine::midi::Score;

/// Why the Python side cannot run here, if it cannot.
fn python_missing() -> Option<String> {
    let probe = Command::new("python3")
        .args(["-c", "import torch, x_transformers, safetensors, numpy"])
        .output();
    match probe {
        Err(e) => Some(format!("python3 does not run ({e})")),
        Ok(o) if !o.status.success() => Some(
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("import failed")
                .to_string(),
        ),
        Ok(_) => None,
    }
}

/// The number before `nats/token` in `out`.
fn nats_per_token(out: &str) -> Option<f64> {
    out.split_whitespace()
        .zip(out.split_whitespace().skip(1))
        .find(|(_, unit)| unit.starts_with("nats/token"))
        .and_then(|(v, _)| v.parse().ok())
}

#[test]
fn torchrun_trains_a_model_the_engine_scores_and_continues() {
    if let Some(why) = python_missing() {
        println!("skipped: torch, x-transformers, safetensors and numpy are needed ({why})");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("continuator-pretrain-torch-")
        .tempdir()
        .unwrap();
    let tmp = tmp.path();
    let repo = root();
    let script = repo.join("scripts/pretrain_torch.py");

    // A small corpus: the examples and the tokenizer test files.
    let data = tmp.join("midi");
    std::fs::create_dir_all(&data).unwrap();
    for dir in ["assets/examples", "engine/tests/data/tokenizer/midi"] {
        for entry in std::fs::read_dir(repo.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "mid") {
                std::fs::copy(&path, data.join(path.file_name().unwrap())).unwrap();
            }
        }
    }

    // The engine tokenizes into RUN/data (one training step is the cheapest way to get there).
    let run = tmp.join("run");
    let o = xtask(&[
        "train",
        "decoder",
        "--data",
        s(&data),
        "--preset",
        "tiny",
        "--out",
        s(&run),
        "--steps",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let cache = run.join("data");
    assert!(cache.join("ids.bin").exists() && cache.join("index.json").exists());

    // One plain process (no torchrun), started from the engine's export with a learning rate
    // too small to move it: its validation must be the engine's (same split, same windows,
    // same math).
    let rust_val = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["kind"] == "val")
        .expect("the engine validated at its last step");
    let (rust_loss, rust_tokens) = (
        rust_val["val_loss"].as_f64().unwrap(),
        rust_val["val_tokens"].as_u64().unwrap(),
    );
    let exported = tmp.join("rust-model");
    let o = xtask(&["train", "export", s(&run), "--out", s(&exported)]);
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new("python3")
        .arg(&script)
        .args([
            "--cache",
            s(&cache),
            "--out",
            s(&tmp.join("same")),
            "--preset",
            "tiny",
        ])
        .args(["--init", s(&exported), "--steps", "1", "--lr", "1e-30"])
        .args(["--device", "cpu", "--threads", "1"])
        .current_dir(&repo)
        .output()
        .expect("python3 runs");
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("1 process(es)"), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("validation") && l.contains("nats/token over"))
        .unwrap_or_else(|| panic!("no validation line in: {log}"));
    let torch_loss = nats_per_token(line).unwrap();
    println!("validation of the engine's export: engine {rust_loss:.5}, torch {torch_loss:.5} nats/token");
    assert!(
        line.contains(&format!("over {rust_tokens} tokens")),
        "{line} (the engine: {rust_tokens} tokens)"
    );
    assert!(
        (torch_loss - rust_loss).abs() < 2e-3,
        "{line} vs {rust_loss}"
    );

    // Two DDP processes on the CPU.
    let model = tmp.join("model");
    let o = Command::new("python3")
        .args([
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
        ])
        .arg(&script)
        .args(["--cache", s(&cache), "--out", s(&model), "--preset", "tiny"])
        .args([
            "--seq",
            "64",
            "--batch",
            "2",
            "--steps",
            "6",
            "--val-every",
            "3",
        ])
        .args(["--device", "cpu", "--threads", "1"])
        .env("OMP_NUM_THREADS", "1")
        .current_dir(&repo)
        .output()
        .expect("python3 runs");
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("2 process(es)"), "{log}");
    assert!(log.contains("finished at step 6/6"), "{log}");
    let val = log
        .lines()
        .filter(|l| l.contains("validation") && l.contains("nats/token over"))
        .count();
    assert_eq!(val, 2, "{log}");
    for f in [
        "config.json",
        "decoder.safetensors",
        "tokenizer.json",
        "checkpoint.pt",
    ] {
        assert!(model.join(f).exists(), "{f} missing");
    }

    // The engine loads the directory unchanged.
    let example = repo.join("assets/examples/pop_4_4.mid");
    let o = xtask(&["score", "--model", s(&model), s(&example)]);
    assert!(o.status.success(), "{}", text(&o));
    let nats = nats_per_token(&String::from_utf8_lossy(&o.stdout))
        .unwrap_or_else(|| panic!("no nats/token in: {}", text(&o)));
    println!("score of the torch-trained tiny model: {nats} nats/token");
    // Finite, and better than nothing-learned would allow to be absurd: ln(373) ≈ 5.92.
    assert!(nats.is_finite() && nats > 0.0 && nats < 8.0, "{nats}");

    let out_mid = tmp.join("out.mid");
    let o = xtask(&[
        "continue",
        s(&example),
        "-o",
        s(&out_mid),
        "--model",
        s(&model),
        "--bars",
        "2",
        "--prime-bars",
        "1",
        "--only-continuation",
        "--seed",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let written = Score::read_file(&out_mid).unwrap();
    assert!(!written.notes.is_empty(), "no notes in the continuation");

    // A missing cache is one clear line naming the folder.
    let o = Command::new("python3")
        .arg(&script)
        .args([
            "--cache",
            s(&tmp.join("nowhere")),
            "--out",
            s(&tmp.join("m2")),
        ])
        .current_dir(&repo)
        .output()
        .expect("python3 runs");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("nowhere") && err.lines().count() == 1,
        "{err}"
    );
}
