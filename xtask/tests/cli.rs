//! The command line as a user meets it: outputs on disk, and one clear error line with a
//! non-zero exit status for bad input.

mod common;

use common::{root, xtask};
use std::path::{Path, PathBuf};
use std::process::Output;

use engine::midi::Score;

fn temp_dir(tag: &str) -> tempfile::TempDir {
    common::temp_dir("cli", tag)
}

/// The random tiny x-transformers fixture: real files, but a 64-token context.
fn tiny_model() -> String {
    root()
        .join("engine/tests/data/models/tiny_xt")
        .display()
        .to_string()
}

fn example() -> String {
    root()
        .join("assets/examples/pop_4_4.mid")
        .display()
        .to_string()
}

/// Exit status non-zero, stderr exactly one line that starts with `error:` and contains `needle`.
fn assert_clean_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn tokenize_prints_miditok_ids_as_one_json_line() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            root().join("engine/tests/data/tokenizer/golden/fixtures__chords_triplets.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let midi = root().join("engine/tests/data/tokenizer/midi/chords_triplets.mid");
    let out = xtask(&["tokenize", midi.to_str().unwrap(), "--ids"]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1);
    let ids: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(ids, golden["ids"]);
    let out = xtask(&["tokenize", midi.to_str().unwrap()]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().next(), Some("Bar_None"));
    assert_eq!(
        stdout.lines().count(),
        golden["ids"].as_array().unwrap().len()
    );
}

/// What a fresh clone can do with no other step: continue an example with the committed default
/// model (`assets/model`, no `--model`), and score it far below a uniform guess (ln 373 ≈ 5.9
/// nats/token; an untrained model scores about that).
#[test]
fn the_default_model_continues_and_scores_an_example_with_no_other_step() {
    let scratch = temp_dir("default-model");
    let dir = scratch.path();
    let out_path = dir.join("out.mid");
    let out = xtask(&["continue", &example(), "-o", out_path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let input = Score::read_file(example()).unwrap();
    let written = Score::read_file(&out_path).unwrap();
    let prime_end = input.notes.iter().map(|n| n.start.0).max().unwrap();
    let continuation = written
        .notes
        .iter()
        .filter(|n| n.start.0 > prime_end)
        .count();
    assert!(continuation >= 4, "{continuation} notes after the prime");

    let model = root().join("assets/model");
    let out = xtask(&["score", "--model", model.to_str().unwrap(), &example()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nats: f64 = stdout
        .split_whitespace()
        .zip(stdout.split_whitespace().skip(1))
        .find(|(_, unit)| unit.starts_with("nats/token"))
        .and_then(|(v, _)| v.parse().ok())
        .unwrap_or_else(|| panic!("no nats/token in: {stdout}"));
    assert!(nats < 3.0, "the default model scores {nats} nats/token");
}

/// The corpus piece (one meter throughout) with the most notes per bar, when the shared corpus
/// is here.
fn densest_corpus_piece() -> Option<(PathBuf, Score)> {
    let corpus = root().join("../shared/corpus");
    let mut files = Vec::new();
    let mut dirs = vec![corpus];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "mid" || e == "midi") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .filter_map(|path| {
            let score = Score::read_file(&path).ok()?;
            if score.time_signatures.len() > 1 || score.notes.is_empty() {
                return None;
            }
            let bar = score.initial_time_signature().quarters_per_bar().0
                * f64::from(score.ticks_per_quarter);
            let end = score.notes.iter().map(|n| n.end().0).max()? as f64;
            let density = score.notes.len() as f64 / (end / bar).ceil().max(1.0);
            Some((density, path, score))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, path, score)| (path, score))
}

#[test]
fn the_default_model_writes_64_full_bars_after_the_densest_corpus_piece() {
    let Some((piece, input)) = densest_corpus_piece() else {
        eprintln!("skipped: no shared corpus next to the repository");
        return;
    };
    let scratch = temp_dir("long");
    let dir = scratch.path();
    let out_path = dir.join("long.mid");
    let out = xtask(&[
        "continue",
        piece.to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
        "--prime-bars",
        "4",
        "--bars",
        "64",
        "--only-continuation",
        "--seed",
        "1",
        "--precision",
        "q8",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", piece.display());
    let written = Score::read_file(&out_path).unwrap();
    let bar = (input.initial_time_signature().quarters_per_bar().0
        * f64::from(input.ticks_per_quarter)) as u64;
    let start = 4 * bar;
    let mut per_bar = vec![0usize; 64];
    for n in &written.notes {
        let b = ((n.start.0 - start) / bar) as usize;
        assert!(n.start.0 >= start && b < 64, "{n} outside the 64 bars");
        per_bar[b] += 1;
    }
    assert!(
        per_bar.iter().all(|&n| n > 0),
        "{}: empty bars in {per_bar:?}",
        piece.display()
    );
    let mean = |bars: &[usize]| bars.iter().sum::<usize>() as f64 / bars.len() as f64;
    let (early, late) = (mean(&per_bar[..16]), mean(&per_bar[48..]));
    assert!(
        late >= 0.5 * early,
        "{}: late bars thin out ({late:.1} against {early:.1} notes a bar): {per_bar:?}",
        piece.display()
    );
    // The file ends on the continuation's last bar line.
    assert_eq!(written.end.0, start + 64 * bar);
}

#[test]
fn continue_writes_prime_and_continuation_tracks() {
    let scratch = temp_dir("continue");
    let dir = scratch.path();
    let out_path = dir.join("out.mid");
    let out = xtask(&[
        "continue",
        &example(),
        "-o",
        out_path.to_str().unwrap(),
        "--model",
        &tiny_model(),
        "--bars",
        "2",
        "--prime-bars",
        "1",
        "--seed",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tokens/s") && stderr.contains("real-time factor"),
        "{stderr}"
    );
    let bytes = std::fs::read(&out_path).unwrap();
    let smf = midly::Smf::parse(&bytes).unwrap();
    // Conductor + prime + continuation.
    assert_eq!(smf.tracks.len(), 3);
    let written = Score::read_file(&out_path).unwrap();
    let input = Score::read_file(example()).unwrap();
    assert_eq!(written.ticks_per_quarter, input.ticks_per_quarter);
    // The prime's first bar is there unchanged; nothing of the continuation starts before bar 2.
    let bar = 4 * u64::from(input.ticks_per_quarter);
    let prime_notes: Vec<_> = input.notes.iter().filter(|n| n.start.0 < bar).collect();
    let written_first_bar: Vec<_> = written.notes.iter().filter(|n| n.start.0 < bar).collect();
    assert_eq!(prime_notes, written_first_bar);
    assert!(written.notes.iter().all(|n| n.start.0 < 3 * bar));

    // --only-continuation: conductor + continuation.
    let only = dir.join("only.mid");
    let out = xtask(&[
        "continue",
        &example(),
        "-o",
        only.to_str().unwrap(),
        "--model",
        &tiny_model(),
        "--bars",
        "2",
        "--prime-bars",
        "1",
        "--only-continuation",
    ]);
    assert!(out.status.success());
    assert_eq!(
        midly::Smf::parse(&std::fs::read(&only).unwrap())
            .unwrap()
            .tracks
            .len(),
        2
    );
}

#[test]
fn steering_flags_lock_the_key_found_in_the_prime_and_the_range() {
    let scratch = temp_dir("steering");
    let dir = scratch.path();
    let out_path = dir.join("steered.mid");
    let out = xtask(&[
        "continue",
        &example(),
        "-o",
        out_path.to_str().unwrap(),
        "--model",
        &tiny_model(),
        "--bars",
        "2",
        "--prime-bars",
        "2",
        "--temperature",
        "1.5",
        "--key",
        "auto",
        "--range",
        "C4-C5",
        "--only-continuation",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("key: "))
        .unwrap_or_else(|| panic!("the key found is not printed: {stderr}"));
    let name = line["key: ".len()..].split(" (").next().unwrap();
    let (tonic, mode) = name.split_once(' ').unwrap();
    let key: engine::key::Key = format!("{tonic}{}", if mode == "minor" { "m" } else { "" })
        .parse()
        .unwrap();
    let written = Score::read_file(&out_path).unwrap();
    assert!(!written.notes.is_empty());
    for n in &written.notes {
        assert!(
            (60..=72).contains(&n.pitch) && key.contains(n.pitch),
            "{n} ({key})"
        );
    }
}

#[test]
fn variations_write_numbered_files() {
    let scratch = temp_dir("variations");
    let dir = scratch.path();
    let out_path = dir.join("take.mid");
    let out = xtask(&[
        "continue",
        &example(),
        "-o",
        out_path.to_str().unwrap(),
        "--model",
        &tiny_model(),
        "--bars",
        "1",
        "--variations",
        "3",
        "--temperature",
        "1.5",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 1..=3 {
        assert!(
            dir.join(format!("take-{i}.mid")).exists(),
            "take-{i}.mid missing"
        );
    }
    assert!(!out_path.exists());
}

#[test]
fn bad_input_gets_one_clear_error_line() {
    let scratch = temp_dir("bad");
    let dir = scratch.path();
    let out = dir.join("out.mid");
    let out = out.to_str().unwrap();
    let model = tiny_model();
    let not_midi = dir.join("notes.txt.mid");
    std::fs::write(&not_midi, "not a midi file").unwrap();
    let empty = root().join("engine/tests/data/tokenizer/midi/empty.mid");
    let example = example();
    let example = example.as_str();

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "continue",
                not_midi.to_str().unwrap(),
                "-o",
                out,
                "--model",
                &model,
            ],
            "notes.txt.mid",
        ),
        (
            vec![
                "continue",
                empty.to_str().unwrap(),
                "-o",
                out,
                "--model",
                &model,
            ],
            "no notes",
        ),
        (
            vec![
                "continue",
                example,
                "-o",
                out,
                "--model",
                &model,
                "--temperature",
                "-1",
            ],
            "temperature",
        ),
        (
            vec![
                "continue", example, "-o", out, "--model", &model, "--top-p", "0",
            ],
            "top-p",
        ),
        (
            vec![
                "continue", example, "-o", out, "--model", &model, "--top-p", "1.01",
            ],
            "top-p",
        ),
        (
            vec![
                "continue", example, "-o", out, "--model", &model, "--bars", "0",
            ],
            "bars",
        ),
        (
            vec![
                "continue",
                example,
                "-o",
                out,
                "--model",
                dir.to_str().unwrap(),
            ],
            "no model",
        ),
        (
            vec![
                "continue", example, "-o", out, "--model", &model, "--key", "C", "--range", "61-61",
            ],
            "--key/--range: key C major has no pitch in range C#4-C#4",
        ),
        (
            vec![
                "continue", example, "-o", out, "--model", &model, "--range", "C6-C3",
            ],
            "--range: the range C6-C3 (84-48) is empty",
        ),
        (
            vec![
                "continue", example, "-o", out, "--model", &model, "--key", "H",
            ],
            "--key: `H` is not a key",
        ),
        (
            vec![
                "continue",
                example,
                "-o",
                out,
                "--model",
                &model,
                "--density",
                "0",
            ],
            "density must be within 1..=48",
        ),
        (
            vec![
                "continue",
                example,
                "-o",
                out,
                "--model",
                &model,
                "--faithfulness",
                "1.5",
            ],
            "faithfulness must be within 0..=1",
        ),
    ];
    for (args, needle) in cases {
        assert_clean_failure(&xtask(&args), needle);
    }

    // A model whose tokenizer does not match its config.
    let broken = dir.join("mismatch");
    std::fs::create_dir_all(&broken).unwrap();
    let tiny = Path::new(&model);
    for f in ["decoder.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny.join(f), broken.join(f)).unwrap();
    }
    let config = std::fs::read_to_string(tiny.join("config.json"))
        .unwrap()
        .replace("373", "400");
    std::fs::write(broken.join("config.json"), config).unwrap();
    assert_clean_failure(
        &xtask(&[
            "continue",
            example,
            "-o",
            out,
            "--model",
            broken.to_str().unwrap(),
        ]),
        "tokenizer",
    );
    assert!(!Path::new(out).exists(), "a failed run left an output file");
}
