//! Capture: the musician's notes, stamped with musical time, handed to the inference thread.
//!
//! The audio thread only pushes into a wait-free single-producer ring buffer. When the inference
//! thread falls behind and the buffer is full, the event is dropped and counted rather than
//! blocking the audio thread; the GUI shows the counter so a dropped note is never a mystery.

use std::sync::Arc;

use engine::time::Beats;
use rtrb::{Consumer, Producer, RingBuffer};

use crate::shared::{Counters, Shared};

/// How many captured events may wait for the inference thread. At a few milliseconds between
/// reads, this is far more than a human can play in that time.
pub const CAPTURE_CAPACITY: usize = 4096;

/// A note edge as the musician played it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    On { velocity: u8 },
    Off,
}

/// One captured note edge at its position on the host's timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapturedNote {
    pub at: Beats,
    pub channel: u8,
    pub key: u8,
    pub edge: Edge,
}

/// MIDI velocity from nice-plug's normalised `0.0..=1.0`; a NoteOn never gets velocity 0 (which
/// MIDI would read as a NoteOff).
pub fn velocity_to_midi(velocity: f32) -> u8 {
    ((velocity.clamp(0.0, 1.0) * 127.0).round() as u8).max(1)
}

/// The audio thread's end of the capture ring buffer.
pub struct Capture {
    producer: Producer<CapturedNote>,
    shared: Arc<Shared>,
}

impl Capture {
    /// Creates both ends; the consumer goes to the inference thread.
    pub fn new(shared: Arc<Shared>) -> (Capture, Consumer<CapturedNote>) {
        let (producer, consumer) = RingBuffer::new(CAPTURE_CAPACITY);
        (Capture { producer, shared }, consumer)
    }

    /// Hands `note` to the inference thread, or drops and counts it if the buffer is full.
    /// Never blocks or allocates.
    pub fn push(&mut self, note: CapturedNote) {
        if self.producer.push(note).is_err() {
            Counters::bump(&self.shared.counters.dropped_events);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    fn note(at: f64) -> CapturedNote {
        CapturedNote {
            at: Beats(at),
            channel: 0,
            key: 60,
            edge: Edge::Off,
        }
    }

    #[test]
    fn full_buffer_drops_and_counts() {
        let shared = Arc::new(Shared::default());
        let (mut capture, mut consumer) = Capture::new(shared.clone());
        for i in 0..CAPTURE_CAPACITY + 3 {
            capture.push(note(i as f64));
        }
        assert_eq!(shared.counters.dropped_events.load(Ordering::Relaxed), 3);
        // The oldest events are kept; the newest were dropped.
        assert_eq!(consumer.slots(), CAPTURE_CAPACITY);
        assert_eq!(consumer.pop().unwrap().at, Beats(0.0));
    }

    #[test]
    fn velocities_stay_note_ons() {
        assert_eq!(velocity_to_midi(0.0), 1);
        assert_eq!(velocity_to_midi(1.0), 127);
        assert_eq!(velocity_to_midi(0.5), 64);
        assert_eq!(velocity_to_midi(7.0), 127);
    }
}
