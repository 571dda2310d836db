//! Score → ids, rule for rule as MidiTok 3.1.0's REMI does it (with symusic 0.6 resampling).
//!
//! The steps, in MidiTok's order:
//! 1. keep the supported time signatures, and a 4/4 at tick 0 if none starts there;
//! 2. resample to `positions_per_beat × max_denominator / 4` ticks per quarter (round half away
//!    from zero for notes, truncation for time signatures, durations at least one tick);
//! 3. delay every time signature to the next bar line, dropping repeats;
//! 4. drop notes outside the pitch range, bin velocities to the nearest bin (ties upwards), snap
//!    onsets to each meter's grid when denominators differ (ties to even), bin durations to the
//!    nearest duration of the note's meter (ties upwards);
//! 5. walk the events in time order, time signatures before notes at the same tick, emitting
//!    `Bar`/`TimeSig` for every bar crossed and `Position` for every new onset.

use super::{TokenId, Tokenizer};
use crate::midi::Score;
use crate::time::TimeSignature;

/// A section of the piece with one value (ticks per beat, or grid step), ending before `end`.
#[derive(Clone, Copy, Debug)]
struct Section {
    end: i64,
    value: i64,
}

/// A preprocessed note: times in the tokenizer's resolution, values binned.
#[derive(Clone, Copy, Debug)]
struct PreNote {
    time: i64,
    pitch: u8,
    velocity_index: usize,
    duration_index: usize,
}

impl Tokenizer {
    /// Encodes a score into MidiTok's ids (no BOS/EOS, as MidiTok's `encode`).
    pub fn encode(&self, score: &Score) -> Vec<TokenId> {
        let mut ids = Vec::with_capacity(score.notes.len() * 4 + 16);
        self.encode_into(score, &mut ids);
        ids
    }

    /// Encodes a score, appending to `ids` (lets callers reuse one buffer across files).
    pub fn encode_into(&self, score: &Score, ids: &mut Vec<TokenId>) {
        let max_pos = i64::from(self.config.max_positions_per_beat());

        // 1. Supported time signatures, with 4/4 mocked at 0 when none starts there.
        let mut time_sigs: Vec<(i64, TimeSignature)> = score
            .time_signatures
            .iter()
            .filter(|t| self.supports(t.signature))
            .map(|t| (t.time.0.min(i64::MAX as u64) as i64, t.signature))
            .collect();
        if time_sigs.first().is_none_or(|t| t.0 != 0) {
            time_sigs.insert(0, (0, TimeSignature::COMMON));
        }
        let max_denominator = time_sigs
            .iter()
            .map(|t| t.1.denominator())
            .max()
            .unwrap_or(4);
        let tpq = (max_pos as f64 * f64::from(max_denominator) / 4.0) as i64;

        // 2. Resampling.
        let old_tpq = i64::from(score.ticks_per_quarter.max(1));
        let rate = tpq as f64 / old_tpq as f64;
        let resample = old_tpq != tpq;
        if resample {
            for t in &mut time_sigs {
                t.0 = (t.0 as f64 * rate) as i64;
            }
        }
        let convert = |t: u64| -> i64 {
            if resample {
                (rate * t as f64).round() as i64
            } else {
                t.min(i64::MAX as u64) as i64
            }
        };

        // 3. Time signatures on bar lines.
        delay_time_signatures(&mut time_sigs, tpq);

        let ticks_per_beat_sections =
            sections(&time_sigs, |ts| ticks_per_beat(ts.denominator(), tpq));
        let denominators_differ = time_sigs
            .iter()
            .any(|t| t.1.denominator() != time_sigs[0].1.denominator());
        let grid_sections = denominators_differ.then(|| {
            sections(&time_sigs, |ts| {
                (tpq as f64 / (max_pos as f64 * (f64::from(ts.denominator()) / 4.0))).floor() as i64
            })
        });

        // 4. Notes.
        let (low, high) = self.config.pitch_range;
        let mut notes: Vec<PreNote> = Vec::with_capacity(score.notes.len());
        for note in &score.notes {
            if note.pitch < low || note.pitch > high {
                continue;
            }
            let mut time = convert(note.start.0);
            let duration = if resample {
                convert(note.duration.0).max(1)
            } else {
                convert(note.duration.0)
            };
            if let Some(grid) = &grid_sections {
                let (index, start) = section_of(grid, time);
                let step = grid[index].value;
                if step != 1 && step > 0 {
                    time =
                        round_half_even((time - start) as f64 / step as f64) as i64 * step + start;
                }
            }
            let (section, _) = section_of(&ticks_per_beat_sections, time);
            let tpb = ticks_per_beat_sections[section].value;
            notes.push(PreNote {
                time,
                pitch: note.pitch,
                velocity_index: closest_u8(&self.velocities, note.velocity),
                duration_index: self.closest_duration(duration, tpb),
            });
        }

        // 5. Events to tokens.
        let mut remi = RemiWriter::new(self, tpq, time_sigs[0].1, ids);
        let mut next_ts = 0;
        for note in &notes {
            while next_ts < time_sigs.len() && time_sigs[next_ts].0 <= note.time {
                remi.time_signature(time_sigs[next_ts].0, time_sigs[next_ts].1);
                next_ts += 1;
            }
            remi.note(note);
        }
        for &(time, ts) in &time_sigs[next_ts..] {
            remi.time_signature(time, ts);
        }
    }

    /// Index of the duration nearest to `ticks` at `tpb` ticks per beat (ties to the longer).
    fn closest_duration(&self, ticks: i64, tpb: i64) -> usize {
        let tpb = tpb.max(1) as u64;
        let bins = &self.durations;
        let value = |i: usize| bins[i].ticks(tpb) as i64;
        // Durations are in ascending order: binary search for the first bin >= ticks.
        let idx = bins.partition_point(|d| (d.ticks(tpb) as i64) < ticks);
        if idx == bins.len() {
            return bins.len() - 1;
        }
        if idx > 0 && (ticks - value(idx - 1)).abs() < (ticks - value(idx)).abs() {
            idx - 1
        } else {
            idx
        }
    }
}

/// numpy's `round`: halves go to the even neighbour.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// Index of the nearest value in an ascending list, ties to the larger (numpy `searchsorted`
/// then a strict comparison, as MidiTok's `np_get_closest`).
fn closest_u8(values: &[u8], x: u8) -> usize {
    let idx = values.partition_point(|&v| v < x);
    if idx == values.len() {
        return values.len() - 1;
    }
    if idx > 0 && x.abs_diff(values[idx - 1]) < x.abs_diff(values[idx]) {
        idx - 1
    } else {
        idx
    }
}

/// MidiTok's `compute_ticks_per_beat`.
fn ticks_per_beat(denominator: u8, tpq: i64) -> i64 {
    if denominator == 4 {
        tpq
    } else {
        (tpq as f64 * (4.0 / f64::from(denominator))) as i64
    }
}

fn ticks_per_bar(ts: TimeSignature, tpq: i64) -> i64 {
    ticks_per_beat(ts.denominator(), tpq) * i64::from(ts.numerator())
}

/// Piecewise-constant values over time signature sections, equal neighbours merged; the last
/// section runs forever.
fn sections(
    time_sigs: &[(i64, TimeSignature)],
    value: impl Fn(TimeSignature) -> i64,
) -> Vec<Section> {
    let mut out: Vec<Section> = time_sigs
        .windows(2)
        .map(|w| Section {
            end: w[1].0,
            value: value(w[0].1),
        })
        .collect();
    out.push(Section {
        end: i64::MAX,
        value: value(time_sigs[time_sigs.len() - 1].1),
    });
    let mut i = out.len() - 1;
    while i > 0 {
        if out[i].value == out[i - 1].value {
            out[i - 1].end = out[i].end;
            out.remove(i);
        }
        i -= 1;
    }
    out
}

/// The section a tick falls in and the tick that section starts at.
fn section_of(sections: &[Section], time: i64) -> (usize, i64) {
    let index = sections
        .partition_point(|s| s.end <= time)
        .min(sections.len() - 1);
    let start = if index == 0 {
        0
    } else {
        sections[index - 1].end
    };
    (index, start)
}

/// MidiTok's `_preprocess_time_signatures`: drop repeats, move each change to the next bar line
/// of the previous meter, keep the last of several at one tick.
fn delay_time_signatures(time_sigs: &mut Vec<(i64, TimeSignature)>, tpq: i64) {
    let mut i = 0;
    let mut bar = ticks_per_bar(time_sigs[0].1, tpq).max(1);
    let mut previous_tick = 0;
    while i < time_sigs.len() {
        if i >= 1 && time_sigs[i].1 == time_sigs[i - 1].1 {
            time_sigs.remove(i);
            continue;
        }
        if i >= 1 && time_sigs[i].0 < time_sigs[i - 1].0 {
            time_sigs[i].0 = time_sigs[i - 1].0;
        }
        let offset = time_sigs[i].0 - previous_tick;
        let (bars, rest) = (offset.div_euclid(bar), offset.rem_euclid(bar));
        if rest > 0 {
            time_sigs[i].0 = previous_tick + (bars + 1) * bar;
        }
        bar = ticks_per_bar(time_sigs[i].1, tpq).max(1);
        previous_tick = time_sigs[i].0;
        if i >= 1 && time_sigs[i].0 == time_sigs[i - 1].0 {
            time_sigs.remove(i - 1);
            if i >= 2 && time_sigs[i - 1].1 == time_sigs[i - 2].1 {
                time_sigs.remove(i - 1);
                bar = ticks_per_bar(time_sigs[i - 2].1, tpq).max(1);
                previous_tick = time_sigs[i - 2].0;
                i -= 1;
            }
            continue;
        }
        i += 1;
    }
    if time_sigs.first().is_none_or(|t| t.0 != 0) {
        time_sigs.insert(0, (0, TimeSignature::COMMON));
    }
}

/// MidiTok's REMI `_add_time_events`, for time signature and note events.
struct RemiWriter<'a> {
    tok: &'a Tokenizer,
    ids: &'a mut Vec<TokenId>,
    tpq: i64,
    max_pos: i64,
    current_bar: i64,
    bar_at_last_ts_change: i64,
    tick_at_last_ts_change: i64,
    tick_at_current_bar: i64,
    previous_tick: i64,
    time_sig: TimeSignature,
    ticks_per_bar: i64,
    ticks_per_pos: i64,
}

impl<'a> RemiWriter<'a> {
    fn new(tok: &'a Tokenizer, tpq: i64, first: TimeSignature, ids: &'a mut Vec<TokenId>) -> Self {
        let mut w = RemiWriter {
            tok,
            ids,
            tpq,
            max_pos: i64::from(tok.config.max_positions_per_beat()),
            current_bar: -1,
            bar_at_last_ts_change: 0,
            tick_at_last_ts_change: 0,
            tick_at_current_bar: 0,
            previous_tick: -1,
            time_sig: first,
            ticks_per_bar: 1,
            ticks_per_pos: 1,
        };
        w.set_meter(first);
        w
    }

    fn set_meter(&mut self, ts: TimeSignature) {
        self.time_sig = ts;
        self.ticks_per_bar = ticks_per_bar(ts, self.tpq).max(1);
        self.ticks_per_pos = (ticks_per_beat(ts.denominator(), self.tpq) / self.max_pos).max(1);
    }

    /// `Bar` (and `TimeSig`, except for the last bar when a time signature event follows) for
    /// every bar line crossed up to `until`.
    fn new_bars(&mut self, until: i64, is_time_sig: bool) {
        let crossed = self.bar_at_last_ts_change
            + (until - self.tick_at_last_ts_change).div_euclid(self.ticks_per_bar)
            - self.current_bar;
        for i in 0..crossed.max(0) {
            self.current_bar += 1;
            self.tick_at_current_bar = self.tick_at_last_ts_change
                + (self.current_bar - self.bar_at_last_ts_change) * self.ticks_per_bar;
            self.ids.push(self.tok.bar_id);
            if !(is_time_sig && i + 1 == crossed) {
                // Always found: every meter here passed the support filter or is the 4/4 default.
                if let Some(id) = self.tok.time_signature_id(self.time_sig) {
                    self.ids.push(id);
                }
            }
        }
    }

    fn time_signature(&mut self, time: i64, ts: TimeSignature) {
        if time != self.previous_tick {
            self.new_bars(time, true);
            self.previous_tick = time;
        }
        self.bar_at_last_ts_change +=
            (time - self.tick_at_last_ts_change).div_euclid(self.ticks_per_bar);
        self.tick_at_last_ts_change = time;
        self.set_meter(ts);
        // Forces a `Position` before the next note, even at this same tick.
        self.previous_tick -= 1;
        if let Some(id) = self.tok.time_signature_id(ts) {
            self.ids.push(id);
        }
    }

    fn note(&mut self, note: &PreNote) {
        if note.time != self.previous_tick {
            self.new_bars(note.time, false);
            let position = (note.time - self.tick_at_current_bar).div_euclid(self.ticks_per_pos);
            let id = usize::try_from(position)
                .ok()
                .and_then(|p| self.tok.position_ids.get(p).copied())
                .unwrap_or(super::NONE);
            debug_assert!(id != super::NONE, "position {position} outside the bar");
            self.ids.push(id);
            self.previous_tick = note.time;
        }
        self.ids.push(self.tok.pitch_ids[usize::from(note.pitch)]);
        self.ids.push(self.tok.velocity_ids[note.velocity_index]);
        self.ids.push(self.tok.duration_ids[note.duration_index]);
    }
}
