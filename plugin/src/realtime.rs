//! The audio thread's whole job, independent of the plugin API so it can be tested without a
//! host: follow the transport, capture and pass through the musician's notes, catch triggers,
//! play the generated notes, and release them whenever the music moves on without them.
//!
//! Nothing here allocates, locks or blocks: storage is sized in [`Processor::new`] and the only
//! communication is ring buffers and atomics.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use engine::time::TimeSignature;
use rtrb::Consumer;

use crate::capture::{velocity_to_midi, Capture, CapturedNote, Edge};
use crate::clock::BlockClock;
use crate::output::{OutNote, OutQueue};
use crate::scheduler::{ScheduledNote, Scheduler};
use crate::shared::{Shared, NO_TAKE};
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
    /// The `Replay take` parameter's current value; its rising edge asks for the current take
    /// again. Caught here, per block, because a host may hold the button for a single block:
    /// the inference thread, polling at its own pace, could miss so short a press.
    pub replay: bool,
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
            replay: false,
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
    last_replay_param: bool,
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
            last_replay_param: false,
            last_cc_high: false,
            was_bypassed: false,
        };
        (processor, captured)
    }

    /// Generated notes sounding right now.
    #[cfg(test)]
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
            // Not logged: formatting a log line allocates, and this is the audio thread.
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
        if settings.replay && !self.last_replay_param && !settings.bypass {
            self.shared.replays.fetch_add(1, Ordering::AcqRel);
        }
        self.last_replay_param = settings.replay;
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use rtrb::Producer;

    use super::*;
    use crate::capture::CapturedNote;
    use crate::clock::Tempo;
    use crate::scheduler::{playback_channel, ScheduledNote};
    use crate::sounding::MAX_SOUNDING;
    use engine::time::Beats;

    /// A host in miniature: runs blocks through a [`Processor`] and checks what comes out.
    struct Host {
        processor: Processor,
        playback: Producer<ScheduledNote>,
        captured: rtrb::Consumer<CapturedNote>,
        shared: Arc<Shared>,
        out: OutQueue<OutNote>,
        playing: bool,
        position: f64,
        bpm: f64,
        settings: BlockSettings,
        /// Everything emitted, with absolute sample times.
        emitted: Vec<(u64, OutNote)>,
        samples: u64,
        /// Sounding count per (channel, key), from the output alone.
        balance: HashMap<(u8, u8), i32>,
    }

    const RATE: f32 = 48_000.0;

    impl Host {
        fn new() -> Host {
            let shared = Arc::new(Shared::default());
            let (playback, rx) = playback_channel();
            let (processor, captured) = Processor::new(rx, shared.clone());
            Host {
                processor,
                playback,
                captured,
                shared,
                out: OutQueue::with_capacity(2048, MAX_SOUNDING),
                playing: true,
                position: 0.0,
                bpm: 120.0,
                settings: BlockSettings::default(),
                emitted: Vec::new(),
                samples: 0,
                balance: HashMap::new(),
            }
        }

        fn start_take(&mut self, take: u32) {
            self.shared.active_take.store(take, Ordering::Release);
        }

        fn schedule(&mut self, take: u32, onset: f64, len: f64, key: u8) {
            let note = ScheduledNote {
                take,
                onset: Beats(onset),
                end: Beats(onset + len),
                key,
                velocity: 100,
            };
            let _ = self.playback.push(note);
        }

        /// Runs one block of `len` samples with the given input events; returns what passed.
        fn block(&mut self, len: u32, input: &[Incoming]) -> Vec<Route> {
            let host = HostTransport {
                playing: self.playing,
                position: Some(Beats(self.position)),
                tempo: Tempo::from_bpm(self.bpm),
                time_signature: TimeSignature::new(4, 4),
                sample_rate: RATE,
                len,
            };
            self.processor
                .begin_block(&host, &self.settings, &mut self.out);
            let routes = input
                .iter()
                .map(|&e| self.processor.input(e, &self.settings, &mut self.out))
                .collect();
            self.processor.end_block(&self.settings, &mut self.out);
            let mut events = Vec::new();
            self.out.drain_sorted(|e| events.push(e));
            let mut last = 0;
            for e in events {
                assert!(e.timing() < len.max(1), "event outside its block: {e:?}");
                assert!(e.timing() >= last, "events out of order");
                last = e.timing();
                match e {
                    OutNote::On { channel, key, .. } => {
                        let count = self.balance.entry((channel, key)).or_default();
                        *count += 1;
                        assert_eq!(
                            *count, 1,
                            "second NoteOn without NoteOff on {channel}/{key}"
                        );
                    }
                    OutNote::Off { channel, key, .. } => {
                        let count = self.balance.entry((channel, key)).or_default();
                        *count -= 1;
                        assert_eq!(*count, 0, "NoteOff without NoteOn on {channel}/{key}");
                    }
                }
                self.emitted.push((self.samples + u64::from(e.timing()), e));
            }
            if self.playing {
                self.position += f64::from(len) * self.bpm / 60.0 / f64::from(RATE);
            }
            self.samples += u64::from(len);
            routes
        }

        fn sounding(&self) -> i32 {
            self.balance.values().sum()
        }

        fn ons(&self) -> Vec<u64> {
            self.emitted
                .iter()
                .filter(|(_, e)| matches!(e, OutNote::On { .. }))
                .map(|(s, _)| *s)
                .collect()
        }
    }

    fn note_on(timing: u32, key: u8) -> Incoming {
        Incoming::NoteOn {
            timing,
            channel: 0,
            key,
            velocity: 0.8,
        }
    }

    #[test]
    fn passes_through_and_captures_with_musical_time() {
        let mut host = Host::new();
        host.position = 4.0;
        let routes = host.block(
            480,
            &[
                note_on(240, 60),
                Incoming::NoteOff {
                    timing: 479,
                    channel: 0,
                    key: 60,
                },
            ],
        );
        assert_eq!(routes, [Route::Thru, Route::Thru]);
        let first = host.captured.pop().unwrap();
        // 240 samples at 120 BPM / 48 kHz is 0.01 beat.
        assert!((first.at.0 - 4.01).abs() < 1e-9);
        assert!(host.captured.pop().is_ok());
        host.settings.thru = false;
        assert_eq!(host.block(480, &[note_on(0, 61)]), [Route::Consumed]);
    }

    #[test]
    fn generated_notes_play_on_their_samples_and_stop_releases_them() {
        let mut host = Host::new();
        host.start_take(1);
        host.schedule(1, 1.0, 8.0, 60);
        host.schedule(1, 2.0, 8.0, 62);
        for _ in 0..200 {
            host.block(512, &[]);
        }
        assert_eq!(host.ons(), [24_000, 48_000]);
        assert_eq!(host.sounding(), 2);
        host.playing = false;
        host.block(512, &[]);
        assert_eq!(host.sounding(), 0);
        assert_eq!(host.shared.active_take(), NO_TAKE);
    }

    #[test]
    fn loop_jump_releases_everything() {
        let mut host = Host::new();
        host.start_take(1);
        host.schedule(1, 0.0, 8.0, 60);
        host.schedule(1, 6.0, 1.0, 64);
        host.block(512, &[]);
        assert_eq!(host.sounding(), 1);
        host.position = 0.0; // loop back
        host.block(512, &[]);
        assert_eq!(host.sounding(), 0);
        for _ in 0..400 {
            host.block(512, &[]);
        }
        assert_eq!(
            host.ons().len(),
            1,
            "the cancelled take's later note never plays"
        );
    }

    #[test]
    fn playing_over_yields_unless_disabled() {
        let mut host = Host::new();
        host.start_take(1);
        host.schedule(1, 0.0, 8.0, 60);
        host.block(512, &[]);
        host.block(512, &[note_on(100, 48)]);
        assert_eq!(host.sounding(), 0);
        let off = host.emitted.last().unwrap();
        assert_eq!(off.0, 512 + 100);

        let mut host = Host::new();
        host.settings.yield_on_play = false;
        host.start_take(1);
        host.schedule(1, 0.0, 8.0, 60);
        host.block(512, &[]);
        host.block(512, &[note_on(100, 48)]);
        assert_eq!(host.sounding(), 1);
    }

    #[test]
    fn bypass_and_reset_release() {
        let mut host = Host::new();
        host.start_take(1);
        host.schedule(1, 0.0, 8.0, 60);
        host.block(512, &[]);
        host.settings.bypass = true;
        assert_eq!(host.block(512, &[note_on(0, 50)]), [Route::Thru]);
        assert_eq!(host.sounding(), 0);

        let mut host = Host::new();
        host.start_take(1);
        host.schedule(1, 0.0, 8.0, 60);
        host.block(512, &[]);
        host.processor.request_release();
        host.block(512, &[]);
        assert_eq!(host.sounding(), 0);
    }

    #[test]
    fn trigger_note_and_parameter_trigger_and_release() {
        let mut host = Host::new();
        host.settings.trigger_binding = TriggerBinding::Note(36);
        host.start_take(1);
        host.schedule(1, 0.0, 8.0, 60);
        host.block(512, &[]);
        let routes = host.block(
            512,
            &[
                note_on(10, 36),
                Incoming::NoteOff {
                    timing: 20,
                    channel: 0,
                    key: 36,
                },
            ],
        );
        assert_eq!(routes, [Route::Consumed, Route::Consumed]);
        assert_eq!(host.shared.triggers.load(Ordering::Acquire), 1);
        assert!((host.shared.trigger_position.load() - (522.0 / 24_000.0)).abs() < 1e-9);
        assert_eq!(host.sounding(), 0);
        // Holding the parameter on triggers once.
        host.settings.trigger = true;
        host.block(512, &[]);
        host.block(512, &[]);
        assert_eq!(host.shared.triggers.load(Ordering::Acquire), 2);
        // A CC binding triggers on the way up only.
        host.settings.trigger_binding = TriggerBinding::Cc(64);
        let cc = |value| Incoming::Cc {
            timing: 0,
            channel: 0,
            cc: 64,
            value,
        };
        host.block(512, &[cc(1.0), cc(1.0), cc(0.0), cc(0.9)]);
        assert_eq!(host.shared.triggers.load(Ordering::Acquire), 4);
    }

    #[test]
    fn a_replay_press_is_counted_once_even_if_it_lasts_one_block() {
        let mut host = Host::new();
        host.block(512, &[]);
        // One block down, then up again: a press shorter than any poll of the inference thread.
        host.settings.replay = true;
        host.block(512, &[]);
        host.settings.replay = false;
        host.block(512, &[]);
        assert_eq!(host.shared.replays.load(Ordering::Acquire), 1);
        // Held on for several blocks: still one press.
        host.settings.replay = true;
        host.block(512, &[]);
        host.block(512, &[]);
        assert_eq!(host.shared.replays.load(Ordering::Acquire), 2);
        // Bypassed, the plugin ignores it (as it ignores the Continue button).
        host.settings.replay = false;
        host.block(512, &[]);
        host.settings.bypass = true;
        host.settings.replay = true;
        host.block(512, &[]);
        assert_eq!(host.shared.replays.load(Ordering::Acquire), 2);
        // Nothing here decides what plays: the trigger count is untouched.
        assert_eq!(host.shared.triggers.load(Ordering::Acquire), 0);
    }

    #[test]
    fn new_take_releases_the_old_one() {
        let mut host = Host::new();
        host.start_take(1);
        host.schedule(1, 0.0, 8.0, 60);
        host.block(512, &[]);
        host.start_take(2);
        host.schedule(2, 0.5, 1.0, 60);
        host.block(512, &[]);
        assert_eq!(host.sounding(), 0);
        for _ in 0..100 {
            host.block(512, &[]);
        }
        assert_eq!(host.ons().len(), 2);
        assert_eq!(host.sounding(), 0);
    }

    #[test]
    fn the_audio_path_never_allocates() {
        let mut host = Host::new();
        host.settings.trigger_binding = TriggerBinding::Note(36);
        host.start_take(1);
        for i in 0..200 {
            host.schedule(1, f64::from(i) * 0.25, 0.2, 60 + (i % 12) as u8);
        }
        host.settings.yield_on_play = false;
        let inputs = [
            note_on(3, 50),
            Incoming::NoteOff {
                timing: 9,
                channel: 0,
                key: 50,
            },
            note_on(11, 36),
        ];
        let (processor, out) = (&mut host.processor, &mut host.out);
        let settings = host.settings;
        let mut emitted = 0;
        let mut position = 0.0;
        nice_assert_no_alloc::assert_no_alloc(|| {
            for block in 0..400 {
                let host = HostTransport {
                    playing: block % 97 != 96,
                    position: Some(Beats(if block == 200 { 1.0 } else { position })),
                    tempo: Tempo::from_bpm(120.0),
                    time_signature: TimeSignature::new(4, 4),
                    sample_rate: RATE,
                    len: 512,
                };
                processor.begin_block(&host, &settings, out);
                let input = match block {
                    300 => &inputs[..],
                    _ if block % 50 == 0 => &inputs[..2],
                    _ => &[],
                };
                for &event in input {
                    processor.input(event, &settings, out);
                }
                processor.end_block(&settings, out);
                out.drain_sorted(|_| emitted += 1);
                position += 512.0 / 24_000.0;
            }
        });
        assert!(emitted > 0);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Block { len: u32 },
        Schedule { ahead: f64, len: f64, key: u8 },
        NewTake,
        Play { key: u8 },
        Jump { to: f64 },
        Stop,
        Start,
        Tempo { bpm: f64 },
        Bypass(bool),
        Reset,
        Trigger,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (1u32..2048).prop_map(|len| Step::Block { len }),
            6 => (-0.5f64..8.0, 0.0f64..6.0, 60u8..66).prop_map(|(ahead, len, key)| Step::Schedule { ahead, len, key }),
            1 => Just(Step::NewTake),
            1 => (40u8..44).prop_map(|key| Step::Play { key }),
            1 => (0.0f64..32.0).prop_map(|to| Step::Jump { to }),
            1 => Just(Step::Stop),
            1 => Just(Step::Start),
            1 => (30.0f64..240.0).prop_map(|bpm| Step::Tempo { bpm }),
            1 => any::<bool>().prop_map(Step::Bypass),
            1 => Just(Step::Reset),
            1 => Just(Step::Trigger),
        ]
    }

    proptest! {
        #[test]
        fn every_note_on_gets_its_note_off(steps in proptest::collection::vec(step(), 1..200)) {
            let mut host = Host::new();
            host.settings.trigger_binding = TriggerBinding::Note(36);
            let mut take = 1;
            host.start_take(take);
            for step in steps {
                match step {
                    Step::Block { len } => { host.block(len, &[]); }
                    Step::Schedule { ahead, len, key } => {
                        let active = host.shared.active_take();
                        host.schedule(active, host.position + ahead, len, key);
                    }
                    Step::NewTake => { take += 1; host.start_take(take); }
                    Step::Play { key } => { host.block(64, &[note_on(10, key)]); }
                    Step::Jump { to } => host.position = to,
                    Step::Stop => host.playing = false,
                    Step::Start => host.playing = true,
                    Step::Tempo { bpm } => host.bpm = bpm,
                    Step::Bypass(on) => host.settings.bypass = on,
                    Step::Reset => host.processor.request_release(),
                    Step::Trigger => { host.block(64, &[note_on(0, 36)]); }
                }
            }
            // Whatever happened, stopping the transport leaves nothing sounding.
            host.settings.bypass = false;
            host.playing = false;
            host.block(64, &[]);
            prop_assert_eq!(host.sounding(), 0);
            prop_assert_eq!(host.processor.sounding(), 0);
        }
    }
}
