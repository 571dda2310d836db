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
