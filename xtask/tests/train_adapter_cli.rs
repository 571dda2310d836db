//! `train adapter` end to end on tiny data: a decoder pretrained for a few steps and exported,
//! an adapter trained on it, stopped and resumed, plotted, then used by `continue` (with
//! `--rerank`, and `--adapter none`); and the clear errors: too few pairs, a corrupt checkpoint,
//! an adapter of another decoder shape.

mod common;

use common::{s, text, xtask_one_thread as xtask};

const MIDI: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../engine/tests/data/tokenizer/midi"
);
const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../assets/examples/pop_4_4.mid"
);

#[test]
fn train_adapter_resume_plot_continue_and_errors() {
    let tmp = common::temp_dir("train-adapter-cli", "all");
    let root = tmp.path();
    let (run, model) = (root.join("run"), root.join("model"));
    let o = xtask(&[
        "train",
        "decoder",
        "--data",
        MIDI,
        "--preset",
        "tiny",
        "--out",
        s(&run),
        "--steps",
        "3",
        "--batch",
        "2",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = xtask(&["train", "export", s(&run), "--out", s(&model)]);
    assert!(o.status.success(), "{}", text(&o));

    let adapter = root.join("adapters/style.safetensors");
    let base = [
        "train",
        "adapter",
        "--model",
        s(&model),
        "--data",
        MIDI,
        "--out",
        s(&adapter),
        "--prime-bars",
        "1",
        "--bars",
        "1",
        "--batch",
        "2",
        "--samples",
        "2",
        "--eval-every",
        "2",
        "--warmup-max-steps",
        "1",
    ];
    let o = xtask(&[&base[..], &["--steps", "4", "--stop-at", "2"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("stopped at step 2/4"), "{}", text(&o));
    assert!(text(&o).contains("phase warm-up → joint"), "{}", text(&o));
    let o = xtask(&[&base[..], &["--steps", "4"]].concat());
    assert!(
        !o.status.success() && text(&o).contains("--resume"),
        "{}",
        text(&o)
    );
    let o = xtask(&[&base[..], &["--resume"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("finished at step 4/4"), "{}", text(&o));
    let run_dir = root.join("adapters/style.run");
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let kinds = |k: &str| {
        metrics
            .lines()
            .filter(|l| l.contains(&format!("\"kind\":\"{k}\"")))
            .count()
    };
    assert_eq!(kinds("train"), 4, "{metrics}");
    assert!(kinds("eval") >= 3 && kinds("phase") >= 1, "{metrics}");
    let disc = root.join("adapters/style.discriminator.safetensors");
    assert!(adapter.exists() && disc.exists());

    let o = xtask(&["plot", s(&run_dir)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(run_dir.join("adapter.png").exists());

    let out = root.join("out.mid");
    let cont = |extra: &[&str]| {
        xtask(
            &[
                &[
                    "continue",
                    EXAMPLE,
                    "-o",
                    s(&out),
                    "--model",
                    s(&model),
                    "--bars",
                    "1",
                ][..],
                extra,
            ]
            .concat(),
        )
    };
    let o = cont(&["--adapter", s(&adapter), "--rerank", "3"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("rerank: kept candidate"), "{}", text(&o));
    // eval measures the reranked model as a system of its own.
    let o = xtask(&[
        "eval",
        "--data",
        &format!("{MIDI}/scale_4_4.mid"),
        "--model",
        s(&model),
        "--adapter",
        s(&adapter),
        "--prime-bars",
        "1",
        "--bars",
        "1",
        "--cases",
        "1",
        "--rerank",
        "2",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("\nrerank "), "{}", text(&o));
    // A discriminator that reads the decoder: trained, written with its shape in the header,
    // and loaded back on the decoder for reranking.
    let on_decoder = root.join("adapters/on-decoder.safetensors");
    let mut args = base.to_vec();
    args[7] = s(&on_decoder);
    let o = xtask(&[&args[..], &["--steps", "1", "--critic-reads", "decoder"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let header = std::fs::read(root.join("adapters/on-decoder.discriminator.safetensors")).unwrap();
    assert!(
        String::from_utf8_lossy(&header).contains(r#"\"input\":\"decoder\""#),
        "the discriminator's header does not record what it reads"
    );
    let o = cont(&["--adapter", s(&on_decoder), "--rerank", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("rerank: kept candidate"), "{}", text(&o));
    let o = cont(&["--adapter", "none"]);
    assert!(o.status.success(), "{}", text(&o));
    // Reranking without a discriminator anywhere names the file it looked for.
    let o = cont(&["--rerank", "2"]);
    assert!(
        !o.status.success() && text(&o).contains("discriminator.safetensors"),
        "{}",
        text(&o)
    );
    // An adapter for another decoder (the embedded model's is 6 × 256).
    let o = xtask(&[
        "continue",
        EXAMPLE,
        "-o",
        s(&out),
        "--adapter",
        s(&adapter),
        "--bars",
        "1",
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(s(&adapter)) && text(&o).contains("another decoder"),
        "{}",
        text(&o)
    );

    // A corrupt checkpoint.
    std::fs::write(run_dir.join("checkpoint.safetensors"), b"garbage").unwrap();
    let o = xtask(&[&base[..], &["--resume", "--steps", "6"]].concat());
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("checkpoint.safetensors"), "{}", text(&o));

    // A folder with too few usable pairs.
    let one = root.join("one");
    std::fs::create_dir_all(&one).unwrap();
    std::fs::copy(format!("{MIDI}/scale_4_4.mid"), one.join("scale.mid")).unwrap();
    let o = xtask(&[
        "train",
        "adapter",
        "--model",
        s(&model),
        "--data",
        s(&one),
        "--out",
        s(&root.join("few.safetensors")),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(s(&one)) && text(&o).contains("pairs"),
        "{}",
        text(&o)
    );
}
