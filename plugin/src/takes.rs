//! Takes: what was played (the prime) and what Continuator answered (its variations), kept so the
//! musician can audition an earlier one, pick it, and undo or redo that choice.
//!
//! Everything is on the grid ([`GridTicks`]) from the take's first bar line, so a take means the
//! same thing at any tempo and anywhere on the timeline. The current take is saved with the
//! project (see [`SavedTake`]) and comes back when it is reopened.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use engine::time::TimeSignature;

use crate::params::SavedNote;

/// How many takes the history keeps; the oldest go first.
pub const MAX_TAKES: usize = 32;

/// One continuation and the phrase it answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Take {
    /// The meter, as numerator and denominator (a [`TimeSignature`] checked on load).
    pub meter: (u8, u8),
    /// Where the continuation starts, in grid ticks from the first bar line.
    pub start: i64,
    /// How long the continuation lasts from `start`.
    pub length: i64,
    /// What the musician played: the listening window the continuation answered.
    pub prime: Vec<SavedNote>,
    /// The candidate continuations (one per variation); `picked` is the one that plays.
    pub variations: Vec<Vec<SavedNote>>,
    pub picked: usize,
}

impl Take {
    pub fn new(meter: TimeSignature, start: i64, length: i64, prime: Vec<SavedNote>) -> Self {
        Take {
            meter: (meter.numerator(), meter.denominator()),
            start,
            length,
            prime,
            variations: vec![Vec::new()],
            picked: 0,
        }
    }

    /// The meter; a corrupt saved meter reads as 4/4 rather than failing the whole project.
    pub fn time_signature(&self) -> TimeSignature {
        TimeSignature::new(self.meter.0, self.meter.1).unwrap_or_default()
    }

    /// The continuation that plays: the picked variation.
    pub fn continuation(&self) -> &[SavedNote] {
        self.variations
            .get(self.picked)
            .or(self.variations.first())
            .map_or(&[], Vec::as_slice)
    }

    /// Bars from the first bar line to the end of the continuation.
    pub fn bars(&self) -> u32 {
        let bar = self.time_signature().grid_ticks_per_bar().0.max(1);
        ((self.start + self.length + bar - 1) / bar).max(1) as u32
    }
}

/// A take in the history, by the number it got when made (numbers never repeat, so an undo entry
/// for a take that has since dropped out of the history cannot point at another one).
pub type TakeNumber = u64;

/// Which take, and which of its variations, plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection {
    pub take: TakeNumber,
    pub variation: usize,
}

/// The last [`MAX_TAKES`] takes and the musician's choices among them.
#[derive(Debug, Default)]
pub struct TakeHistory {
    takes: VecDeque<(TakeNumber, Take)>,
    next: TakeNumber,
    current: Option<Selection>,
    undo: Vec<Selection>,
    redo: Vec<Selection>,
}

impl TakeHistory {
    /// Adds a new take, which becomes the current one (the previous choice can be undone).
    pub fn push(&mut self, take: Take) -> TakeNumber {
        let number = self.next;
        self.next += 1;
        let variation = take.picked;
        self.takes.push_back((number, take));
        while self.takes.len() > MAX_TAKES {
            self.takes.pop_front();
        }
        self.choose(Selection {
            take: number,
            variation,
        });
        number
    }

    pub fn get(&self, number: TakeNumber) -> Option<&Take> {
        self.takes
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, take)| take)
    }

    pub fn get_mut(&mut self, number: TakeNumber) -> Option<&mut Take> {
        self.takes
            .iter_mut()
            .find(|(n, _)| *n == number)
            .map(|(_, take)| take)
    }

    /// Every kept take, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (TakeNumber, &Take)> {
        self.takes.iter().map(|(n, take)| (*n, take))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.takes.len()
    }

    pub fn current(&self) -> Option<(TakeNumber, &Take)> {
        let selection = self.current?;
        self.get(selection.take).map(|take| (selection.take, take))
    }

    /// Picks a take and variation (undoable). Whether the choice changed: false if it was
    /// already the current one, or there is no such take or variation.
    pub fn select(&mut self, selection: Selection) -> bool {
        let valid = self
            .get(selection.take)
            .is_some_and(|take| selection.variation < take.variations.len());
        let changed = valid && self.current != Some(selection);
        if changed {
            self.choose(selection);
        }
        changed
    }

    fn choose(&mut self, selection: Selection) {
        if let Some(previous) = self.current.replace(selection) {
            self.undo.push(previous);
            // Bounded like the takes: entries beyond them could only be skipped.
            if self.undo.len() > 4 * MAX_TAKES {
                self.undo.remove(0);
            }
        }
        self.redo.clear();
        self.apply(selection);
    }

    fn apply(&mut self, selection: Selection) {
        if let Some(take) = self.get_mut(selection.take) {
            take.picked = selection.variation;
        }
    }

    /// Goes back to the previous choice still in the history; its selection, if any.
    pub fn undo(&mut self) -> Option<Selection> {
        self.step(true)
    }

    pub fn redo(&mut self) -> Option<Selection> {
        self.step(false)
    }

    fn step(&mut self, back: bool) -> Option<Selection> {
        loop {
            let (from, to) = if back {
                (&mut self.undo, &mut self.redo)
            } else {
                (&mut self.redo, &mut self.undo)
            };
            let selection = from.pop()?;
            if self.takes.iter().any(|(n, _)| *n == selection.take) {
                if let Some(current) = self.current.replace(selection) {
                    to.push(current);
                }
                self.apply(selection);
                return Some(selection);
            }
        }
    }

    pub fn can_undo(&self) -> bool {
        self.undo
            .iter()
            .any(|s| self.takes.iter().any(|(n, _)| *n == s.take))
    }

    pub fn can_redo(&self) -> bool {
        self.redo
            .iter()
            .any(|s| self.takes.iter().any(|(n, _)| *n == s.take))
    }
}

/// The current take as saved with the project (the `last-take` field). Projects saved before
/// takes had a meter and a prime stored the continuation's notes alone; those still load, as a
/// 4/4 take whose continuation starts at its first note's bar line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "SavedTakeFormat")]
pub struct SavedTake(pub Option<Take>);

#[derive(Deserialize)]
#[serde(untagged)]
enum SavedTakeFormat {
    Take(Option<Take>),
    ContinuationOnly(Vec<SavedNote>),
}

impl From<SavedTakeFormat> for SavedTake {
    fn from(format: SavedTakeFormat) -> Self {
        match format {
            SavedTakeFormat::Take(take) => SavedTake(take),
            SavedTakeFormat::ContinuationOnly(notes) if notes.is_empty() => SavedTake(None),
            SavedTakeFormat::ContinuationOnly(notes) => {
                let meter = TimeSignature::default();
                let bar = meter.grid_ticks_per_bar().0;
                let first = notes.iter().map(|n| n.onset).min().unwrap_or(0);
                let last = notes
                    .iter()
                    .map(|n| n.onset + n.duration)
                    .max()
                    .unwrap_or(0);
                let start = first.div_euclid(bar) * bar;
                let length = ((last - start + bar - 1) / bar).max(1) * bar;
                let mut take = Take::new(meter, start, length, Vec::new());
                take.variations = vec![notes];
                SavedTake(Some(take))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(onset: i64, key: u8) -> SavedNote {
        SavedNote {
            onset,
            duration: 6,
            key,
            velocity: 90,
        }
    }

    fn take(key: u8, variations: usize) -> Take {
        let mut take = Take::new(TimeSignature::default(), 192, 192, vec![note(0, 60)]);
        take.variations = (0..variations)
            .map(|v| vec![note(192, key + v as u8)])
            .collect();
        take
    }

    #[test]
    fn keeps_the_last_takes_and_numbers_never_repeat() {
        let mut history = TakeHistory::default();
        for i in 0..(MAX_TAKES + 5) {
            history.push(take(i as u8, 1));
        }
        assert_eq!(history.len(), MAX_TAKES);
        let numbers: Vec<_> = history.iter().map(|(n, _)| n).collect();
        assert_eq!(numbers.first(), Some(&5));
        assert_eq!(
            history.current().map(|(n, _)| n),
            Some((MAX_TAKES + 4) as u64)
        );
        assert!(history.get(0).is_none());
    }

    #[test]
    fn pick_undo_redo() {
        let mut history = TakeHistory::default();
        let a = history.push(take(60, 3));
        let b = history.push(take(70, 1));
        assert_eq!(history.current().unwrap().0, b);
        // Audition the first take's third variation and keep it.
        assert!(history.select(Selection {
            take: a,
            variation: 2
        }));
        assert_eq!(
            history.current().unwrap().1.continuation(),
            &[note(192, 62)]
        );
        assert!(!history.select(Selection {
            take: a,
            variation: 3
        }));
        assert!(!history.select(Selection {
            take: 99,
            variation: 0
        }));
        assert_eq!(history.undo().map(|s| s.take), Some(b));
        assert_eq!(
            history.current().unwrap().1.continuation(),
            &[note(192, 70)]
        );
        assert_eq!(history.undo().map(|s| s.take), Some(a));
        assert_eq!(history.current().unwrap().1.picked, 0);
        assert_eq!(history.undo(), None);
        assert!(!history.can_undo() && history.can_redo());
        assert_eq!(
            history.redo(),
            Some(Selection {
                take: b,
                variation: 0
            })
        );
        assert_eq!(
            history.redo(),
            Some(Selection {
                take: a,
                variation: 2
            })
        );
        assert_eq!(
            history.current().unwrap().1.continuation(),
            &[note(192, 62)]
        );
        assert_eq!(history.redo(), None);
        // A new choice forgets what could be redone.
        history.undo();
        history.push(take(80, 1));
        assert!(!history.can_redo());
    }

    #[test]
    fn undo_skips_takes_that_left_the_history() {
        let mut history = TakeHistory::default();
        history.push(take(1, 1));
        for i in 0..MAX_TAKES {
            history.push(take(i as u8, 1));
        }
        // Every undo entry but the first-take one is still there.
        let mut steps = 0;
        while history.undo().is_some() {
            steps += 1;
        }
        assert_eq!(steps, MAX_TAKES - 1);
    }

    #[test]
    fn a_saved_take_reads_back_and_old_projects_still_load() {
        let saved = SavedTake(Some(take(60, 2)));
        let json = serde_json::to_string(&saved).unwrap();
        assert_eq!(serde_json::from_str::<SavedTake>(&json).unwrap(), saved);
        assert_eq!(
            serde_json::from_str::<SavedTake>("null").unwrap(),
            SavedTake(None)
        );
        // The format before takes: the continuation's notes alone.
        let old = r#"[{"onset":200,"duration":5,"key":72,"velocity":80}]"#;
        let take = serde_json::from_str::<SavedTake>(old).unwrap().0.unwrap();
        assert_eq!(take.continuation().len(), 1);
        // The note's bar (the fifth in 4/4) is the continuation, one bar long.
        assert_eq!((take.start, take.length), (192, 48));
        assert_eq!(take.bars(), 5);
        assert!(serde_json::from_str::<SavedTake>(r#"{"bad":1}"#).is_err());
    }
}
