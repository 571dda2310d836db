//! The grammar against real sequences and random walks.

use std::path::Path;

use engine::grammar::{Grammar, Phase};
use engine::midi::Score;
use engine::tokenizer::{TokenId, Tokenizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn every_golden_sequence_is_accepted_token_by_token() {
    let tok = Tokenizer::reference();
    let grammar = Grammar::new(&tok).unwrap();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer/golden")];
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tokenizer/golden");
    if shared.is_dir() {
        dirs.push(shared);
    }
    let mut checked = 0;
    for dir in dirs {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let record: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let mut ids: Vec<TokenId> = vec![tok.bos_id()];
            ids.extend(serde_json::from_value::<Vec<TokenId>>(record["ids"].clone()).unwrap());
            ids.push(tok.eos_id());
            let mut state = grammar.start();
            for (i, &id) in ids.iter().enumerate() {
                grammar
                    .advance(&mut state, id)
                    .unwrap_or_else(|e| panic!("{}: token {i}: {e}", path.display()));
            }
            assert_eq!(state.phase(), Phase::Ended);
            checked += 1;
        }
    }
    assert!(checked >= 10);
}

/// The position a MidiTok encoding can repeat (found by the fuzzer): a 6/8 that moves to the
/// next bar line and disappears still doubles the resolution, so 4/4 onsets one tick apart share
/// `Position_0`. MidiTok 3.1.0 gives the same tokens; the grammar must accept them.
#[test]
fn a_repeated_position_from_miditok_is_accepted() {
    let bytes = [
        0x4d, 0x54, 0x68, 0x64, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x01, 0x00, 0x30, 0x4d,
        0x54, 0x72, 0x6b, 0x00, 0x00, 0x00, 0x2c, 0x00, 0xff, 0x58, 0x04, 0x04, 0x02, 0x18, 0x08,
        0x00, 0x90, 0x3c, 0x40, 0x01, 0x90, 0x3e, 0x40, 0x01, 0xff, 0x58, 0x04, 0x06, 0x03, 0x18,
        0x08, 0x02, 0xff, 0x58, 0x04, 0x04, 0x02, 0x18, 0x08, 0x30, 0x80, 0x3c, 0x00, 0x00, 0x80,
        0x3e, 0x00, 0x00, 0xff, 0x2f, 0x00,
    ];
    let tok = Tokenizer::reference();
    let grammar = Grammar::new(&tok).unwrap();
    let ids = tok.encode(&Score::from_bytes(&bytes).unwrap());
    let strings = tok.token_strings(&ids);
    assert_eq!(strings[2], "Position_0");
    assert_eq!(strings[6], "Position_0", "{strings:?}");
    grammar.state_after(&ids).unwrap();
    // Generation is still strict: after a note, its own position is not proposed again.
    let state = grammar.state_after(&ids[..6]).unwrap();
    assert!(!grammar.allowed(&state).contains(ids[6]));
}

#[test]
fn every_corpus_file_is_accepted() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus");
    if !corpus.is_dir() {
        eprintln!("skipped: {} is absent", corpus.display());
        return;
    }
    let tok = Tokenizer::reference();
    let grammar = Grammar::new(&tok).unwrap();
    let mut stack = vec![corpus];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "mid") {
                let ids = tok.encode(&Score::read_file(&path).unwrap());
                grammar
                    .state_after(&ids)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                files += 1;
            }
        }
    }
    assert!(files > 1000, "{files} files");
}

#[test]
fn random_walks_always_decode_to_valid_midi() {
    let tok = Tokenizer::reference();
    let grammar = Grammar::new(&tok).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut ids = Vec::with_capacity(512);
    let mut total_notes = 0usize;
    for walk in 0..3000 {
        ids.clear();
        let mut state = grammar.start();
        let max_len = rng.random_range(1..400);
        while ids.len() < max_len && state.phase() != Phase::Ended {
            let allowed = grammar.allowed(&state);
            assert!(!allowed.is_empty(), "walk {walk}: dead end {state:?}");
            let pick = rng.random_range(0..allowed.count());
            let id = allowed.ids().nth(pick).unwrap();
            grammar.advance(&mut state, id).unwrap();
            ids.push(id);
        }
        let score = tok.decode(&ids).unwrap();
        for note in &score.notes {
            assert!((21..=108).contains(&note.pitch), "walk {walk}: {note}");
            assert!(
                note.duration.0 > 0 && note.velocity > 0,
                "walk {walk}: {note}"
            );
        }
        // Notes come out in time order: positions only increase within a bar.
        assert!(
            score.notes.windows(2).all(|w| w[0].start <= w[1].start),
            "walk {walk}"
        );
        let bytes = score.to_bytes().unwrap();
        let back = Score::from_bytes(&bytes).unwrap_or_else(|e| panic!("walk {walk}: {e}"));
        assert_eq!(back.notes.len(), score.notes.len(), "walk {walk}");
        total_notes += score.notes.len();
    }
    assert!(
        total_notes > 10_000,
        "walks produced too few notes ({total_notes}) to mean much"
    );
}
