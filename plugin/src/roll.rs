//! The piano roll's geometry and painting: notes to rectangles, bar and beat lines from the
//! meter, the transition and the playhead. The geometry is plain arithmetic on a rectangle, so it
//! is tested without a window; [`paint`] only hands its shapes to egui.

use egui::{Color32, Pos2, Rect, Stroke};

use engine::time::{Beats, GridTicks};

use crate::params::SavedNote;
use crate::view::Roll;

/// Colours a screenshot check can count: the musician's notes, the playing continuation's, and
/// a candidate that is not playing.
pub const HEARD: Color32 = Color32::from_rgb(80, 200, 160);
pub const CONTINUATION: Color32 = Color32::from_rgb(255, 150, 40);
pub const CANDIDATE: Color32 = Color32::from_rgb(150, 110, 70);
pub const BACKGROUND: Color32 = Color32::from_rgb(24, 26, 30);
const BAR_LINE: Color32 = Color32::from_rgb(110, 115, 125);
const BEAT_LINE: Color32 = Color32::from_rgb(48, 51, 58);
const TRANSITION: Color32 = Color32::from_rgb(255, 220, 120);
const PLAYHEAD: Color32 = Color32::from_rgb(240, 240, 240);

/// The fewest pitches a roll shows: an octave and a half, so a few notes do not fill it.
const MIN_PITCHES: u8 = 18;

/// Where things go in one roll's rectangle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RollLayout {
    rect: Rect,
    /// Grid ticks across the rectangle.
    span: i64,
    bar: i64,
    beat: i64,
    low: u8,
    high: u8,
}

impl RollLayout {
    /// The layout of `roll` in `rect`: its bars across, its notes' pitches (with a margin, at
    /// least [`MIN_PITCHES`]) from bottom to top.
    pub fn new(rect: Rect, roll: &Roll) -> Self {
        let bar = roll.meter.grid_ticks_per_bar().0.max(1);
        let beat = (bar / i64::from(roll.meter.numerator().max(1))).max(1);
        let notes = roll.heard.iter().chain(roll.variations.iter().flatten());
        let (mut low, mut high) =
            notes.fold((u8::MAX, 0u8), |(lo, hi), n| (lo.min(n.key), hi.max(n.key)));
        if low > high {
            (low, high) = (60, 72);
        }
        let (mut low, mut high) = (low.saturating_sub(2), high.saturating_add(2).min(127));
        while high - low + 1 < MIN_PITCHES {
            low = low.saturating_sub(1);
            high = (high + 1).min(127);
        }
        RollLayout {
            rect,
            span: i64::from(roll.bars.max(1)) * bar,
            bar,
            beat,
            low,
            high,
        }
    }

    pub fn x(&self, ticks: f64) -> f32 {
        self.rect.left() + (ticks / self.span as f64) as f32 * self.rect.width()
    }

    fn row_height(&self) -> f32 {
        self.rect.height() / f32::from(self.high - self.low + 1)
    }

    /// A note's rectangle, clipped to the roll; `None` when it lies outside.
    pub fn note(&self, note: &SavedNote) -> Option<Rect> {
        let end = note.onset + note.duration.max(1);
        if end <= 0 || note.onset >= self.span || note.key < self.low || note.key > self.high {
            return None;
        }
        let row = f32::from(self.high - note.key);
        let top = self.rect.top() + row * self.row_height();
        let left = self.x(note.onset.max(0) as f64);
        // At least a pixel wide and a few tall, however small the roll.
        let right = self.x(end.min(self.span) as f64).max(left + 1.0);
        let bottom = top + (self.row_height() - 1.0).max(2.0);
        Some(Rect::from_min_max(
            Pos2::new(left, top),
            Pos2::new(right, bottom),
        ))
    }

    /// Vertical lines: (x, is a bar line) for every beat, bar lines included.
    pub fn grid_lines(&self) -> impl Iterator<Item = (f32, bool)> + '_ {
        (0..=self.span / self.beat).map(move |i| {
            let ticks = i * self.beat;
            (self.x(ticks as f64), ticks % self.bar == 0)
        })
    }

    /// The playhead at host position `position`, for a roll whose first bar line is at `origin`;
    /// `None` outside the roll.
    pub fn playhead(&self, origin: Beats, position: Beats) -> Option<f32> {
        let ticks = (position.0 - origin.0) * f64::from(GridTicks::PER_QUARTER);
        (0.0..=self.span as f64)
            .contains(&ticks)
            .then(|| self.x(ticks))
    }

    /// The pitch under a point, for a tooltip.
    pub fn key_at(&self, y: f32) -> Option<u8> {
        if !(self.rect.top()..self.rect.bottom()).contains(&y) {
            return None;
        }
        let row = ((y - self.rect.top()) / self.row_height()) as u8;
        Some(self.high.saturating_sub(row))
    }
}

/// A key's name and octave (middle C is C4), as the roll's tooltip shows it.
pub fn key_name(key: u8) -> String {
    const NAMES: [&str; 12] = [
        "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B",
    ];
    format!(
        "{}{}",
        NAMES[usize::from(key % 12)],
        i32::from(key / 12) - 1
    )
}

/// Which continuation a painted roll shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// The picked candidate, with the musician's bars before it.
    Main,
    /// Candidate `n` alone (a small roll in the variations row).
    Candidate(usize),
}

/// Paints `roll` into `rect`: background, beat and bar lines, the musician's notes, the
/// continuation, the transition, and the playhead when `position` falls inside.
pub fn paint(painter: &egui::Painter, rect: Rect, roll: &Roll, shown: Shown, position: Beats) {
    let layout = RollLayout::new(rect, roll);
    painter.rect_filled(rect, 2.0, BACKGROUND);
    for (x, bar) in layout.grid_lines() {
        let colour = if bar { BAR_LINE } else { BEAT_LINE };
        painter.line_segment(
            [Pos2::new(x, rect.top()), Pos2::new(x, rect.bottom())],
            Stroke::new(1.0, colour),
        );
    }
    let (notes, colour) = match shown {
        Shown::Main => {
            for r in roll.heard.iter().filter_map(|n| layout.note(n)) {
                painter.rect_filled(r, 1.0, HEARD);
            }
            (roll.variations.get(roll.picked), CONTINUATION)
        }
        Shown::Candidate(n) => {
            let colour = if n == roll.picked {
                CONTINUATION
            } else {
                CANDIDATE
            };
            (roll.variations.get(n), colour)
        }
    };
    for r in notes.into_iter().flatten().filter_map(|n| layout.note(n)) {
        painter.rect_filled(r, 1.0, colour);
    }
    if let Some(transition) = roll.transition {
        let x = layout.x(transition as f64);
        painter.line_segment(
            [Pos2::new(x, rect.top()), Pos2::new(x, rect.bottom())],
            Stroke::new(2.0, TRANSITION),
        );
    }
    if let Some(x) = roll.origin.and_then(|o| layout.playhead(o, position)) {
        painter.line_segment(
            [Pos2::new(x, rect.top()), Pos2::new(x, rect.bottom())],
            Stroke::new(1.5, PLAYHEAD),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::time::TimeSignature;

    fn note(onset: i64, duration: i64, key: u8) -> SavedNote {
        SavedNote {
            onset,
            duration,
            key,
            velocity: 100,
        }
    }

    fn roll(sig: TimeSignature, bars: u32, heard: Vec<SavedNote>) -> Roll {
        Roll {
            meter: sig,
            bars,
            heard,
            ..Roll::default()
        }
    }

    fn rect() -> Rect {
        Rect::from_min_max(Pos2::new(10.0, 20.0), Pos2::new(410.0, 200.0))
    }

    #[test]
    fn notes_map_to_their_time_and_pitch() {
        // Two bars of 4/4 (96 ticks) over 400 pixels: a tick is 400/96 px.
        let r = roll(
            TimeSignature::default(),
            2,
            vec![note(0, 12, 60), note(48, 24, 72)],
        );
        let layout = RollLayout::new(rect(), &r);
        let first = layout.note(&r.heard[0]).unwrap();
        let second = layout.note(&r.heard[1]).unwrap();
        assert_eq!(first.left(), 10.0);
        assert!((first.right() - (10.0 + 12.0 * 400.0 / 96.0)).abs() < 1e-3);
        assert!(
            (second.left() - 210.0).abs() < 1e-3,
            "bar 2 starts mid-roll"
        );
        assert!(
            (second.width() - 100.0).abs() < 1e-3,
            "a half-note is a quarter of two bars"
        );
        assert!(second.top() < first.top(), "higher notes are higher up");
        assert!(first.bottom() <= 200.0 && second.top() >= 20.0);
        // The pitch under each note's row reads back.
        assert_eq!(layout.key_at(first.center().y), Some(60));
        assert_eq!(layout.key_at(second.center().y), Some(72));
    }

    #[test]
    fn notes_outside_the_roll_are_left_out_or_clipped() {
        let r = roll(TimeSignature::default(), 1, vec![note(40, 20, 64)]);
        let layout = RollLayout::new(rect(), &r);
        assert!(
            layout.note(&note(48, 6, 64)).is_none(),
            "after the last bar"
        );
        assert!(layout.note(&note(-10, 5, 64)).is_none(), "before the first");
        let clipped = layout.note(&r.heard[0]).unwrap();
        assert_eq!(clipped.right(), 410.0);
        assert!(
            layout.note(&note(0, 6, 10)).is_none(),
            "far below the range"
        );
    }

    #[test]
    fn bar_lines_follow_the_meter() {
        // 6/8: a bar is 36 ticks, six eighth-note beats of 6 ticks; two bars.
        let r = roll(TimeSignature::new(6, 8).unwrap(), 2, Vec::new());
        let layout = RollLayout::new(rect(), &r);
        let lines: Vec<_> = layout.grid_lines().collect();
        assert_eq!(lines.len(), 13);
        let bars: Vec<f32> = lines.iter().filter(|l| l.1).map(|l| l.0).collect();
        assert_eq!(bars, vec![10.0, 210.0, 410.0]);
        // 3/4: three beats a bar.
        let r = roll(TimeSignature::new(3, 4).unwrap(), 1, Vec::new());
        assert_eq!(RollLayout::new(rect(), &r).grid_lines().count(), 4);
    }

    #[test]
    fn the_playhead_follows_the_transport_inside_the_roll() {
        let r = roll(TimeSignature::default(), 2, Vec::new());
        let layout = RollLayout::new(rect(), &r);
        let origin = Beats(16.0);
        assert_eq!(layout.playhead(origin, Beats(16.0)), Some(10.0));
        assert_eq!(layout.playhead(origin, Beats(20.0)), Some(210.0));
        assert_eq!(layout.playhead(origin, Beats(15.0)), None);
        assert_eq!(layout.playhead(origin, Beats(24.5)), None);
    }

    #[test]
    fn keys_are_named_with_middle_c_as_c4() {
        assert_eq!(key_name(60), "C4");
        assert_eq!(key_name(61), "C#4");
        assert_eq!(key_name(21), "A0");
        assert_eq!(key_name(127), "G9");
    }

    #[test]
    fn a_few_notes_still_get_a_readable_range() {
        let r = roll(TimeSignature::default(), 1, vec![note(0, 6, 127)]);
        let layout = RollLayout::new(rect(), &r);
        assert!(layout.high - layout.low + 1 >= MIN_PITCHES);
        assert_eq!(layout.high, 127);
        assert!(layout.note(&r.heard[0]).is_some());
    }
}
