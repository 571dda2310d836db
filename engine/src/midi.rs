//! Standard MIDI files in and out, as one piano note stream.
//!
//! Reading follows the rules MidiTok's loader (symusic) applies, because the tokenizer must give
//! MidiTok's exact ids: note-offs close the oldest open note of the same channel and key within a
//! track (first in, first out), a note-on with velocity 0 is a note-off, notes never closed are
//! dropped, and channel 10 (drums) is dropped. All remaining tracks merge into one stream sorted
//! by (onset, duration, pitch, velocity).

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};

use midly::num::{u15, u24, u28, u4, u7};
use midly::{Format, Header, MetaMessage, MidiMessage, Smf, Timing, TrackEvent, TrackEventKind};

use crate::time::{Ticks, TimeSignature};

/// Files above this size are refused before parsing: no piano phrase needs 64 MiB, and parsing
/// a hostile file of gigabytes would exhaust memory.
pub const MAX_FILE_BYTES: usize = 64 * 1024 * 1024;
/// Refused above this many notes, for the same reason.
pub const MAX_NOTES: usize = 2_000_000;
/// Refused when a note, meter or tempo event lies beyond this many quarter notes (about 145 hours
/// at 120 BPM). Delta times are cheap to write and the tokenizer emits a `Bar` for every bar up
/// to the last note, so without a limit an 81-byte file asks for gigabytes of tokens.
pub const MAX_QUARTERS: u64 = 1 << 20;

/// MIDI channel 10, reserved for drums by General MIDI.
const DRUM_CHANNEL: u8 = 9;

/// One note of the piano stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Note {
    pub start: Ticks,
    pub duration: Ticks,
    /// MIDI key number, 0..=127.
    pub pitch: u8,
    /// 1..=127 (a velocity of 0 is a note-off in MIDI).
    pub velocity: u8,
}

impl Note {
    pub fn end(&self) -> Ticks {
        self.start + self.duration
    }

    /// The order MidiTok's loader sorts notes in; the tokenizer emits chords in this order.
    fn sort_key(&self) -> (Ticks, Ticks, u8, u8) {
        (self.start, self.duration, self.pitch, self.velocity)
    }
}

/// A time signature change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeSignatureChange {
    pub time: Ticks,
    pub signature: TimeSignature,
}

/// A tempo change, in microseconds per quarter note as MIDI stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TempoChange {
    pub time: Ticks,
    pub micros_per_quarter: u32,
}

impl TempoChange {
    pub fn bpm(&self) -> f64 {
        60_000_000.0 / f64::from(self.micros_per_quarter.max(1))
    }
}

/// A piece as the engine sees it: one merged note stream with the meter and tempo maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Score {
    pub ticks_per_quarter: u16,
    /// Sorted by (onset, duration, pitch, velocity).
    pub notes: Vec<Note>,
    /// Sorted by time (stable: equal times keep file order).
    pub time_signatures: Vec<TimeSignatureChange>,
    /// Sorted by time (stable).
    pub tempos: Vec<TempoChange>,
    /// Where the file says the music ends: its latest End of Track. A clip exported from a DAW
    /// ends on its last bar line even when its last note stops earlier, and that rest belongs to
    /// the phrase, so a continuation starts after it. Zero when unknown (a score built in code).
    pub end: Ticks,
}

/// Why a MIDI file could not be read or written, with the file it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct MidiError {
    pub path: PathBuf,
    pub kind: MidiErrorKind,
}

/// What is wrong with a MIDI file.
#[derive(Debug, thiserror::Error)]
pub enum MidiErrorKind {
    #[error("cannot access the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("the file is empty")]
    Empty,
    #[error("not a standard MIDI file (it does not start with an `MThd` header)")]
    NotMidi,
    #[error("the file is truncated: {0}")]
    Truncated(String),
    #[error("the file is {size} bytes, above the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("SMPTE (frames per second) timing is not supported; only ticks per quarter note")]
    SmpteTiming,
    #[error("the header gives zero ticks per quarter note")]
    ZeroTicksPerQuarter,
    #[error("more than {limit} notes")]
    TooManyNotes { limit: usize },
    #[error("an event lies beyond {limit} quarter notes")]
    TooLong { limit: u64 },
    #[error("malformed MIDI data: {0}")]
    Malformed(String),
    #[error("cannot write: a gap of {0} is longer than a MIDI delta time can hold")]
    GapTooLong(Ticks),
    #[error("cannot write: ticks per quarter {0} is outside 1..=32767")]
    BadResolution(u16),
}

impl MidiErrorKind {
    fn at(self, path: &Path) -> MidiError {
        MidiError {
            path: path.to_path_buf(),
            kind: self,
        }
    }
}

impl Score {
    /// An empty score at the given resolution, in 4/4 at 120 BPM.
    pub fn new(ticks_per_quarter: u16) -> Self {
        Score {
            ticks_per_quarter,
            notes: Vec::new(),
            time_signatures: vec![TimeSignatureChange {
                time: Ticks::ZERO,
                signature: TimeSignature::COMMON,
            }],
            tempos: vec![TempoChange {
                time: Ticks::ZERO,
                micros_per_quarter: 500_000,
            }],
            end: Ticks::ZERO,
        }
    }

    /// Reads a standard MIDI file.
    pub fn read_file(path: impl AsRef<Path>) -> Result<Score, MidiError> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| MidiErrorKind::Io(e).at(path))?;
        if meta.len() > MAX_FILE_BYTES as u64 {
            return Err(MidiErrorKind::TooLarge {
                size: meta.len() as usize,
                limit: MAX_FILE_BYTES,
            }
            .at(path));
        }
        let bytes = std::fs::read(path).map_err(|e| MidiErrorKind::Io(e).at(path))?;
        Score::from_bytes(&bytes).map_err(|k| k.at(path))
    }

    /// Parses a standard MIDI file held in memory.
    pub fn from_bytes(bytes: &[u8]) -> Result<Score, MidiErrorKind> {
        check_container(bytes)?;
        let smf = Smf::parse(bytes).map_err(classify_midly_error)?;
        let ticks_per_quarter = match smf.header.timing {
            Timing::Metrical(t) if t.as_int() == 0 => {
                return Err(MidiErrorKind::ZeroTicksPerQuarter)
            }
            Timing::Metrical(t) => t.as_int(),
            Timing::Timecode(..) => return Err(MidiErrorKind::SmpteTiming),
        };
        let mut reader = NoteReader::default();
        let max_time = Ticks(MAX_QUARTERS * u64::from(ticks_per_quarter));
        let mut score = Score {
            ticks_per_quarter,
            notes: Vec::new(),
            time_signatures: Vec::new(),
            tempos: Vec::new(),
            end: Ticks::ZERO,
        };
        for track in &smf.tracks {
            reader.read_track(track, max_time, &mut score)?;
        }
        score.notes.sort_by_key(Note::sort_key);
        score.time_signatures.sort_by_key(|t| t.time);
        score.tempos.sort_by_key(|t| t.time);
        Ok(score)
    }

    /// Writes the score as a format-1 file: a conductor track with the meter and tempo maps and
    /// one note track named `piano`.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<(), MidiError> {
        let path = path.as_ref();
        let bytes = self.to_bytes().map_err(|k| k.at(path))?;
        write_atomically(path, &bytes).map_err(|e| MidiErrorKind::Io(e).at(path))
    }

    /// The score as standard MIDI file bytes (see [`Score::write_file`]).
    pub fn to_bytes(&self) -> Result<Vec<u8>, MidiErrorKind> {
        self.to_bytes_with_tracks(&[NoteTrack {
            name: "piano",
            notes: &self.notes,
        }])
    }

    /// Standard MIDI file bytes with this score's resolution, meter and tempo maps, and the
    /// given note tracks on one timeline (e.g. a prime and its continuation).
    pub fn to_bytes_with_tracks(&self, tracks: &[NoteTrack<'_>]) -> Result<Vec<u8>, MidiErrorKind> {
        let tpq = u15::try_from(self.ticks_per_quarter)
            .filter(|t| t.as_int() > 0)
            .ok_or(MidiErrorKind::BadResolution(self.ticks_per_quarter))?;
        let mut conductor: Vec<(Ticks, TrackEventKind<'static>)> = Vec::new();
        for ts in &self.time_signatures {
            let pow = ts.signature.denominator().trailing_zeros() as u8;
            conductor.push((
                ts.time,
                TrackEventKind::Meta(MetaMessage::TimeSignature(
                    ts.signature.numerator(),
                    pow,
                    24,
                    8,
                )),
            ));
        }
        for tempo in &self.tempos {
            let mpq =
                u24::try_from(tempo.micros_per_quarter.min(0xFF_FFFF)).unwrap_or(u24::max_value());
            conductor.push((tempo.time, TrackEventKind::Meta(MetaMessage::Tempo(mpq))));
        }
        conductor.sort_by_key(|(t, _)| *t);
        let mut smf_tracks = vec![to_track(conductor, self.end)?];
        for track in tracks {
            let mut events: Vec<(Ticks, u8, TrackEventKind<'_>)> = vec![(
                Ticks::ZERO,
                0,
                TrackEventKind::Meta(MetaMessage::TrackName(track.name.as_bytes())),
            )];
            for note in track.notes {
                let key = u7::from(note.pitch.min(127));
                // Offs sort before ons at the same tick, so a repeated key is not cut short.
                events.push((
                    note.end(),
                    1,
                    TrackEventKind::Midi {
                        channel: u4::from(0),
                        message: MidiMessage::NoteOff {
                            key,
                            vel: u7::from(0),
                        },
                    },
                ));
                events.push((
                    note.start,
                    2,
                    TrackEventKind::Midi {
                        channel: u4::from(0),
                        message: MidiMessage::NoteOn {
                            key,
                            vel: u7::from(note.velocity.clamp(1, 127)),
                        },
                    },
                ));
            }
            events.sort_by_key(|(t, order, _)| (*t, *order));
            smf_tracks.push(to_track(
                events.into_iter().map(|(t, _, k)| (t, k)).collect(),
                self.end,
            )?);
        }
        let smf = Smf {
            header: Header::new(Format::Parallel, Timing::Metrical(tpq)),
            tracks: smf_tracks,
        };
        let mut out = Vec::new();
        smf.write(&mut out)
            .map_err(|e| MidiErrorKind::Malformed(e.to_string()))?;
        Ok(out)
    }

    /// The time signature in force at the start of the score (4/4 when the file has none).
    pub fn initial_time_signature(&self) -> TimeSignature {
        self.time_signatures
            .first()
            .filter(|t| t.time == Ticks::ZERO)
            .map_or(TimeSignature::COMMON, |t| t.signature)
    }

    /// The tempo in force at the start, in BPM (120 when the file has none).
    pub fn initial_bpm(&self) -> f64 {
        self.tempos
            .first()
            .filter(|t| t.time == Ticks::ZERO)
            .map_or(120.0, TempoChange::bpm)
    }
}

/// A named list of notes to write as one track.
#[derive(Clone, Copy, Debug)]
pub struct NoteTrack<'a> {
    pub name: &'a str,
    pub notes: &'a [Note],
}

/// Writes through a temporary file and a rename, so a crash never leaves half a file behind
/// (see [`crate::fs::write_atomically`], which this is).
pub use crate::fs::write_atomically;

/// A track from timed events, ended no earlier than `end` (the score's End of Track).
fn to_track(
    mut events: Vec<(Ticks, TrackEventKind<'_>)>,
    end: Ticks,
) -> Result<Vec<TrackEvent<'_>>, MidiErrorKind> {
    let end = events.last().map_or(Ticks::ZERO, |(t, _)| *t).max(end);
    events.push((end, TrackEventKind::Meta(MetaMessage::EndOfTrack)));
    let mut previous = Ticks::ZERO;
    events
        .into_iter()
        .map(|(time, kind)| {
            let gap = time - previous;
            previous = time;
            let delta = u32::try_from(gap.0)
                .ok()
                .and_then(u28::try_from)
                .ok_or(MidiErrorKind::GapTooLong(gap))?;
            Ok(TrackEvent { delta, kind })
        })
        .collect()
}

/// Checks the chunk structure before midly parses it: midly recovers silently from some
/// truncations, and a cut-off file must be reported, not half read.
fn check_container(bytes: &[u8]) -> Result<(), MidiErrorKind> {
    if bytes.is_empty() {
        return Err(MidiErrorKind::Empty);
    }
    if bytes.len() > MAX_FILE_BYTES {
        return Err(MidiErrorKind::TooLarge {
            size: bytes.len(),
            limit: MAX_FILE_BYTES,
        });
    }
    if !bytes.starts_with(b"MThd") {
        return Err(MidiErrorKind::NotMidi);
    }
    // SMPTE timing (top bit of the division word) is refused here, before midly reads it:
    // midly 0.5 negates the frame-rate byte as an `i8`, which overflows (a panic with overflow
    // checks on) for the byte 0x80.
    let header_len = bytes
        .get(4..8)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    if header_len.is_some_and(|len| len >= 6) && bytes.get(12).is_some_and(|&hi| hi & 0x80 != 0) {
        return Err(MidiErrorKind::SmpteTiming);
    }
    let mut offset = 0usize;
    let mut chunk_index = 0usize;
    while offset < bytes.len() {
        let header = bytes.get(offset..offset + 8).ok_or_else(|| {
            MidiErrorKind::Truncated(format!(
                "{} stray bytes after chunk {chunk_index}",
                bytes.len() - offset
            ))
        })?;
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let available = bytes.len() - offset - 8;
        if len > available {
            let name = String::from_utf8_lossy(&header[..4]).into_owned();
            return Err(MidiErrorKind::Truncated(format!(
                "chunk {chunk_index} (`{name}`) declares {len} bytes but only {available} remain"
            )));
        }
        offset += 8 + len;
        chunk_index += 1;
    }
    Ok(())
}

fn classify_midly_error(err: midly::Error) -> MidiErrorKind {
    let text = err.to_string();
    if text.contains("eof") || text.contains("end of file") || text.contains("truncated") {
        MidiErrorKind::Truncated(text)
    } else {
        MidiErrorKind::Malformed(text)
    }
}

/// Pairs note-ons with note-offs the way symusic does; reused across tracks so that reading a
/// file allocates its queues once.
struct NoteReader {
    /// Open notes per (channel, key): indices into the score's notes, oldest first.
    open: Vec<VecDeque<usize>>,
}

impl Default for NoteReader {
    fn default() -> Self {
        NoteReader {
            open: vec![VecDeque::new(); 16 * 128],
        }
    }
}

/// Marks a note whose note-off has not been seen yet.
const OPEN: Ticks = Ticks(u64::MAX);

impl NoteReader {
    fn read_track(
        &mut self,
        track: &[TrackEvent<'_>],
        max_time: Ticks,
        score: &mut Score,
    ) -> Result<(), MidiErrorKind> {
        let first_note = score.notes.len();
        let mut now = Ticks::ZERO;
        for event in track {
            now += Ticks(u64::from(event.delta.as_int()));
            let kept = matches!(
                event.kind,
                TrackEventKind::Midi {
                    message: MidiMessage::NoteOn { .. } | MidiMessage::NoteOff { .. },
                    ..
                } | TrackEventKind::Meta(MetaMessage::TimeSignature(..) | MetaMessage::Tempo(_))
            );
            if kept && now > max_time {
                return Err(MidiErrorKind::TooLong {
                    limit: MAX_QUARTERS,
                });
            }
            match event.kind {
                TrackEventKind::Midi { channel, message } => {
                    let channel = channel.as_int();
                    if channel == DRUM_CHANNEL {
                        continue;
                    }
                    match message {
                        MidiMessage::NoteOn { key, vel } if vel.as_int() > 0 => {
                            if score.notes.len() >= MAX_NOTES {
                                return Err(MidiErrorKind::TooManyNotes { limit: MAX_NOTES });
                            }
                            let slot = usize::from(channel) * 128 + usize::from(key.as_int());
                            self.open[slot].push_back(score.notes.len());
                            score.notes.push(Note {
                                start: now,
                                duration: OPEN,
                                pitch: key.as_int(),
                                velocity: vel.as_int(),
                            });
                        }
                        MidiMessage::NoteOn { key, .. } | MidiMessage::NoteOff { key, .. } => {
                            let slot = usize::from(channel) * 128 + usize::from(key.as_int());
                            if let Some(index) = self.open[slot].pop_front() {
                                let note = &mut score.notes[index];
                                note.duration = now - note.start;
                            }
                        }
                        _ => {}
                    }
                }
                TrackEventKind::Meta(MetaMessage::TimeSignature(numerator, pow, _, _)) => {
                    let signature = 1u8
                        .checked_shl(u32::from(pow))
                        .filter(|_| pow < 8)
                        .and_then(|denominator| TimeSignature::new(numerator, denominator));
                    if let Some(signature) = signature {
                        score.time_signatures.push(TimeSignatureChange {
                            time: now,
                            signature,
                        });
                    }
                }
                TrackEventKind::Meta(MetaMessage::Tempo(mpq)) => score.tempos.push(TempoChange {
                    time: now,
                    micros_per_quarter: mpq.as_int(),
                }),
                // Past `max_time` it says nothing the notes do not (and must not push a
                // continuation's start beyond what a score may hold).
                TrackEventKind::Meta(MetaMessage::EndOfTrack) if now <= max_time => {
                    score.end = score.end.max(now);
                }
                _ => {}
            }
        }
        // Notes never closed within their track are dropped, as symusic does.
        for queue in &mut self.open {
            queue.clear();
        }
        let mut index = 0;
        score.notes.retain(|note| {
            let keep = index < first_note || note.duration != OPEN;
            index += 1;
            keep
        });
        Ok(())
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pitch {} velocity {} at {} for {}",
            self.pitch, self.velocity, self.start.0, self.duration.0
        )
    }
}
