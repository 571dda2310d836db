//! Saving a take as a standard MIDI file, to drag into the arrangement or keep.
//!
//! The file is written on the take's own grid ([`GridTicks::PER_QUARTER`] ticks to a quarter
//! note) with its meter; the phrase and the continuation go on two tracks so a DAW imports them
//! as two clips, or the continuation alone starts on the file's first bar line. Files are never
//! overwritten: a name already taken gets a number.

use std::path::{Path, PathBuf};

use engine::midi::{Note, NoteTrack, Score, TimeSignatureChange};
use engine::time::{GridTicks, Ticks};

use crate::params::SavedNote;
use crate::takes::{Take, TakeNumber};
use crate::view::ExportPart;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no folder chosen for exports")]
    NoFolder,
    #[error("{}: not a folder (create it first, or choose another)", .0.display())]
    NotAFolder(PathBuf),
    #[error("take {0} has no notes to export")]
    Empty(TakeNumber),
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Midi(#[from] engine::midi::MidiErrorKind),
}

/// Notes from `shift` ticks on, moved to start there; notes before it are left out.
fn notes(saved: &[SavedNote], shift: i64) -> Vec<Note> {
    let mut notes: Vec<Note> = saved
        .iter()
        .filter(|n| n.onset >= shift)
        .map(|n| Note {
            start: Ticks((n.onset - shift) as u64),
            duration: Ticks(n.duration.max(1) as u64),
            pitch: n.key.min(127),
            velocity: n.velocity.clamp(1, 127),
        })
        .collect();
    notes.sort_by_key(|n| (n.start, n.duration, n.pitch, n.velocity));
    notes
}

/// The first name in `folder` not yet taken: `stem.mid`, then `stem-2.mid`, …
fn free_name(folder: &Path, stem: &str) -> PathBuf {
    let mut path = folder.join(format!("{stem}.mid"));
    let mut n = 2;
    while path.exists() {
        path = folder.join(format!("{stem}-{n}.mid"));
        n += 1;
    }
    path
}

/// The file's bytes: the take's meter, and the chosen part of it from the file's start.
pub fn take_bytes(take: &Take, part: ExportPart) -> Result<Vec<u8>, ExportError> {
    let sig = take.time_signature();
    let bar = sig.grid_ticks_per_bar().0.max(1);
    let mut score = Score::new(GridTicks::PER_QUARTER);
    score.time_signatures = vec![TimeSignatureChange {
        time: Ticks::ZERO,
        signature: sig,
    }];
    let end_ticks = |shift: i64| Ticks(((take.start + take.length - shift).max(0)) as u64);
    let bytes = match part {
        ExportPart::Whole => {
            let phrase = notes(&take.prime, 0);
            let continuation = notes(take.continuation(), 0);
            score.end = end_ticks(0);
            score.to_bytes_with_tracks(&[
                NoteTrack {
                    name: "phrase",
                    notes: &phrase,
                },
                NoteTrack {
                    name: "continuation",
                    notes: &continuation,
                },
            ])?
        }
        ExportPart::ContinuationOnly => {
            // From the bar line the continuation starts in, so it keeps its place in the bar.
            let shift = take.start.div_euclid(bar) * bar;
            score.notes = notes(take.continuation(), shift);
            score.end = end_ticks(shift);
            score.to_bytes()?
        }
    };
    Ok(bytes)
}

/// Writes take `number` into `folder`; the file's path.
pub fn write_take(
    take: &Take,
    number: TakeNumber,
    folder: &Path,
    part: ExportPart,
) -> Result<PathBuf, ExportError> {
    if folder.as_os_str().is_empty() {
        return Err(ExportError::NoFolder);
    }
    if !folder.is_dir() {
        return Err(ExportError::NotAFolder(folder.to_path_buf()));
    }
    let empty = match part {
        ExportPart::Whole => take.prime.is_empty() && take.continuation().is_empty(),
        ExportPart::ContinuationOnly => take.continuation().is_empty(),
    };
    if empty {
        return Err(ExportError::Empty(number));
    }
    let stem = match part {
        ExportPart::Whole => format!("continuator-take-{number}"),
        ExportPart::ContinuationOnly => format!("continuator-take-{number}-continuation"),
    };
    let bytes = take_bytes(take, part)?;
    let path = free_name(folder, &stem);
    engine::fs::write_atomically(&path, &bytes).map_err(|source| ExportError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::time::TimeSignature;

    pub(crate) fn take() -> Take {
        let sig = TimeSignature::new(3, 4).unwrap();
        let note = |onset, key| SavedNote {
            onset,
            duration: 6,
            key,
            velocity: 100,
        };
        let mut take = Take::new(sig, 72, 36, vec![note(0, 60), note(12, 62)]);
        take.variations = vec![vec![note(72, 70)], vec![note(84, 71), note(96, 72)]];
        take.picked = 1;
        take
    }

    #[test]
    fn writes_the_phrase_and_the_picked_continuation_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let take = take();
        let first = write_take(&take, 7, dir.path(), ExportPart::Whole).unwrap();
        assert_eq!(first, dir.path().join("continuator-take-7.mid"));
        let second = write_take(&take, 7, dir.path(), ExportPart::Whole).unwrap();
        assert_eq!(second, dir.path().join("continuator-take-7-2.mid"));
        let score = Score::read_file(&first).unwrap();
        let tpq = u64::from(score.ticks_per_quarter);
        let got: Vec<(u64, u8)> = score
            .notes
            .iter()
            .map(|n| (n.start.0 * 12 / tpq, n.pitch))
            .collect();
        assert_eq!(got, vec![(0, 60), (12, 62), (84, 71), (96, 72)]);
        assert_eq!(score.initial_time_signature(), take.time_signature());

        let only = write_take(&take, 7, dir.path(), ExportPart::ContinuationOnly).unwrap();
        let score = Score::read_file(&only).unwrap();
        let tpq = u64::from(score.ticks_per_quarter);
        let got: Vec<(u64, u8)> = score
            .notes
            .iter()
            .map(|n| (n.start.0 * 12 / tpq, n.pitch))
            .collect();
        // The continuation starts on the third bar (72 ticks in 3/4): that bar line is 0 now.
        assert_eq!(got, vec![(12, 71), (24, 72)]);
    }

    #[test]
    fn a_missing_folder_or_an_empty_take_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-folder");
        let err = write_take(&take(), 1, &missing, ExportPart::Whole).unwrap_err();
        assert!(err.to_string().contains("no-such-folder"), "{err}");
        let err = write_take(&take(), 1, Path::new(""), ExportPart::Whole).unwrap_err();
        assert!(matches!(err, ExportError::NoFolder));
        let empty = Take::new(TimeSignature::default(), 0, 48, Vec::new());
        let err = write_take(&empty, 3, dir.path(), ExportPart::ContinuationOnly).unwrap_err();
        assert_eq!(err.to_string(), "take 3 has no notes to export");
    }
}
