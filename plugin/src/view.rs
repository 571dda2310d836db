//! What the editor shows and what it asks for: the inference thread publishes an [`EditorView`]
//! through a triple buffer (it never waits for the GUI, the GUI always reads the newest whole
//! view), and the editor sends [`Command`]s back through a channel. The audio thread takes part
//! in neither.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use engine::time::{Beats, TimeSignature};

use crate::params::SavedNote;
use crate::takes::{Selection, TakeNumber};

/// The piano roll: the bars the musician played and, after the transition, the continuation's
/// candidates, on one grid from the roll's first bar line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Roll {
    pub meter: TimeSignature,
    pub bars: u32,
    /// Where the roll's first bar line is on the host's timeline, when it is there (a take
    /// restored with the project has no place until it is replayed): the playhead needs it.
    pub origin: Option<Beats>,
    /// The musician's notes.
    pub heard: Vec<SavedNote>,
    /// Where the continuation starts (grid ticks from the first bar line), once there is one.
    pub transition: Option<i64>,
    /// The continuation's candidates, as far as they have streamed in; `picked` plays.
    pub variations: Vec<Vec<SavedNote>>,
    pub picked: usize,
}

impl Roll {
    /// The same roll from the bar the continuation starts in: what a small candidate roll
    /// shows, so the candidates' notes are not squeezed by the bars before them.
    pub fn continuation_bars(&self) -> Roll {
        let bar = self.meter.grid_ticks_per_bar().0.max(1);
        let first_bar = self.transition.map_or(0, |t| t.div_euclid(bar)).max(0);
        let shift = first_bar * bar;
        let moved = |notes: &Vec<SavedNote>| {
            notes
                .iter()
                .map(|n| SavedNote {
                    onset: n.onset - shift,
                    ..*n
                })
                .collect()
        };
        Roll {
            meter: self.meter,
            bars: self.bars.saturating_sub(first_bar as u32).max(1),
            origin: self
                .origin
                .map(|o| o + engine::time::GridTicks(shift).to_quarters()),
            heard: Vec::new(),
            transition: self.transition.map(|t| t - shift),
            variations: self.variations.iter().map(moved).collect(),
            picked: self.picked,
        }
    }
}

/// One line of the take list.
#[derive(Debug, Clone, PartialEq)]
pub struct TakeLine {
    pub number: TakeNumber,
    pub bars: u32,
    pub notes: usize,
    pub variations: usize,
    pub picked: usize,
}

/// Everything the editor shows besides parameters and the audio thread's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EditorView {
    pub roll: Roll,
    /// The roll shows a take (and not the listening window); which one.
    pub shown_take: Option<TakeNumber>,
    pub takes: Vec<TakeLine>,
    pub current: Option<TakeNumber>,
    pub can_undo: bool,
    pub can_redo: bool,
    /// The model's speed on the last take.
    pub tokens_per_second: Option<f32>,
    /// The last export's file, or why it failed.
    pub export: Option<Result<PathBuf, String>>,
    /// The style adapter in use, by file name; `None` for the model alone.
    pub style: Option<String>,
    /// Why the last style file was refused (the previous model stays).
    pub style_error: Option<String>,
}

/// What a take export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportPart {
    /// The phrase and the continuation after it, on two tracks.
    Whole,
    ContinuationOnly,
}

/// What the editor asks the inference thread to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Continue now (the `Continue` button): like the trigger, at the transport's position.
    Continue,
    /// Plays a take again from the next bar line.
    Audition(TakeNumber),
    /// Makes a take (and variation) the current one.
    Pick(Selection),
    Undo,
    Redo,
    /// New candidates for the current take's phrase (other seeds), from the next bar line.
    Regenerate,
    /// Writes the current take to a `.mid` file in `folder`.
    Export {
        folder: PathBuf,
        part: ExportPart,
    },
    /// Loads a style adapter file for the model (`None`: the model alone).
    Style(Option<PathBuf>),
}

pub type CommandSender = crossbeam_channel::Sender<Command>;
pub type CommandReceiver = crossbeam_channel::Receiver<Command>;

/// The inference thread's end.
pub type ViewInput = triple_buffer::Input<EditorView>;

/// The editor's end, shared by every editor window the host opens (one at a time): only the GUI
/// thread locks it.
pub type ViewOutput = Arc<Mutex<triple_buffer::Output<EditorView>>>;

/// A connected pair of view ends.
pub fn view_channel() -> (ViewInput, ViewOutput) {
    let (input, output) = triple_buffer::triple_buffer(&EditorView::default());
    (input, Arc::new(Mutex::new(output)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candidate_roll_starts_at_the_continuations_bar() {
        let note = |onset| SavedNote {
            onset,
            duration: 6,
            key: 60,
            velocity: 90,
        };
        let roll = Roll {
            meter: TimeSignature::new(3, 4).unwrap(),
            bars: 6,
            origin: Some(Beats(30.0)),
            heard: vec![note(0)],
            transition: Some(4 * 36 + 12),
            variations: vec![vec![note(4 * 36 + 12), note(5 * 36)]],
            picked: 0,
        };
        let small = roll.continuation_bars();
        assert_eq!(small.bars, 2);
        assert_eq!(small.transition, Some(12));
        assert_eq!(small.origin, Some(Beats(42.0)));
        assert!(small.heard.is_empty());
        assert_eq!(small.variations[0][0].onset, 12);
        assert_eq!(small.variations[0][1].onset, 36);
    }
}
