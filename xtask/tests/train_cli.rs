//! The `train` command line end to end on tiny data: a clear error for a folder without MIDI,
//! train → Ctrl-C → `--resume` → `plot` → `train export` → `score` on the exported directory.

mod common;

use std::process::Command;

use common::{s, text, xtask_one_thread as xtask};

const MIDI: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../engine/tests/data/tokenizer/midi"
);
const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../assets/examples/pop_4_4.mid"
);

/// A fresh, empty temporary folder for one test, removed when dropped (also on panic).
fn temp(name: &str) -> tempfile::TempDir {
    common::temp_dir("train-cli", name)
}

#[test]
fn a_folder_without_midi_is_a_one_line_error() {
    let tmp = temp("nomidi");
    let root = tmp.path();
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = root.join("run");
    let o = xtask(&[
        "train",
        "decoder",
        "--data",
        s(&empty),
        "--preset",
        "tiny",
        "--out",
        s(&out),
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("no MIDI files") && t.contains(s(&empty)), "{t}");
}

#[test]
fn train_resume_plot_export_score() {
    let tmp = temp("train");
    let root = tmp.path();
    let run = root.join("run");
    let base = [
        "train",
        "decoder",
        "--data",
        MIDI,
        "--preset",
        "tiny",
        "--out",
        s(&run),
        "--seq",
        "32",
        "--batch",
        "2",
        "--val-every",
        "5",
    ];
    let o = xtask(&[&base[..], &["--steps", "12", "--stop-at", "6"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("stopped (resume with --resume) at step 6/12"));

    // A second start without --resume refuses to overwrite the run.
    let o = xtask(&[&base[..], &["--steps", "12"]].concat());
    assert!(!o.status.success());
    assert!(text(&o).contains("--resume"), "{}", text(&o));

    let o = xtask(&[&base[..], &["--resume"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("finished at step 12/12"), "{}", text(&o));

    let o = xtask(&["plot", s(&run)]);
    // The plot needs a system font; without one it must say so.
    assert!(
        o.status.success() || text(&o).contains("CONTINUATOR_FONT"),
        "{}",
        text(&o)
    );

    // The run's own notes travel into the card.
    std::fs::write(
        run.join("NOTES.md"),
        "Resumed on a second machine at step 6.\n",
    )
    .unwrap();
    let model = root.join("model");
    let o = xtask(&["train", "export", s(&run), "--out", s(&model), "--f16"]);
    assert!(o.status.success(), "{}", text(&o));
    for f in [
        "config.json",
        "tokenizer.json",
        "decoder.safetensors",
        "MODEL_CARD.md",
    ] {
        assert!(model.join(f).exists(), "{f} missing");
    }
    let card = std::fs::read_to_string(model.join("MODEL_CARD.md")).unwrap();
    assert!(
        card.contains("bigram baseline")
            && card.contains("12 of 12")
            && card.contains("## Run notes")
            && card.contains("Resumed on a second machine at step 6."),
        "{card}"
    );

    let o = xtask(&["score", "--model", s(&model), EXAMPLE]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("nats/token"));

    // A card names its data relative to where it was made, never by the machine's path.
    let data_abs = std::fs::canonicalize(MIDI).unwrap();
    assert!(
        !card.contains(&data_abs.display().to_string()),
        "the card names {}:\n{card}",
        data_abs.display()
    );

    // A second run starts from the exported weights with twice the context (`--init`), and
    // its export compares itself with that model on the same windows, at both lengths, even
    // when it replaces the directory it compares with.
    let longer = root.join("longer");
    let o = xtask(&[
        "train",
        "decoder",
        "--data",
        MIDI,
        "--preset",
        "tiny",
        "--out",
        s(&longer),
        "--seq",
        "64",
        "--batch",
        "2",
        "--steps",
        "3",
        "--init",
        s(&model),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = xtask(&[
        "train",
        "export",
        s(&longer),
        "--out",
        s(&model),
        "--compare",
        s(&model),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let card = std::fs::read_to_string(model.join("MODEL_CARD.md")).unwrap();
    assert!(card.contains("started from the"), "{card}");
    assert!(card.contains("--init "), "{card}");
    let rows: Vec<&str> = card
        .lines()
        .filter(|l| l.starts_with("| 32 tokens |") || l.starts_with("| 64 tokens |"))
        .collect();
    assert_eq!(rows.len(), 2, "{card}");
    assert!(
        rows[1].contains("beyond its 32-token training context"),
        "{card}"
    );
    let o = xtask(&[
        "train",
        "export",
        s(&longer),
        "--out",
        s(&root.join("x")),
        "--compare",
        s(root),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("config.json"), "{}", text(&o));
}

#[cfg(unix)]
#[test]
fn ctrl_c_writes_a_checkpoint_and_exits_cleanly() {
    let tmp = temp("ctrlc");
    let root = tmp.path();
    let run = root.join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "train",
            "decoder",
            "--data",
            MIDI,
            "--preset",
            "tiny",
            "--out",
            s(&run),
            "--seq",
            "32",
            "--batch",
            "2",
            "--steps",
            "100000000",
        ])
        .env("RAYON_NUM_THREADS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training has started (the metrics file appears), then interrupt.
    let metrics = run.join("metrics.jsonl");
    let start = std::time::Instant::now();
    while !metrics.exists() && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("stopped (resume with --resume)"),
        "{}",
        text(&o)
    );
    assert!(run.join("checkpoint.safetensors").exists());
}
