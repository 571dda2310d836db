//! MIDI bytes → `Score` → REMI ids → grammar walk and decode, plus writing and re-reading.
//!
//! Any input may be refused with an error; nothing may panic (debug assertions are on in
//! `cargo fuzz` builds, so the engine's `debug_assert!`s are checked too).

#![no_main]

use std::sync::OnceLock;

use engine::grammar::Grammar;
use engine::midi::Score;
use engine::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fn tools() -> &'static (Tokenizer, Grammar) {
    static TOOLS: OnceLock<(Tokenizer, Grammar)> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let tok = Tokenizer::reference();
        let grammar = Grammar::new(&tok).expect("the reference vocabulary has a grammar");
        (tok, grammar)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(score) = Score::from_bytes(data) else {
        return;
    };
    let (tok, grammar) = tools();

    let ids = tok.encode(&score);
    let mut state = grammar.start();
    for (i, &id) in ids.iter().enumerate() {
        if let Err(e) = grammar.advance(&mut state, id) {
            let context = tok.token_strings(&ids[i.saturating_sub(8)..=i]);
            panic!(
                "encoded id {i} of {} breaks the grammar: {e}; tokens up to it: {context:?}",
                ids.len()
            );
        }
    }
    let decoded = match tok.decode(&ids) {
        Ok(decoded) => decoded,
        Err(e) => panic!("encoded ids do not decode: {e}"),
    };

    for (what, s) in [("read", &score), ("decoded", &decoded)] {
        if let Ok(bytes) = s.to_bytes() {
            if let Err(e) = Score::from_bytes(&bytes) {
                panic!("the {what} score written by to_bytes does not read back: {e}");
            }
        }
    }
});
