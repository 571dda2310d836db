//! A headless CLAP host for Continuator: loads `Continuator.clap`, runs the scenarios
//! (120 BPM in 4/4 and 90 BPM in 3/4, with a tempo change and a loop jump) and fails loudly if
//! MIDI does not pass through, a continuation is off its bar line or grid, or a note hangs.
//!
//! `cargo run -p continuator-clap-host -- target/bundled/Continuator.clap`; add
//! `--require-continuation` for a `test-continuer` build (a scripted continuation that must start
//! exactly on the bar line) or `--model-continuation` for a build with the model (a continuation
//! must come, on or after the bar line), so that silence counts as a failure.
//!
//! `--instrument` loads *Continuator Instrument* from the same bundle instead of the MIDI effect
//! (a stereo output the host reads, which must stay silent with the preview off; the same MIDI
//! out).
//!
//! `--open-editor DIR` checks the editor instead of playing the scenarios: the plugin's GUI is
//! embedded (CLAP gui extension, X11 API) in a window this host creates on `$DISPLAY` (Xvfb in
//! CI) while blocks are processed, in three states (empty, listening to notes, a continuation
//! with three variations), each saved to `DIR/editor-*.png`; the host fails unless each shows a
//! rendered editor of the size the plugin asked for, with the piano roll and its notes drawn
//! (see [`editor`]).
//!
//! `--state-roundtrip` (a `test-continuer` build) plays a continuation with three variations,
//! saves the plugin's state, loads it into a fresh instance, and checks that every parameter came
//! back and that the Replay button plays the same take again (see [`state`]).
//!
//! `--soak N` plays N takes in a row with loop jumps, stops and bypass in between, and checks
//! that none hangs a note or goes unanswered and that memory stays flat (see [`soak`]).

mod editor;
mod soak;
mod state;

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, bail, ensure, Context, Result};
use clack_extensions::gui::{GuiSize, HostGui, HostGuiImpl};
use clack_extensions::params::{ParamInfoBuffer, PluginParams};
use clack_host::events::event_types::{
    MidiEvent, NoteOffEvent, NoteOnEvent, ParamValueEvent, TransportEvent, TransportFlags,
};
use clack_host::events::{EventFlags, EventHeader};
use clack_host::prelude::*;
use clack_host::utils::BeatTime;

use continuator_host_scenario as scenario;
use scenario::{Block, Edge, BLOCK, SAMPLE_RATE};

const EFFECT_ID: &str = "org.continuator.continuator";
const INSTRUMENT_ID: &str = "org.continuator.continuator-instrument";

/// The host's side of the plugin: what it may ask for from any thread.
#[derive(Default)]
struct HostShared {
    /// The plugin asked for `on_main_thread` (its editor's window thread sends work there).
    callback_requested: AtomicBool,
    /// The editor asked for its window to be resized.
    resize_requested: Mutex<Option<GuiSize>>,
    /// The plugin said its GUI was closed (`true`: destroyed).
    gui_closed: Mutex<Option<bool>>,
}

impl SharedHandler<'_> for HostShared {
    fn request_restart(&self) {}
    fn request_process(&self) {}
    fn request_callback(&self) {
        self.callback_requested.store(true, Ordering::SeqCst);
    }
}

impl HostGuiImpl for HostShared {
    fn resize_hints_changed(&self) {}

    fn request_resize(&self, new_size: GuiSize) -> Result<(), HostError> {
        let mut requested = self
            .resize_requested
            .lock()
            .map_err(|_| HostError::Message("resize request lock poisoned"))?;
        *requested = Some(new_size);
        Ok(())
    }

    fn request_show(&self) -> Result<(), HostError> {
        Ok(())
    }

    fn request_hide(&self) -> Result<(), HostError> {
        Ok(())
    }

    fn closed(&self, was_destroyed: bool) {
        if let Ok(mut closed) = self.gui_closed.lock() {
            *closed = Some(was_destroyed);
        }
    }
}

/// The host's callbacks: the GUI extension (nice-plug's editor needs it), nothing else.
struct Host;

impl HostHandlers for Host {
    type Shared<'a> = HostShared;
    type MainThread<'a> = ();
    type AudioProcessor<'a> = ();

    fn declare_extensions(builder: &mut HostExtensions<Self>, _shared: &Self::Shared<'_>) {
        builder.register::<HostGui>();
    }
}

struct ClapPlugin {
    /// Kept alive for as long as the processor runs.
    instance: PluginInstance<Host>,
    processor: StartedPluginAudioProcessor<Host>,
    out_events: EventBuffer,
    in_events: EventBuffer,
    /// Parameter changes for the next block: (id, plain value).
    param_changes: Vec<(ClapId, f64)>,
    /// The instrument's stereo output (empty for the MIDI effect), and its ports.
    audio: Vec<Vec<f32>>,
    audio_ports: AudioPorts,
    /// The loudest sample the plugin has written so far.
    peak: f32,
}

/// Which of the bundle's plugins to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Effect,
    Instrument,
}

impl ClapPlugin {
    fn load(entry: &PluginEntry, which: Which) -> Result<ClapPlugin> {
        let plugin_id = match which {
            Which::Effect => EFFECT_ID,
            Which::Instrument => INSTRUMENT_ID,
        };
        let host = HostInfo::new(
            "continuator-clap-host",
            "Continuator developers",
            "",
            "0.1.0",
        )?;
        let id = CString::new(plugin_id)?;
        let mut instance =
            PluginInstance::<Host>::new(|_| HostShared::default(), |_| (), entry, &id, &host)
                .map_err(|e| anyhow!("instantiating {plugin_id}: {e:?}"))?;
        let config = PluginAudioConfiguration {
            sample_rate: SAMPLE_RATE,
            min_frames_count: 1,
            max_frames_count: BLOCK,
        };
        let processor = instance
            .activate(|_, _| (), config)
            .map_err(|e| anyhow!("activate: {e:?}"))?;
        let processor = processor
            .start_processing()
            .map_err(|e| anyhow!("start_processing: {e:?}"))?;
        let channels = match which {
            Which::Effect => 0,
            Which::Instrument => 2,
        };
        Ok(ClapPlugin {
            instance,
            processor,
            out_events: EventBuffer::with_capacity(1024),
            in_events: EventBuffer::with_capacity(1024),
            param_changes: Vec::new(),
            audio: vec![vec![0.0; BLOCK as usize]; channels],
            audio_ports: AudioPorts::with_capacity(channels, 1),
            peak: 0.0,
        })
    }

    fn params(&mut self) -> Result<PluginParams> {
        self.instance
            .plugin_handle()
            .get_extension()
            .context("the plugin has no CLAP params extension")
    }

    /// Every parameter: (name, id, current plain value), in the plugin's order.
    fn parameters(&mut self) -> Result<Vec<(String, ClapId, f64)>> {
        let params = self.params()?;
        let handle = self.instance.plugin_handle();
        let mut all = Vec::new();
        for index in 0..params.count(&handle) {
            let mut buffer = ParamInfoBuffer::new();
            let info = params
                .get_info(&handle, index, &mut buffer)
                .with_context(|| format!("no info for parameter {index}"))?;
            let name = String::from_utf8_lossy(info.name).into_owned();
            let id = info.id;
            let value = params
                .get_value(&handle, id)
                .with_context(|| format!("no value for parameter {name}"))?;
            all.push((name, id, value));
        }
        Ok(all)
    }

    /// Sets the parameter named `name` to `value` with the next block (as automation would).
    fn set_param(&mut self, name: &str, value: f64) -> Result<()> {
        let id = self
            .parameters()?
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, id, _)| id)
            .with_context(|| format!("the plugin has no parameter named {name:?}"))?;
        self.param_changes.push((id, value));
        Ok(())
    }

    /// Runs the `on_main_thread` callback if the plugin asked for it.
    fn run_main_thread_callback(&mut self) {
        if self
            .instance
            .access_shared_handler(|h| h.callback_requested.swap(false, Ordering::SeqCst))
        {
            self.instance.call_on_main_thread_callback();
        }
    }

    /// Stops processing and deactivates the plugin, then destroys it.
    fn close(self) {
        let ClapPlugin {
            mut instance,
            processor,
            ..
        } = self;
        instance.deactivate(processor.stop_processing());
    }
}

fn transport(block: &Block) -> TransportEvent {
    let mut flags = TransportFlags::HAS_TEMPO
        | TransportFlags::HAS_BEATS_TIMELINE
        | TransportFlags::HAS_TIME_SIGNATURE;
    if block.playing {
        flags |= TransportFlags::IS_PLAYING;
    }
    let bar_length = f64::from(block.numerator) * 4.0 / f64::from(block.denominator);
    let bar_number = (block.position / bar_length).floor();
    TransportEvent {
        header: EventHeader::new_core(0, EventFlags::empty()),
        flags,
        song_pos_beats: BeatTime::from_float(block.position),
        song_pos_seconds: Default::default(),
        tempo: block.bpm,
        tempo_inc: 0.0,
        loop_start_beats: Default::default(),
        loop_end_beats: Default::default(),
        loop_start_seconds: Default::default(),
        loop_end_seconds: Default::default(),
        bar_start: BeatTime::from_float(bar_number * bar_length),
        bar_number: bar_number as i32,
        time_signature_numerator: block.numerator,
        time_signature_denominator: block.denominator,
    }
}

impl scenario::Plugin for ClapPlugin {
    fn process(&mut self, block: &Block, input: &[Edge]) -> Result<Vec<Edge>> {
        self.in_events.clear();
        for (id, value) in self.param_changes.drain(..) {
            self.in_events
                .push(&ParamValueEvent::new(0, id, Pckn::match_all(), value));
        }
        for edge in input {
            let pckn = Pckn::new(
                0u16,
                u16::from(edge.channel),
                u16::from(edge.key),
                Pckn::match_all().note_id,
            );
            if edge.on {
                self.in_events.push(&NoteOnEvent::new(edge.time, pckn, 0.8));
            } else {
                self.in_events
                    .push(&NoteOffEvent::new(edge.time, pckn, 0.0));
            }
        }
        self.out_events.clear();
        // No audio inputs, but the frame count is real: it comes from these empty buffer lists.
        // SAFETY: there are no buffers to point at, so none can be invalid.
        let inputs = unsafe { InputAudioBuffers::from_raw_buffers(&[], block.frames) };
        let transport = transport(block);
        if self.audio.is_empty() {
            let mut no_outputs = [];
            // SAFETY: as above.
            let mut outputs =
                unsafe { OutputAudioBuffers::from_raw_buffers(&mut no_outputs, block.frames) };
            self.processor
                .process(
                    &inputs,
                    &mut outputs,
                    &self.in_events.as_input(),
                    &mut self.out_events.as_output(),
                    None,
                    Some(&transport),
                )
                .map_err(|e| anyhow!("process: {e:?}"))?;
        } else {
            let frames = block.frames as usize;
            for channel in &mut self.audio {
                // Garbage the plugin must overwrite.
                channel.clear();
                channel.resize(frames, 0.5);
            }
            let mut outputs = self.audio_ports.with_output_buffers([AudioPortBuffer {
                latency: 0,
                channels: AudioPortBufferType::f32_output_only(
                    self.audio.iter_mut().map(|c| c.as_mut_slice()),
                ),
            }]);
            self.processor
                .process(
                    &inputs,
                    &mut outputs,
                    &self.in_events.as_input(),
                    &mut self.out_events.as_output(),
                    None,
                    Some(&transport),
                )
                .map_err(|e| anyhow!("process: {e:?}"))?;
            let peak = self
                .audio
                .iter()
                .flatten()
                .fold(0.0f32, |peak, s| peak.max(s.abs()));
            self.peak = self.peak.max(peak);
        }
        let mut edges = Vec::new();
        for event in self.out_events.iter() {
            if let Some(on) = event.as_event::<NoteOnEvent>() {
                edges.push(note_edge(on.header().time(), on.pckn(), true)?);
            } else if let Some(off) = event.as_event::<NoteOffEvent>() {
                edges.push(note_edge(off.header().time(), off.pckn(), false)?);
            } else if let Some(midi) = event.as_event::<MidiEvent>() {
                let [status, key, velocity] = midi.data();
                let on = status & 0xF0 == 0x90 && velocity > 0;
                if status & 0xE0 == 0x80 {
                    edges.push(Edge {
                        time: midi.header().time(),
                        channel: status & 0x0F,
                        key,
                        on,
                    });
                }
            }
        }
        Ok(edges)
    }
}

fn note_edge(time: u32, pckn: Pckn, on: bool) -> Result<Edge> {
    let channel = pckn
        .channel
        .into_specific()
        .context("note without channel")?;
    let key = pckn.key.into_specific().context("note without key")?;
    Ok(Edge {
        time,
        channel: channel as u8,
        key: key as u8,
        on,
    })
}

/// Removes `flag` and the value after it from `args`, returning the value.
fn take_flag_value(args: &mut Vec<String>, flag: &str) -> Result<Option<String>> {
    let Some(at) = args.iter().position(|a| a == flag) else {
        return Ok(None);
    };
    args.remove(at);
    if at >= args.len() || args[at].starts_with("--") {
        bail!("{flag} needs a value");
    }
    Ok(Some(args.remove(at)))
}

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let editor_dir = take_flag_value(&mut args, "--open-editor")?.map(PathBuf::from);
    let which = match args.iter().position(|a| a == "--instrument") {
        Some(at) => {
            args.remove(at);
            Which::Instrument
        }
        None => Which::Effect,
    };
    let soak_takes = take_flag_value(&mut args, "--soak")?
        .map(|n| n.parse::<u32>().context("--soak needs a number of takes"))
        .transpose()?;
    let roundtrip = match args.iter().position(|a| a == "--state-roundtrip") {
        Some(at) => {
            args.remove(at);
            true
        }
        None => false,
    };
    let path = if args.first().is_some_and(|a| !a.starts_with("--")) {
        args.remove(0)
    } else {
        "target/bundled/Continuator.clap".into()
    };
    let expect = scenario::Expect::from_args(args);
    // SAFETY: loading a plugin runs its code; this is the plugin under test.
    let entry =
        unsafe { PluginEntry::load(&path) }.map_err(|e| anyhow!("loading {path}: {e:?}"))?;
    if let Some(dir) = editor_dir {
        if expect != scenario::Expect::Anything {
            bail!("--open-editor checks the editor only; play the scenarios in a separate run");
        }
        let result = editor::check_all(|| ClapPlugin::load(&entry, which), &dir);
        // baseview's X11 threads can still be winding down just after their editors are
        // destroyed (they log "X11 thread disconnected"). A DAW keeps running after it closes an
        // editor; this host exits at once, and tearing the process down under those threads
        // (unloading the plugin's library, then the X and GL libraries' exit handlers) crashed it
        // under load after the checks had passed. So the library stays loaded, and the process
        // ends without running exit handlers once the verdict is printed.
        std::mem::forget(entry);
        let code = match result {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("Error: {e:?}");
                1
            }
        };
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // SAFETY: `_exit` ends the process immediately; everything this host writes has been
        // flushed above, and nothing else of it needs to run.
        unsafe { libc::_exit(code) }
    }
    if roundtrip {
        return state::roundtrip(|| ClapPlugin::load(&entry, which));
    }
    if let Some(takes) = soak_takes {
        return soak::soak(ClapPlugin::load(&entry, which)?, takes);
    }
    scenario::play_all(|| ClapPlugin::load(&entry, which), expect)?;
    if which == Which::Instrument {
        // With the preview off (its default) the instrument's output is silence; with it on,
        // the notes it sends out are heard.
        let mut plugin = ClapPlugin::load(&entry, which)?;
        scenario::play(&mut plugin, 120.0, 4, scenario::Twist::TempoChange, expect)?;
        ensure!(
            plugin.peak == 0.0,
            "the instrument's output is not silent with the preview off (peak {})",
            plugin.peak
        );
        plugin.set_param("Preview tone", 1.0)?;
        scenario::play(&mut plugin, 120.0, 4, scenario::Twist::TempoChange, expect)?;
        ensure!(
            plugin.peak > 0.01,
            "the instrument's preview tone is silent (peak {})",
            plugin.peak
        );
        println!(
            "instrument: silent with the preview off, peak {:.3} with it on",
            plugin.peak
        );
        plugin.close();
    }
    Ok(())
}
