//! "Repeat the last B bars of the prime": the continuation a looper pedal makes.

use crate::midi::Note;
use crate::time::Ticks;

/// Continues a prime that ends at `prime_end` (a bar line) by playing its last `bars` bars again,
/// looped when the prime is shorter than that. Returned onsets are relative to `prime_end`, and
/// only notes starting within `bars` bars are kept.
///
/// A prime shorter than one bar is looped whole. Notes are copied with their durations, velocity
/// and pitch, so the result has exactly the prime's density, range and key: a strong baseline for
/// those metrics, and a zero for novelty (see `metrics::copied_bar_share`).
pub fn repeat_last_bars(prime: &[Note], prime_end: Ticks, bar_len: Ticks, bars: u32) -> Vec<Note> {
    let length = bar_len.0 * u64::from(bars);
    let whole_bars = prime_end.0 / bar_len.0.max(1);
    let loop_len = if whole_bars == 0 {
        prime_end.0
    } else {
        whole_bars.min(u64::from(bars)) * bar_len.0
    };
    if loop_len == 0 || length == 0 {
        return Vec::new();
    }
    let loop_start = prime_end.0 - loop_len;
    let source: Vec<&Note> = prime
        .iter()
        .filter(|n| n.start.0 >= loop_start && n.start.0 < prime_end.0)
        .collect();
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < length {
        for n in &source {
            let start = offset + (n.start.0 - loop_start);
            if start < length {
                out.push(Note {
                    start: Ticks(start),
                    ..**n
                });
            }
        }
        offset += loop_len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(start: u64, pitch: u8) -> Note {
        Note {
            start: Ticks(start),
            duration: Ticks(24),
            pitch,
            velocity: 64,
        }
    }

    #[test]
    fn repeats_the_last_bars_and_loops_when_asked_for_more() {
        let bar = Ticks(96);
        // Three bars: C, D, E on each downbeat.
        let prime = [note(0, 60), note(96, 62), note(192, 64)];
        let two = repeat_last_bars(&prime, Ticks(288), bar, 2);
        assert_eq!(two, vec![note(0, 62), note(96, 64)]);
        // Five bars from a three-bar prime: the last three bars, looped.
        let five = repeat_last_bars(&prime, Ticks(288), bar, 5);
        let pitches: Vec<u8> = five.iter().map(|n| n.pitch).collect();
        assert_eq!(pitches, [60, 62, 64, 60, 62]);
        assert_eq!(five[4].start, Ticks(384));
        assert!(repeat_last_bars(&[], Ticks(0), bar, 2).is_empty());
    }
}
