//! Following the host's transport from block to block: start, stop, loops and jumps.
//!
//! Hosts do not announce a loop or a relocation; the only sign is a block whose position is not
//! where the previous one ended. The tracker compares the two and reports the change, so the
//! plugin can release every generated note before anything hangs.

use engine::time::{Beats, TimeSignature};

use crate::clock::{BlockClock, Tempo};

/// What the host says about one block, copied out of its API so the real-time core can be tested
/// without a host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostTransport {
    pub playing: bool,
    pub position: Option<Beats>,
    pub tempo: Option<Tempo>,
    pub time_signature: Option<TimeSignature>,
    pub sample_rate: f32,
    /// Samples in this block.
    pub len: u32,
}

/// How the transport changed since the previous block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Running on from where the last block ended (or still stopped).
    Continuous,
    Started,
    Stopped,
    /// Running, but not from where the last block ended: a loop wrapped or the user relocated.
    Jumped,
}

/// A position mismatch smaller than this many samples is host rounding, not a jump.
const JUMP_TOLERANCE_SAMPLES: f64 = 4.0;

#[derive(Debug, Default)]
pub struct TransportTracker {
    /// Where the next block should start if the transport keeps running; `None` while stopped.
    expected_next: Option<Beats>,
}

impl TransportTracker {
    /// Follows the transport into this block: its clock (only while the transport runs with a
    /// known position and tempo) and how it changed.
    pub fn update(&mut self, host: &HostTransport) -> (Option<BlockClock>, Change) {
        let clock = match (host.playing, host.position, host.tempo) {
            (true, Some(position), Some(tempo)) => {
                BlockClock::new(position, tempo, host.sample_rate, host.len)
            }
            _ => None,
        };
        let change = match (self.expected_next, &clock) {
            (None, None) => Change::Continuous,
            (None, Some(_)) => Change::Started,
            (Some(_), None) => Change::Stopped,
            (Some(expected), Some(clock)) => {
                let tolerance = JUMP_TOLERANCE_SAMPLES * clock.beats_per_sample();
                if (clock.start().0 - expected.0).abs() > tolerance.max(1e-9) {
                    Change::Jumped
                } else {
                    Change::Continuous
                }
            }
        };
        self.expected_next = clock.map(|clock| clock.end());
        (clock, change)
    }

    /// Forgets the previous block (after `reset` or deactivation): the next running block counts
    /// as a start, not a jump.
    pub fn forget(&mut self) {
        self.expected_next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(playing: bool, position: f64, bpm: f64) -> HostTransport {
        HostTransport {
            playing,
            position: Some(Beats(position)),
            tempo: Tempo::from_bpm(bpm),
            time_signature: TimeSignature::new(4, 4),
            sample_rate: 48_000.0,
            len: 480,
        }
    }

    #[test]
    fn follows_start_run_jump_stop() {
        let mut tracker = TransportTracker::default();
        assert_eq!(
            tracker.update(&host(false, 0.0, 120.0)).1,
            Change::Continuous
        );
        let (clock, change) = tracker.update(&host(true, 0.0, 120.0));
        assert_eq!(change, Change::Started);
        let next = clock.unwrap().end().0;
        assert_eq!(next, 0.02);
        assert_eq!(
            tracker.update(&host(true, next, 120.0)).1,
            Change::Continuous
        );
        // Loop back to the start.
        assert_eq!(tracker.update(&host(true, 0.0, 120.0)).1, Change::Jumped);
        assert_eq!(tracker.update(&host(false, 0.02, 120.0)).1, Change::Stopped);
        assert_eq!(
            tracker.update(&host(false, 0.02, 120.0)).1,
            Change::Continuous
        );
    }

    #[test]
    fn tempo_change_is_not_a_jump() {
        let mut tracker = TransportTracker::default();
        let (clock, _) = tracker.update(&host(true, 1.0, 120.0));
        let (_, change) = tracker.update(&host(true, clock.unwrap().end().0, 90.0));
        assert_eq!(change, Change::Continuous);
    }

    #[test]
    fn no_tempo_means_no_clock() {
        let mut tracker = TransportTracker::default();
        let mut h = host(true, 0.0, 120.0);
        h.tempo = None;
        assert_eq!(tracker.update(&h), (None, Change::Continuous));
    }
}
