//! The tokenizer against MidiTok 3.1.0's own output: exact ids for every golden file, and
//! MidiTok's decoding of those ids.

use std::path::{Path, PathBuf};

use engine::midi::Score;
use engine::tokenizer::Tokenizer;
use serde_json::Value;

/// Checks one golden case; `midi_root` is where its `source` path resolves.
fn check_case(tok: &Tokenizer, golden: &Path, midi_for: impl Fn(&str) -> PathBuf) {
    let record: Value = serde_json::from_str(&std::fs::read_to_string(golden).unwrap()).unwrap();
    let source = record["source"].as_str().unwrap();
    let score = Score::read_file(midi_for(source)).unwrap_or_else(|e| panic!("{e}"));
    let ids = tok.encode(&score);
    let want: Vec<u32> = serde_json::from_value(record["ids"].clone()).unwrap();
    if ids != want {
        let strings = tok.token_strings(&ids);
        let want_strings: Vec<String> = serde_json::from_value(record["tokens"].clone()).unwrap();
        let first = ids
            .iter()
            .zip(&want)
            .position(|(a, b)| a != b)
            .unwrap_or(ids.len().min(want.len()));
        let lo = first.saturating_sub(8);
        panic!(
            "{source}: ids differ at {first} (got {} ids, want {})\n got: {:?}\nwant: {:?}",
            ids.len(),
            want.len(),
            &strings[lo..(first + 8).min(strings.len())],
            &want_strings[lo..(first + 8).min(want_strings.len())]
        );
    }
    assert_eq!(
        tok.token_strings(&ids),
        serde_json::from_value::<Vec<String>>(record["tokens"].clone()).unwrap(),
        "{source}: token strings"
    );

    let decoded = tok.decode(&want).unwrap();
    assert_eq!(
        u64::from(decoded.ticks_per_quarter),
        record["decoded_ticks_per_quarter"].as_u64().unwrap(),
        "{source}: decoded resolution"
    );
    let notes: Vec<[u64; 4]> = decoded
        .notes
        .iter()
        .map(|n| {
            [
                n.start.0,
                n.duration.0,
                u64::from(n.pitch),
                u64::from(n.velocity),
            ]
        })
        .collect();
    let want_notes: Vec<[u64; 4]> =
        serde_json::from_value(record["decoded_notes"].clone()).unwrap();
    assert_eq!(notes, want_notes, "{source}: decoded notes");
    let sigs: Vec<[u64; 3]> = decoded
        .time_signatures
        .iter()
        .map(|t| {
            [
                t.time.0,
                u64::from(t.signature.numerator()),
                u64::from(t.signature.denominator()),
            ]
        })
        .collect();
    let want_sigs: Vec<[u64; 3]> =
        serde_json::from_value(record["decoded_time_signatures"].clone()).unwrap();
    assert_eq!(sigs, want_sigs, "{source}: decoded time signatures");
}

fn golden_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn project_goldens_match_miditok() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer");
    let tok = Tokenizer::reference();
    let files = golden_files(&data.join("golden"));
    assert!(files.len() >= 10, "the project's golden copies are missing");
    for golden in files {
        check_case(&tok, &golden, |source| {
            data.join("midi")
                .join(Path::new(source).file_name().unwrap())
        });
    }
}

#[test]
fn shared_goldens_match_miditok() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tokenizer");
    if !shared.join("golden").is_dir() {
        eprintln!("skipped: {} is absent", shared.display());
        return;
    }
    let tok = Tokenizer::from_file(shared.join("tokenizer.json")).unwrap();
    let files = golden_files(&shared.join("golden"));
    assert!(!files.is_empty());
    for golden in &files {
        // Fixtures live beside the goldens, corpus files one level up.
        check_case(&tok, golden, |source| {
            let beside = shared.join(source);
            if beside.exists() {
                beside
            } else {
                shared.join("..").join(source)
            }
        });
    }
    eprintln!("{} shared golden files match", files.len());
}
