//! Reading and writing standard MIDI files: the merge rules, round trips, and bad input.

use std::path::{Path, PathBuf};

use engine::midi::{MidiErrorKind, Note, Score, MAX_FILE_BYTES};
use engine::time::{Ticks, TimeSignature};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tokenizer/midi")
        .join(name)
}

/// A fresh, empty temporary folder for one test, removed when dropped (also on panic).
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("continuator-midi-{tag}-"))
        .tempdir()
        .unwrap()
}

/// A minimal SMF with the given header timing word and one track's raw event bytes.
fn smf(format: u16, division: [u8; 2], tracks: &[&[u8]]) -> Vec<u8> {
    let mut out = b"MThd".to_vec();
    out.extend(6u32.to_be_bytes());
    out.extend(format.to_be_bytes());
    out.extend((tracks.len() as u16).to_be_bytes());
    out.extend(division);
    for t in tracks {
        out.extend(b"MTrk");
        out.extend((t.len() as u32).to_be_bytes());
        out.extend(*t);
    }
    out
}

#[test]
fn format_0_with_running_status_and_velocity_zero_offs() {
    // 96 tpq; note on C4, running status note on E4, then offs as velocity-0 note-ons.
    let track: &[u8] = &[
        0x00, 0x90, 60, 100, // on C4
        0x00, 64, 90, // running status: on E4
        0x60, 60, 0, // off C4 after 96 ticks
        0x30, 64, 0, // off E4 after 48 more
        0x00, 0xFF, 0x2F, 0x00,
    ];
    let score = Score::from_bytes(&smf(0, [0, 96], &[track])).unwrap();
    assert_eq!(score.ticks_per_quarter, 96);
    assert_eq!(
        score.notes,
        vec![
            Note {
                start: Ticks(0),
                duration: Ticks(96),
                pitch: 60,
                velocity: 100
            },
            Note {
                start: Ticks(0),
                duration: Ticks(144),
                pitch: 64,
                velocity: 90
            },
        ]
    );
}

#[test]
fn overlapping_same_key_notes_close_first_in_first_out_and_unclosed_notes_drop() {
    let track: &[u8] = &[
        0x00, 0x90, 60, 100, // on (a)
        0x10, 0x90, 60, 50, // on (b) while (a) sounds
        0x10, 0x80, 60, 0, // off closes (a)
        0x10, 0x80, 60, 0, // off closes (b)
        0x00, 0x90, 72, 80, // never closed: dropped
        0x00, 0xFF, 0x2F, 0x00,
    ];
    let score = Score::from_bytes(&smf(0, [0, 96], &[track])).unwrap();
    assert_eq!(
        score.notes,
        vec![
            Note {
                start: Ticks(0),
                duration: Ticks(32),
                pitch: 60,
                velocity: 100
            },
            Note {
                start: Ticks(16),
                duration: Ticks(32),
                pitch: 60,
                velocity: 50
            },
        ]
    );
}

#[test]
fn tracks_merge_and_drums_drop() {
    let score = Score::read_file(fixture("multitrack.mid")).unwrap();
    // 16 melody notes + 4 bass notes; the 8 drum notes on channel 10 are gone.
    assert_eq!(score.notes.len(), 20);
    assert!(score.notes.iter().all(|n| n.pitch != 36));
    assert!(score.notes.windows(2).all(
        |w| (w[0].start, w[0].duration, w[0].pitch) <= (w[1].start, w[1].duration, w[1].pitch)
    ));
}

#[test]
fn meter_and_tempo_maps_are_read() {
    let score = Score::read_file(fixture("waltz_then_6_8.mid")).unwrap();
    assert_eq!(score.ticks_per_quarter, 96);
    let sigs: Vec<(u64, String)> = score
        .time_signatures
        .iter()
        .map(|t| (t.time.0, t.signature.to_string()))
        .collect();
    assert_eq!(
        sigs,
        vec![(0, "3/4".to_string()), (1152, "6/8".to_string())]
    );
    let tempo = Score::read_file(fixture("tempo_changes.mid")).unwrap();
    let bpms: Vec<u64> = tempo
        .tempos
        .iter()
        .map(|t| t.bpm().round() as u64)
        .collect();
    assert_eq!(bpms, vec![90, 140]);
}

#[test]
fn write_then_read_gives_the_same_score() {
    let tmp = temp_dir("roundtrip");
    let dir = tmp.path();
    for name in [
        "waltz_then_6_8.mid",
        "edges.mid",
        "chords_triplets.mid",
        "tempo_changes.mid",
    ] {
        let score = Score::read_file(fixture(name)).unwrap();
        let out = dir.join(name);
        score.write_file(&out).unwrap();
        let back = Score::read_file(&out).unwrap();
        assert_eq!(back, score, "{name}");
    }
}

#[test]
fn bad_files_get_typed_errors_naming_the_file() {
    let tmp = temp_dir("bad");
    let dir = tmp.path();
    let good = std::fs::read(fixture("scale_4_4.mid")).unwrap();
    type Expect = fn(&MidiErrorKind) -> bool;
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("empty.mid", vec![], |k| matches!(k, MidiErrorKind::Empty)),
        ("text.mid", b"hello, this is not music".to_vec(), |k| {
            matches!(k, MidiErrorKind::NotMidi)
        }),
        ("cut.mid", good[..good.len() / 2].to_vec(), |k| {
            matches!(k, MidiErrorKind::Truncated(_))
        }),
        ("header-only.mid", good[..10].to_vec(), |k| {
            matches!(k, MidiErrorKind::Truncated(_))
        }),
        (
            "smpte.mid",
            smf(1, [0xE7, 40], &[&[0x00, 0xFF, 0x2F, 0x00]]),
            |k| matches!(k, MidiErrorKind::SmpteTiming),
        ),
        (
            "zero-tpq.mid",
            smf(1, [0, 0], &[&[0x00, 0xFF, 0x2F, 0x00]]),
            |k| matches!(k, MidiErrorKind::ZeroTicksPerQuarter),
        ),
        (
            "garbage-events.mid",
            smf(0, [0, 96], &[&[0x00, 0xF4, 0x99, 0x99]]),
            |k| matches!(k, MidiErrorKind::Malformed(_) | MidiErrorKind::Truncated(_)),
        ),
    ];
    for (name, bytes, expected) in cases {
        let path = dir.join(name);
        std::fs::write(&path, &bytes).unwrap();
        let err = Score::read_file(&path).expect_err(name);
        assert!(expected(&err.kind), "{name}: {err}");
        assert!(
            err.to_string().contains(name),
            "error does not name the file: {err}"
        );
    }
    let missing = Score::read_file(dir.join("missing.mid")).unwrap_err();
    assert!(matches!(missing.kind, MidiErrorKind::Io(_)), "{missing}");

    // Absurd sizes are refused before reading (a sparse file costs no disk).
    let huge = dir.join("huge.mid");
    let f = std::fs::File::create(&huge).unwrap();
    f.set_len(MAX_FILE_BYTES as u64 + 1).unwrap();
    let err = Score::read_file(&huge).unwrap_err();
    assert!(matches!(err.kind, MidiErrorKind::TooLarge { .. }), "{err}");
}

#[test]
fn score_helpers() {
    let mut score = Score::new(480);
    assert_eq!(score.initial_time_signature(), TimeSignature::COMMON);
    assert_eq!(score.initial_bpm(), 120.0);
    score.notes.push(Note {
        start: Ticks(480),
        duration: Ticks(240),
        pitch: 60,
        velocity: 64,
    });
    assert_eq!(score.notes[0].end(), Ticks(720));
    let back = Score::from_bytes(&score.to_bytes().unwrap()).unwrap();
    // Written with its End of Track at the last note-off, which reading gives back as the end.
    assert_eq!(
        back,
        Score {
            end: Ticks(720),
            ..score.clone()
        }
    );
    // An end after the last note (a clip's closing rest) survives the round trip.
    let clip = Score {
        end: Ticks(4 * 480),
        ..score
    };
    let back = Score::from_bytes(&clip.to_bytes().unwrap()).unwrap();
    assert_eq!(back, clip);
}

/// Found by `cargo fuzz` (fuzz/fuzz_targets/read_tokenize.rs): a division word of 0x80xx made
/// midly negate the frame-rate byte -128 as an `i8`, a panic with overflow checks on. Any
/// division with the top bit set is SMPTE timing, refused with a typed error before midly runs.
#[test]
fn fuzz_smpte_division_0x80_is_refused_without_panic() {
    let err = Score::from_bytes(&[
        0x4D, 0x54, 0x68, 0x64, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x80, 0x00,
    ])
    .unwrap_err();
    assert!(matches!(err, MidiErrorKind::SmpteTiming), "{err}");
}

/// An 81-byte file whose notes sit 2^28 - 1 ticks apart at 1 tick per quarter: the tokenizer
/// emits a `Bar` (and `TimeSig`) for every bar up to the last note, over 2 GB of ids, so files
/// running past `MAX_QUARTERS` are refused when read.
#[test]
fn fuzz_far_apart_notes_are_refused_before_tokenizing() {
    // `MThd`, format 0, one track, 1 tick per quarter; `MTrk` of 59 bytes.
    let mut bytes = b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x00\x01".to_vec();
    bytes.extend(b"MTrk\x00\x00\x00\x3B");
    for _ in 0..5 {
        // Note on at once, note off 2^28 - 1 ticks later.
        bytes.extend([
            0x00, 0x90, 0x3C, 0x40, 0xFF, 0xFF, 0xFF, 0x7F, 0x80, 0x3C, 0x00,
        ]);
    }
    bytes.extend([0x00, 0xFF, 0x2F, 0x00]);
    let err = Score::from_bytes(&bytes).unwrap_err();
    assert!(matches!(err, MidiErrorKind::TooLong { .. }), "{err}");

    // The same spacing within the limit still reads.
    let mut near = Score::new(1);
    near.notes.push(Note {
        start: Ticks(engine::midi::MAX_QUARTERS - 1),
        duration: Ticks(1),
        pitch: 60,
        velocity: 64,
    });
    let back = Score::from_bytes(&near.to_bytes().unwrap()).unwrap();
    assert_eq!(back.notes, near.notes);
}
