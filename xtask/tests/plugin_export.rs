//! A take the plugin exports is a MIDI file the rest of the toolchain reads: `cargo xtask
//! tokenize` turns it back into the take's notes (pitch and velocity tokens, in order).

mod common;

use common::{text, xtask};
use continuator::export_check::{write_take, ExportPart, SavedNote, Take};
use engine::time::TimeSignature;

fn note(onset: i64, key: u8, velocity: u8) -> SavedNote {
    SavedNote {
        onset,
        duration: 6,
        key,
        velocity,
    }
}

/// The `Pitch_*` tokens `cargo xtask tokenize` prints for `file`.
fn pitches(file: &std::path::Path) -> Vec<u8> {
    let out = xtask(&["tokenize", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|t| t.strip_prefix("Pitch_"))
        .map(|p| p.parse().unwrap())
        .collect()
}

#[test]
fn an_exported_take_tokenizes_back_to_its_notes() {
    let dir = tempfile::tempdir().unwrap();
    let sig = TimeSignature::new(3, 4).unwrap();
    // A bar of phrase, then two bars of continuation (two candidates; the second plays).
    let mut take = Take::new(sig, 36, 72, vec![note(0, 60, 90), note(12, 64, 90)]);
    take.variations = vec![
        vec![note(36, 40, 70)],
        vec![note(36, 67, 100), note(48, 71, 100), note(84, 72, 100)],
    ];
    take.picked = 1;
    let whole = write_take(&take, 3, dir.path(), ExportPart::Whole).unwrap();
    assert_eq!(pitches(&whole), vec![60, 64, 67, 71, 72]);
    let only = write_take(&take, 3, dir.path(), ExportPart::ContinuationOnly).unwrap();
    assert_eq!(pitches(&only), vec![67, 71, 72]);
    // The meter came along.
    let out = xtask(&["tokenize", only.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("TimeSig_3/4"));
}
