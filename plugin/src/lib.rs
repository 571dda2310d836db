//! Continuator as a CLAP/VST3 MIDI effect: it listens to the musician, continues the phrase on a
//! background thread, and plays the continuation back locked to the host's transport.
//!
//! The audio thread (this file's `process`, and [`realtime`] beneath it) never allocates, locks or
//! blocks: it talks to the inference thread ([`inference`]) through two ring buffers (captured
//! notes one way, generated notes the other) and a handful of atomics ([`shared`]).

use std::num::NonZeroU32;
use std::sync::Arc;

use nice_plug::midi::{Channel, Key, VoiceID};
use nice_plug::prelude::*;

mod capture;
mod clock;
mod continuer;
mod editor;
mod engine_continuer;
mod export;
mod inference;
mod memory;
mod model;
mod output;
mod params;
mod phrase;
mod preview;
mod realtime;
mod restored;
mod roll;
mod scheduler;
mod shared;
mod sounding;
mod status;
mod takes;
mod transport;
mod view;

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

/// Takes and their export, for the xtask test that reads an exported file back with
/// `cargo xtask tokenize`. Not an API either.
pub mod export_check {
    pub use crate::export::write_take;
    pub use crate::params::SavedNote;
    pub use crate::takes::Take;
    pub use crate::view::ExportPart;
}

use engine::time::Beats;

use crate::capture::CapturedNote;
use crate::clock::{host_time_signature, Tempo};
use crate::inference::{EditorLink, Inference, InferenceThread, Knobs, Persisted};
use crate::output::{OutNote, OutQueue};
use crate::params::ContinuatorParams;
use crate::preview::Preview;
use crate::realtime::{Incoming, Processor, Route};
use crate::scheduler::ScheduledNote;
use crate::shared::Shared;
use crate::sounding::MAX_SOUNDING;
use crate::transport::HostTransport;
use crate::view::{CommandSender, ViewOutput};

/// Room for one block's outgoing events besides the NoteOff reserve: every input event passed
/// through plus every generated note that could start in one block.
const OUT_CAPACITY: usize = 1024 + scheduler::PLAYBACK_CAPACITY;

/// What differs between the two plugins the bundle holds: the MIDI effect, and the instrument
/// (for hosts such as Ableton Live that load no third-party MIDI effects).
pub trait Variant: 'static + Send + Sync {
    const NAME: &'static str;
    const CLAP_ID: &'static str;
    const CLAP_FEATURES: &'static [ClapFeature];
    const VST3_CLASS_ID: [u8; 16];
    const VST3_SUBCATEGORIES: &'static [Vst3SubCategory];
    const AUDIO_IO_LAYOUTS: &'static [AudioIOLayout];
}

/// The MIDI effect: no audio at all.
pub struct Effect;

impl Variant for Effect {
    const NAME: &'static str = "Continuator";
    const CLAP_ID: &'static str = "org.continuator.continuator";
    const CLAP_FEATURES: &'static [ClapFeature] = &[ClapFeature::NoteEffect, ClapFeature::Utility];
    const VST3_CLASS_ID: [u8; 16] = *b"ContinuatorMidi1";
    // "Instrument" so that hosts put it on instrument tracks where MIDI flows; "Fx" because it
    // transforms MIDI rather than making sound.
    const VST3_SUBCATEGORIES: &'static [Vst3SubCategory] =
        &[Vst3SubCategory::Instrument, Vst3SubCategory::Fx];
    // A MIDI effect: no audio in or out. Hosts still call `process` with a real frame count.
    const AUDIO_IO_LAYOUTS: &'static [AudioIOLayout] = &[AudioIOLayout {
        main_input_channels: None,
        main_output_channels: None,
        aux_input_ports: &[],
        aux_output_ports: &[],
        names: PortNames::const_default(),
    }];
}

/// *Continuator Instrument*: the same MIDI in and out, plus a stereo output (silence, or the
/// preview tone), so that hosts which only route MIDI out of instruments can use it: in Live, a
/// second track takes its MIDI ("MIDI From" → this track, monitoring In).
pub struct Instrument;

impl Variant for Instrument {
    const NAME: &'static str = "Continuator Instrument";
    const CLAP_ID: &'static str = "org.continuator.continuator-instrument";
    const CLAP_FEATURES: &'static [ClapFeature] = &[
        ClapFeature::Instrument,
        ClapFeature::Synthesizer,
        ClapFeature::Stereo,
    ];
    const VST3_CLASS_ID: [u8; 16] = *b"ContinuatorInst1";
    const VST3_SUBCATEGORIES: &'static [Vst3SubCategory] =
        &[Vst3SubCategory::Instrument, Vst3SubCategory::Synth];
    const AUDIO_IO_LAYOUTS: &'static [AudioIOLayout] = &[AudioIOLayout {
        main_input_channels: None,
        main_output_channels: NonZeroU32::new(2),
        aux_input_ports: &[],
        aux_output_ports: &[],
        names: PortNames::const_default(),
    }];
}

pub struct Continuator<V: Variant = Effect> {
    params: Arc<ContinuatorParams>,
    shared: Arc<Shared>,
    processor: Processor,
    out: OutQueue<PluginNoteEvent<Self>>,
    /// The inference thread's ends of the ring buffers and of the editor link, until the first
    /// activation starts it.
    inference_ends: Option<(
        rtrb::Consumer<CapturedNote>,
        rtrb::Producer<ScheduledNote>,
        EditorLink,
    )>,
    inference: Option<InferenceThread>,
    /// The editor's ends of the link.
    view: ViewOutput,
    commands: CommandSender,
    preview: Preview,
    variant: std::marker::PhantomData<V>,
}

/// The MIDI effect and the instrument, as the bundle exports them.
pub type ContinuatorInstrument = Continuator<Instrument>;

impl<V: Variant> Default for Continuator<V> {
    fn default() -> Self {
        let shared = Arc::new(Shared::default());
        let (playback_tx, playback_rx) = scheduler::playback_channel();
        let (processor, captured) = Processor::new(playback_rx, shared.clone());
        let (link, view, commands) = EditorLink::new();
        Self {
            params: Arc::new(ContinuatorParams::default()),
            shared,
            processor,
            out: OutQueue::with_capacity(OUT_CAPACITY, MAX_SOUNDING),
            inference_ends: Some((captured, playback_tx, link)),
            inference: None,
            view,
            commands,
            preview: Preview::default(),
            variant: std::marker::PhantomData,
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
        pick: (params.pick.value().max(1) - 1) as usize,
        model_threads: std::num::NonZeroUsize::new(params.model_threads.value().max(1) as usize)
            .unwrap_or(std::num::NonZeroUsize::MIN),
    }
}

impl<V: Variant> Continuator<V> {
    /// Starts the inference thread (once per plugin instance): it loads the model and then
    /// listens. A failure to start is logged and leaves the plugin passing MIDI through.
    fn start_inference(&mut self) {
        let Some((captured, playback, link)) = self.inference_ends.take() else {
            return;
        };
        let params = self.params.clone();
        let persisted = Persisted {
            last_take: self.params.last_take.clone(),
            playing_memory: self.params.playing_memory.clone(),
            adapter_path: self.params.adapter_path.clone(),
        };
        let inference = Inference::new(
            self.shared.clone(),
            captured,
            playback,
            Box::new(move || knobs(&params)),
            persisted,
            link,
        );
        match InferenceThread::spawn(inference, model::loader()) {
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
fn incoming(event: &NoteEvent<()>) -> Option<Incoming> {
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

impl<V: Variant> Plugin for Continuator<V> {
    const NAME: &'static str = V::NAME;
    const VENDOR: &'static str = "Continuator developers";
    const URL: &'static str = env!("CARGO_PKG_HOMEPAGE");
    const EMAIL: &'static str = "";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    const AUDIO_IO_LAYOUTS: &'static [AudioIOLayout] = V::AUDIO_IO_LAYOUTS;

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
            self.view.clone(),
            self.commands.clone(),
            editor::default_state(),
        )
    }

    fn activate(
        &mut self,
        _audio_io_layout: &AudioIOLayout,
        buffer_config: &BufferConfig,
        _context: &mut impl ActivateContext<Self>,
    ) -> bool {
        self.preview.set_sample_rate(buffer_config.sample_rate);
        self.start_inference();
        true
    }

    fn reset(&mut self) {
        self.processor.request_release();
        self.preview.all_off();
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
        let preview = self.params.preview.value() && buffer.channels() > 0;
        if !preview {
            self.preview.all_off();
        }
        // The instrument's output: silence, or the preview of what goes out, sample-accurately.
        let samples = buffer.samples();
        let channels = buffer.as_slice();
        for channel in channels.iter_mut() {
            channel.fill(0.0);
        }
        let mut rendered = 0usize;
        let preview_state = &mut self.preview;
        self.out.drain_sorted(|event| {
            if preview {
                let at = (event.timing() as usize).min(samples);
                if let Some((first, _)) = channels.split_first_mut() {
                    preview_state.render(&mut first[rendered..at]);
                }
                rendered = at;
                match event {
                    NoteEvent::NoteOn {
                        key: Key::Number(key),
                        velocity,
                        ..
                    } => preview_state.note_on(key, velocity),
                    NoteEvent::NoteOff {
                        key: Key::Number(key),
                        ..
                    } => preview_state.note_off(key),
                    _ => {}
                }
            }
            // The host's output queue is full: nothing better to do than lose the event.
            let _ = context.try_send_event(event);
        });
        if let Some((first, rest)) = channels.split_first_mut() {
            if preview {
                preview_state.render(&mut first[rendered..samples]);
            }
            for channel in rest {
                channel.copy_from_slice(first);
            }
        }
        ProcessStatus::KeepAlive
    }
}

impl<V: Variant> ClapPlugin for Continuator<V> {
    const CLAP_ID: &'static str = V::CLAP_ID;
    const CLAP_DESCRIPTION: Option<&'static str> =
        Some("Continues the musician's MIDI phrase in their style");
    const CLAP_MANUAL_URL: Option<&'static str> = None;
    const CLAP_SUPPORT_URL: Option<&'static str> = None;
    const CLAP_FEATURES: &'static [ClapFeature] = V::CLAP_FEATURES;
}

impl<V: Variant> Vst3Plugin for Continuator<V> {
    const VST3_CLASS_ID: [u8; 16] = V::VST3_CLASS_ID;
    const VST3_SUBCATEGORIES: &'static [Vst3SubCategory] = V::VST3_SUBCATEGORIES;
}

nice_export_clap!(Continuator<Effect>, Continuator<Instrument>);
nice_export_vst3!(Continuator<Effect>, Continuator<Instrument>);
