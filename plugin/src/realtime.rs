//! The audio thread's whole job, independent of the plugin API so it can be tested without a
//! host: follow the transport, capture and pass through the musician's notes, catch triggers,
//! play the generated notes, and release them whenever the music moves on without them.
//!
//! Nothing here allocates, locks or blocks: storage is sized in [`Processor::new`] and the only
//! communication is ring buffers and atomics.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rtrb::Consumer;

use crate::capture::{velocity_to_midi, Capture, CapturedNote, Edge};
use crate::output::{OutNote, OutQueue};
use crate::scheduler::{ScheduledNote, Scheduler};
use crate::shared::{Shared, NO_TAKE};
use crate::time::{BlockClock, TimeSignature};
use crate::transport::{Change, HostTransport, TransportTracker};

/// What may start a manual continuation from the MIDI input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerBinding {
    Off,
    /// A NoteOn of this key (any channel) triggers; the key's notes are not passed through.
    Note(u8),
    /// This controller crossing the middle upwards triggers; it is not passed through.
    Cc(u8),
}

/// The parameters the audio thread needs, read once per block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockSettings {
    pub bypass: bool,
    pub thru: bool,
    /// Zero-based MIDI channel for generated notes.
    pub output_channel: u8,
    /// Whether the musician playing over a continuation stops it.
    pub yield_on_play: bool,
    /// The `Continue` parameter's current value; its rising edge triggers.
    pub trigger: bool,
    pub trigger_binding: TriggerBinding,
}

impl Default for BlockSettings {
    fn default() -> Self {
        BlockSettings {
            bypass: false,
            thru: true,
            output_channel: 0,
            yield_on_play: true,
            trigger: false,
            trigger_binding: TriggerBinding::Off,
        }
    }
}

/// An incoming event the core cares about.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Incoming {
    NoteOn {
        timing: u32,
        channel: u8,
        key: u8,
        velocity: f32,
    },
    NoteOff {
        timing: u32,
        channel: u8,
        key: u8,
    },
    Cc {
        timing: u32,
        channel: u8,
        cc: u8,
        value: f32,
    },
}

/// What to do with an incoming event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Pass it to the output unchanged.
    Thru,
    /// Swallow it (trigger bindings, or `Thru` switched off).
    Consumed,
}

pub struct Processor {
    capture: Capture,
    scheduler: Scheduler,
    tracker: TransportTracker,
    shared: Arc<Shared>,
    clock: Option<BlockClock>,
    time_signature: TimeSignature,
    /// Set by `reset`/`deactivate`, which cannot send events: the next block releases everything.
    release_requested: bool,
    last_trigger_param: bool,
    last_cc_high: bool,
    was_bypassed: bool,
}

impl Processor {
    /// Builds the audio side; returns the capture consumer for the inference thread.
    pub fn new(
        playback: Consumer<ScheduledNote>,
        shared: Arc<Shared>,
    ) -> (Processor, Consumer<CapturedNote>) {
        let (capture, captured) = Capture::new(shared.clone());
        let processor = Processor {
            capture,
            scheduler: Scheduler::new(playback, shared.clone()),
            tracker: TransportTracker::default(),
            shared,
            clock: None,
            time_signature: TimeSignature::default(),
            release_requested: false,
            last_trigger_param: false,
            last_cc_high: false,
            was_bypassed: false,
        };
        (processor, captured)
    }

    /// Generated notes sounding right now (for tests and the GUI).
    pub fn sounding(&self) -> usize {
        self.scheduler.sounding()
    }

    /// Asks the next block to release every generated note and start the transport afresh; for
    /// `reset` and `deactivate`, which have no way to send events themselves.
    pub fn request_release(&mut self) {
        self.release_requested = true;
    }

    /// Starts a block: follows the transport and releases everything on stop, jump, bypass or a
    /// pending reset. Call before [`Processor::input`].
    pub fn begin_block<E: From<OutNote>>(
        &mut self,
        host: &HostTransport,
        settings: &BlockSettings,
        out: &mut OutQueue<E>,
    ) {
        if std::mem::take(&mut self.release_requested) {
            self.scheduler.stop_all(out, 0);
            self.tracker.forget();
        }
        let (clock, change) = self.tracker.update(host);
        if matches!(change, Change::Stopped | Change::Jumped) {
            tracing::trace!(?change, "transport moved: releasing generated notes");
            self.scheduler.stop_all(out, 0);
        }
        if settings.bypass && !self.was_bypassed {
            self.scheduler.stop_all(out, 0);
        }
        self.was_bypassed = settings.bypass;
        self.clock = clock;
        if let Some(sig) = host.time_signature {
            self.time_signature = sig;
        }
        match (&self.clock, host.tempo) {
            (Some(clock), Some(tempo)) => {
                self.shared
                    .transport
                    .publish(true, clock.end(), tempo, self.time_signature)
            }
            _ => self.shared.transport.publish_stopped(),
        }

        let rising = settings.trigger && !self.last_trigger_param;
        self.last_trigger_param = settings.trigger;
        if rising && !settings.bypass {
            self.trigger(0, out);
        }
    }

    /// Handles one incoming event (in time order) and says whether it passes through.
    pub fn input<E: From<OutNote>>(
        &mut self,
        event: Incoming,
        settings: &BlockSettings,
        out: &mut OutQueue<E>,
    ) -> Route {
        if settings.bypass {
            return Route::Thru;
        }
        let thru = if settings.thru {
            Route::Thru
        } else {
            Route::Consumed
        };
        match (event, settings.trigger_binding) {
            (Incoming::NoteOn { timing, key, .. }, TriggerBinding::Note(bound)) if key == bound => {
                self.trigger(timing, out);
                Route::Consumed
            }
            (Incoming::NoteOff { key, .. }, TriggerBinding::Note(bound)) if key == bound => {
                Route::Consumed
            }
            (
                Incoming::Cc {
                    timing, cc, value, ..
                },
                TriggerBinding::Cc(bound),
            ) if cc == bound => {
                let high = value >= 0.5;
                if high && !self.last_cc_high {
                    self.trigger(timing, out);
                }
                self.last_cc_high = high;
                Route::Consumed
            }
            (
                Incoming::NoteOn {
                    timing,
                    channel,
                    key,
                    velocity,
                },
                _,
            ) => {
                let playing_over = self.scheduler.is_busy() || self.shared.active_take() != NO_TAKE;
                if settings.yield_on_play && playing_over {
                    self.scheduler.stop_all(out, timing);
                }
                self.capture_edge(
                    timing,
                    channel,
                    key,
                    Edge::On {
                        velocity: velocity_to_midi(velocity),
                    },
                );
                thru
            }
            (
                Incoming::NoteOff {
                    timing,
                    channel,
                    key,
                },
                _,
            ) => {
                self.capture_edge(timing, channel, key, Edge::Off);
                thru
            }
            (Incoming::Cc { .. }, _) => thru,
        }
    }

    /// Ends a block: emits the generated notes that fall inside it.
    pub fn end_block<E: From<OutNote>>(&mut self, settings: &BlockSettings, out: &mut OutQueue<E>) {
        if settings.bypass {
            return;
        }
        match self.clock {
            Some(clock) => self.scheduler.process(out, &clock, settings.output_channel),
            None => self.scheduler.idle(out),
        }
    }

    fn capture_edge(&mut self, timing: u32, channel: u8, key: u8, edge: Edge) {
        // Without a running transport there is no musical time to stamp, and nothing could be
        // continued anyway.
        if let Some(clock) = &self.clock {
            self.capture.push(CapturedNote {
                at: clock.at(timing),
                channel,
                key,
                edge,
            });
        }
    }

    /// A manual trigger: stops whatever plays and tells the inference thread where it happened.
    fn trigger<E: From<OutNote>>(&mut self, timing: u32, out: &mut OutQueue<E>) {
        let Some(clock) = &self.clock else { return };
        let at = clock.at(timing);
        self.scheduler.stop_all(out, timing);
        self.shared.trigger_position.store(at.0);
        self.shared.triggers.fetch_add(1, Ordering::AcqRel);
    }
}
