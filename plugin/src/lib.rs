//! Continuator as a CLAP/VST3 MIDI effect: it listens to the musician, continues the phrase on a
//! background thread, and plays the continuation back locked to the host's transport.
//!
//! The audio thread (this file's `process`, and [`realtime`] beneath it) never allocates, locks or
//! blocks: it talks to the inference thread ([`inference`]) through two ring buffers (captured
//! notes one way, generated notes the other) and a handful of atomics ([`shared`]).

use std::sync::Arc;

use nice_plug::midi::{Channel, Key, VoiceID};
use nice_plug::prelude::*;

mod capture;
mod clock;
mod continuer;
mod editor;
mod engine_continuer;
mod inference;
mod memory;
mod model;
mod output;
mod params;
mod phrase;
mod realtime;
mod scheduler;
mod shared;
mod sounding;
mod status;
mod transport;

/// The pieces the benchmarks (`plugin/benches`) drive directly: the real-time core and the
/// continuer seam. Not an API: hosts load the plugin through its CLAP/VST3 exports, and everything
/// else stays private so that the compiler reports what nothing uses.
pub mod bench {
    pub use crate::clock::Tempo;
    pub use crate::continuer::{ContinueRequest, Continuer, GridNote, GridPrime};
    pub use crate::engine_continuer::{EngineContinuer, ModelSource};
    pub use crate::output::{OutNote, OutQueue};
    pub use crate::realtime::{BlockSettings, Incoming, Processor};
    pub use crate::scheduler::{playback_channel, ScheduledNote};
    pub use crate::shared::Shared;
    pub use crate::sounding::MAX_SOUNDING;
    pub use crate::transport::HostTransport;
}

use engine::time::Beats;

use crate::capture::CapturedNote;
use crate::clock::{host_time_signature, Tempo};
use crate::inference::{Inference, InferenceThread, Knobs};
use crate::output::{OutNote, OutQueue};
use crate::params::ContinuatorParams;
use crate::realtime::{Incoming, Processor, Route};
use crate::scheduler::ScheduledNote;
use crate::shared::Shared;
use crate::sounding::MAX_SOUNDING;
use crate::transport::HostTransport;

/// Room for one block's outgoing events besides the NoteOff reserve: every input event passed
/// through plus every generated note that could start in one block.
const OUT_CAPACITY: usize = 1024 + scheduler::PLAYBACK_CAPACITY;

pub struct Continuator {
    params: Arc<ContinuatorParams>,
    shared: Arc<Shared>,
    processor: Processor,
    out: OutQueue<PluginNoteEvent<Self>>,
    /// The inference thread's ends of the ring buffers, until the first activation starts it.
    inference_ends: Option<(rtrb::Consumer<CapturedNote>, rtrb::Producer<ScheduledNote>)>,
    inference: Option<InferenceThread>,
}

impl Default for Continuator {
    fn default() -> Self {
        let shared = Arc::new(Shared::default());
        let (playback_tx, playback_rx) = scheduler::playback_channel();
        let (processor, captured) = Processor::new(playback_rx, shared.clone());
        Self {
            params: Arc::new(ContinuatorParams::default()),
            shared,
            processor,
            out: OutQueue::with_capacity(OUT_CAPACITY, MAX_SOUNDING),
            inference_ends: Some((captured, playback_tx)),
            inference: None,
        }
    }
}

/// The inference thread's view of the parameters.
fn knobs(params: &ContinuatorParams) -> Knobs {
    Knobs {
        mode: params.mode.value(),
        listen_bars: params.listen_bars.value().max(1) as u32,
        continue_bars: params.continue_bars.value().max(1) as u32,
        temperature: params.temperature.value(),
        top_p: params.top_p.value(),
        variations: params.variations.value().max(1) as u32,
        start: params.start.value(),
        auto_silence: Beats(f64::from(params.auto_silence.value())),
        steering: params.steering(),
        clear_memory: params.clear_memory.value(),
    }
}

impl Continuator {
    /// Starts the inference thread (once per plugin instance): it loads the model and then
    /// listens. A failure to start is logged and leaves the plugin passing MIDI through.
    fn start_inference(&mut self) {
        let Some((captured, playback)) = self.inference_ends.take() else {
            return;
        };
        let params = self.params.clone();
        let inference = Inference::new(
            self.shared.clone(),
            captured,
            playback,
            Box::new(move || knobs(&params)),
            self.params.last_take.clone(),
            self.params.playing_memory.clone(),
        );
        let adapter = self
            .params
            .adapter_path
            .read()
            .ok()
            .and_then(|path| path.clone());
        match InferenceThread::spawn(inference, model::loader(adapter)) {
            Ok(thread) => self.inference = Some(thread),
            Err(err) => self
                .shared
                .model
                .fail(format!("cannot start the inference thread: {err}")),
        }
    }
}

impl From<OutNote> for NoteEvent<()> {
    fn from(note: OutNote) -> Self {
        match note {
            OutNote::On {
                timing,
                channel,
                key,
                velocity,
            } => NoteEvent::NoteOn {
                timing,
                voice_id: VoiceID::Wildcard,
                channel: Channel::Number(channel),
                key: Key::Number(key),
                velocity,
            },
            OutNote::Off {
                timing,
                channel,
                key,
            } => NoteEvent::NoteOff {
                timing,
                voice_id: VoiceID::Wildcard,
                channel: Channel::Number(channel),
                key: Key::Number(key),
                velocity: 0.0,
            },
        }
    }
}

/// The part of an incoming event the core cares about, if any.
fn incoming(event: &PluginNoteEvent<Continuator>) -> Option<Incoming> {
    match *event {
        NoteEvent::NoteOn {
            timing,
            channel,
            key,
            velocity,
            ..
        } => {
            let (Channel::Number(channel), Key::Number(key)) = (channel, key) else {
                return None;
            };
            // MIDI's NoteOn with velocity zero is a NoteOff.
            if velocity <= 0.0 {
                Some(Incoming::NoteOff {
                    timing,
                    channel,
                    key,
                })
            } else {
                Some(Incoming::NoteOn {
                    timing,
                    channel,
                    key,
                    velocity,
                })
            }
        }
        NoteEvent::NoteOff {
            timing,
            channel,
            key,
            ..
        } => {
            let (Channel::Number(channel), Key::Number(key)) = (channel, key) else {
                return None;
            };
            Some(Incoming::NoteOff {
                timing,
                channel,
                key,
            })
        }
        NoteEvent::MidiCC {
            timing,
            channel,
            cc,
            value,
        } => Some(Incoming::Cc {
            timing,
            channel,
            cc,
            value,
        }),
        _ => None,
    }
}

fn host_transport(transport: &Transport, len: u32) -> HostTransport {
    HostTransport {
        playing: transport.playing,
        position: transport.pos_beats().map(Beats),
        tempo: transport.tempo.and_then(Tempo::from_bpm),
        time_signature: match (transport.time_sig_numerator, transport.time_sig_denominator) {
            (Some(numerator), Some(denominator)) => host_time_signature(numerator, denominator),
            _ => None,
        },
        sample_rate: transport.sample_rate,
        len,
    }
}

impl Plugin for Continuator {
    const NAME: &'static str = "Continuator";
    const VENDOR: &'static str = "Continuator developers";
    const URL: &'static str = env!("CARGO_PKG_HOMEPAGE");
    const EMAIL: &'static str = "";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    // A MIDI effect: no audio in or out. Hosts still call `process` with a real frame count.
    const AUDIO_IO_LAYOUTS: &'static [AudioIOLayout] = &[AudioIOLayout {
        main_input_channels: None,
        main_output_channels: None,
        aux_input_ports: &[],
        aux_output_ports: &[],
        names: PortNames::const_default(),
    }];

    // CCs too, so a trigger can be bound to a controller and controllers pass through.
    const MIDI_INPUT: MidiConfig = MidiConfig::MidiCCs;
    const MIDI_OUTPUT: MidiConfig = MidiConfig::MidiCCs;
    const SAMPLE_ACCURATE_AUTOMATION: bool = false;

    type Editor = nice_plug_egui::EguiEditor<editor::StatusApp>;
    type SysExMessage = ();
    type BackgroundTask = ();

    fn params(&self) -> Arc<dyn Params> {
        self.params.clone()
    }

    fn editor(&mut self, _async_executor: AsyncExecutor<Self>) -> Option<Self::Editor> {
        editor::create(
            self.params.clone(),
            self.shared.clone(),
            editor::default_state(),
        )
    }

    fn activate(
        &mut self,
        _audio_io_layout: &AudioIOLayout,
        _buffer_config: &BufferConfig,
        _context: &mut impl ActivateContext<Self>,
    ) -> bool {
        self.start_inference();
        true
    }

    fn reset(&mut self) {
        self.processor.request_release();
    }

    fn deactivate(&mut self) {
        self.processor.request_release();
    }

    fn process(
        &mut self,
        buffer: &mut Buffer,
        _aux: &mut AuxiliaryBuffers,
        context: &mut impl ProcessContext<Self>,
    ) -> ProcessStatus {
        let settings = self.params.block_settings();
        let host = host_transport(context.transport(), buffer.samples() as u32);
        self.processor.begin_block(&host, &settings, &mut self.out);
        while let Some(event) = context.next_event() {
            let route = match incoming(&event) {
                Some(event) => self.processor.input(event, &settings, &mut self.out),
                // Anything else (pitch bend, pressure, program changes) is the musician's.
                None if settings.thru || settings.bypass => Route::Thru,
                None => Route::Consumed,
            };
            if route == Route::Thru {
                self.out.push(event.timing(), event);
            }
        }
        self.processor.end_block(&settings, &mut self.out);
        self.out.drain_sorted(|event| {
            // The host's output queue is full: nothing better to do than lose the event.
            let _ = context.try_send_event(event);
        });
        ProcessStatus::KeepAlive
    }
}

impl ClapPlugin for Continuator {
    const CLAP_ID: &'static str = "org.continuator.continuator";
    const CLAP_DESCRIPTION: Option<&'static str> =
        Some("Continues the musician's MIDI phrase in their style");
    const CLAP_MANUAL_URL: Option<&'static str> = None;
    const CLAP_SUPPORT_URL: Option<&'static str> = None;
    const CLAP_FEATURES: &'static [ClapFeature] = &[ClapFeature::NoteEffect, ClapFeature::Utility];
}

impl Vst3Plugin for Continuator {
    const VST3_CLASS_ID: [u8; 16] = *b"ContinuatorMidi1";
    // "Instrument" so that hosts put it on instrument tracks where MIDI flows; "Fx" because it
    // transforms MIDI rather than making sound.
    const VST3_SUBCATEGORIES: &'static [Vst3SubCategory] =
        &[Vst3SubCategory::Instrument, Vst3SubCategory::Fx];
}

nice_export_clap!(Continuator);
nice_export_vst3!(Continuator);
