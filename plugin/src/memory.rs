//! The playing memory: everything the musician played since the project opened, bounded, saved
//! with the project, and what the faithfulness control follows (Pachet's Continuator learned a
//! player's style as they played, not only from the last phrase).
//!
//! Notes are kept on one forward-running timeline of grid ticks: the host's position, plus
//! whole bars added whenever the transport went back (a loop, a restart, a reopened project), so
//! that material played twice over the same bars follows itself instead of piling up on top of
//! it. Only the inference thread and the host's state saving touch it, never the audio thread.

use std::sync::{Arc, RwLock};

use engine::time::GridTicks;

use crate::continuer::GridNote;
use crate::params::SavedNote;
use crate::phrase::PlayedNote;

/// Notes kept before the oldest are forgotten: a few hundred bars of dense playing, and about
/// as many tokens as the engine's phrase memory holds.
pub const MAX_NOTES: usize = 4096;

pub struct PlayingMemory {
    /// Shared with the parameters' persisted field.
    notes: Arc<RwLock<Vec<SavedNote>>>,
    /// Grid ticks added to the host's position (whole bars) since the transport last went back.
    offset: i64,
}

impl PlayingMemory {
    pub fn new(notes: Arc<RwLock<Vec<SavedNote>>>) -> Self {
        PlayingMemory { notes, offset: 0 }
    }

    /// Remembers a finished note played at the host position it carries, in bars of `bar`.
    pub fn add(&mut self, note: &PlayedNote, bar: GridTicks) {
        let bar = bar.0.max(1);
        let Ok(mut notes) = self.notes.write() else {
            return;
        };
        let mut onset = GridTicks::from_quarters(note.onset).0 + self.offset;
        let latest = notes.iter().map(|n| n.onset).max();
        if let Some(latest) = latest {
            // Earlier than a bar before the latest note: the transport went back. Move on by
            // whole bars, to the bar after the latest note's, keeping the place in the bar.
            if onset < latest - bar {
                let bars = (latest - onset).div_euclid(bar) + 1;
                self.offset += bars * bar;
                onset += bars * bar;
            }
        }
        notes.push(SavedNote {
            onset,
            duration: GridTicks::from_quarters(note.end - note.onset).0.max(1),
            key: note.key,
            velocity: note.velocity.max(1),
        });
        if notes.len() > MAX_NOTES {
            let extra = notes.len() - MAX_NOTES;
            notes.drain(..extra);
        }
    }

    pub fn clear(&mut self) {
        if let Ok(mut notes) = self.notes.write() {
            notes.clear();
        }
        self.offset = 0;
    }

    /// The remembered notes on the grid, earliest first, moved so that the first one's bar
    /// starts at tick 0.
    pub fn snapshot(&self, bar: GridTicks) -> Vec<GridNote> {
        let Ok(notes) = self.notes.read() else {
            return Vec::new();
        };
        let bar = bar.0.max(1);
        let first = notes.iter().map(|n| n.onset).min().unwrap_or(0);
        let origin = first.div_euclid(bar) * bar;
        let mut out: Vec<GridNote> = notes
            .iter()
            .map(|n| GridNote {
                onset: GridTicks(n.onset - origin),
                duration: GridTicks(n.duration.max(1)),
                key: n.key.min(127),
                velocity: n.velocity.clamp(1, 127),
            })
            .collect();
        out.sort_by_key(|n| (n.onset, n.key));
        out
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.notes.read().map_or(0, |n| n.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::time::Beats;

    fn played(onset: f64, key: u8) -> PlayedNote {
        PlayedNote {
            onset: Beats(onset),
            end: Beats(onset + 0.5),
            key,
            velocity: 90,
        }
    }

    #[test]
    fn a_loop_played_twice_follows_itself_and_the_memory_is_bounded() {
        let notes = Arc::new(RwLock::new(Vec::new()));
        let mut memory = PlayingMemory::new(notes.clone());
        let bar = GridTicks(48); // 4/4 on the 12-per-beat grid
        for pass in 0..2 {
            for beat in 0..8 {
                memory.add(&played(f64::from(beat), 60 + pass), bar);
            }
        }
        let snapshot = memory.snapshot(bar);
        assert_eq!(snapshot.len(), 16);
        // The second pass lands after the first, on the same places in the bar.
        let second: Vec<i64> = snapshot[8..].iter().map(|n| n.onset.0).collect();
        assert_eq!(second, (0..8).map(|b| 96 + 12 * b).collect::<Vec<_>>());
        assert!(snapshot[8..].iter().all(|n| n.key == 61));
        // The same vector is the persisted one.
        assert_eq!(notes.read().unwrap().len(), 16);
        for i in 0..MAX_NOTES + 10 {
            memory.add(&played(16.0 + i as f64, 70), bar);
        }
        assert_eq!(memory.len(), MAX_NOTES);
        memory.clear();
        assert_eq!(memory.len(), 0);
        assert!(notes.read().unwrap().is_empty());
    }
}
