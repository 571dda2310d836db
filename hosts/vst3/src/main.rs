//! A headless VST3 host for Continuator: loads `Continuator.vst3`, runs the scenarios
//! (120 BPM in 4/4 and 90 BPM in 3/4, with a tempo change and a loop jump) and fails loudly if
//! MIDI does not pass through, a continuation is off its bar line or grid, or a note hangs.
//!
//! `cargo run -p continuator-vst3-host -- target/bundled/Continuator.vst3`; add
//! `--require-continuation` for a `test-continuer` build (a scripted continuation that must start
//! exactly on the bar line) or `--model-continuation` for a build with the model (a continuation
//! must come, on or after the bar line), so that silence counts as a failure. `--instrument` loads
//! *Continuator Instrument* from the same bundle (an instrument with a stereo output, which this
//! host provides and checks stays silent; the same MIDI out).

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::Mutex;

use anyhow::{anyhow, bail, ensure, Context, Result};
use continuator_host_scenario::{self as scenario, Block, Edge, BLOCK, SAMPLE_RATE};
use vst3::Steinberg::Vst::ProcessContext_::StatesAndFlags_::*;
use vst3::Steinberg::Vst::*;
use vst3::Steinberg::*;
use vst3::{Class, ComPtr, ComWrapper, Interface};

/// The host's side of the event lists the plugin reads from and writes to.
struct EventList {
    events: Mutex<Vec<Event>>,
}

impl Class for EventList {
    type Interfaces = (IEventList,);
}

impl IEventListTrait for EventList {
    unsafe fn getEventCount(&self) -> int32 {
        self.events.lock().map(|e| e.len() as int32).unwrap_or(0)
    }

    unsafe fn getEvent(&self, index: int32, e: *mut Event) -> tresult {
        let events = self.events.lock().unwrap();
        match events.get(index as usize) {
            Some(event) if !e.is_null() => {
                // SAFETY: the caller passes a valid pointer to write one event into.
                unsafe { *e = *event };
                kResultOk
            }
            _ => kInvalidArgument,
        }
    }

    unsafe fn addEvent(&self, e: *mut Event) -> tresult {
        if e.is_null() {
            return kInvalidArgument;
        }
        // SAFETY: the caller passes a valid event.
        self.events.lock().unwrap().push(unsafe { *e });
        kResultOk
    }
}

struct Vst3Plugin {
    /// Keeps the shared library loaded for as long as the plugin lives.
    _library: libloading::Library,
    component: ComPtr<IComponent>,
    processor: ComPtr<IAudioProcessor>,
    inputs: ComWrapper<EventList>,
    outputs: ComWrapper<EventList>,
    /// The instrument's stereo output (empty for the MIDI effect).
    audio: Vec<Vec<f32>>,
    /// The loudest sample the plugin has written.
    peak: f32,
}

/// The class names of the bundle's two plugins.
const EFFECT: &str = "Continuator";
const INSTRUMENT: &str = "Continuator Instrument";

/// The shared library inside a bundle (`Contents/x86_64-linux/Continuator.so` on Linux).
fn library_path(bundle: &Path) -> Result<PathBuf> {
    let arch = format!("{}-linux", std::env::consts::ARCH);
    let dir = bundle.join("Contents").join(arch);
    let entry = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .find(|e| e.path().extension().is_some_and(|x| x == "so"))
        .context("no .so in the bundle")?;
    Ok(entry.path())
}

fn check(result: tresult, what: &str) -> Result<()> {
    ensure!(
        result == kResultOk || result == kResultTrue,
        "{what} failed ({result})"
    );
    Ok(())
}

impl Vst3Plugin {
    fn load(bundle: &Path, class: &str) -> Result<Vst3Plugin> {
        // SAFETY: loading the plugin runs its code; this is the plugin under test.
        let library = unsafe { libloading::Library::new(library_path(bundle)?)? };
        // SAFETY: these are the VST3 module entry points' signatures on Linux.
        let factory = unsafe {
            let module_entry =
                library.get::<unsafe extern "C" fn(*mut c_void) -> bool>(b"ModuleEntry")?;
            ensure!(module_entry(ptr::null_mut()), "ModuleEntry failed");
            let get_factory =
                library.get::<unsafe extern "system" fn() -> *mut c_void>(b"GetPluginFactory")?;
            ComPtr::from_raw(get_factory() as *mut IPluginFactory).context("no plugin factory")?
        };
        let mut cid = None;
        // SAFETY: plain calls into the factory with valid out-pointers.
        unsafe {
            for index in 0..factory.countClasses() {
                let mut info: PClassInfo = std::mem::zeroed();
                check(factory.getClassInfo(index, &mut info), "getClassInfo")?;
                let category: Vec<u8> = info
                    .category
                    .iter()
                    .take_while(|&&c| c != 0)
                    .map(|&c| c as u8)
                    .collect();
                let name: Vec<u8> = info
                    .name
                    .iter()
                    .take_while(|&&c| c != 0)
                    .map(|&c| c as u8)
                    .collect();
                if category == b"Audio Module Class" && name == class.as_bytes() {
                    cid = Some(info.cid);
                }
            }
        }
        let cid = cid.with_context(|| format!("no audio module class {class:?} in the factory"))?;
        let mut object: *mut c_void = ptr::null_mut();
        // SAFETY: cid and iid are 16-byte ids, object receives an owned reference.
        let component = unsafe {
            check(
                factory.createInstance(
                    cid.as_ptr(),
                    IComponent::IID.as_ptr() as FIDString,
                    &mut object,
                ),
                "createInstance",
            )?;
            ComPtr::from_raw(object as *mut IComponent).context("null component")?
        };
        let processor = component
            .cast::<IAudioProcessor>()
            .context("no IAudioProcessor")?;
        // SAFETY: the standard setup sequence with valid arguments.
        unsafe {
            check(component.initialize(ptr::null_mut()), "initialize")?;
            let mut setup = ProcessSetup {
                processMode: ProcessModes_::kRealtime as int32,
                symbolicSampleSize: SymbolicSampleSizes_::kSample32 as int32,
                maxSamplesPerBlock: BLOCK as int32,
                sampleRate: SAMPLE_RATE,
            };
            check(processor.setupProcessing(&mut setup), "setupProcessing")?;
            for dir in [BusDirections_::kInput, BusDirections_::kOutput] {
                let buses =
                    component.getBusCount(MediaTypes_::kEvent as MediaType, dir as BusDirection);
                ensure!(buses == 1, "expected one event bus each way, found {buses}");
                check(
                    component.activateBus(
                        MediaTypes_::kEvent as MediaType,
                        dir as BusDirection,
                        0,
                        1,
                    ),
                    "activateBus",
                )?;
            }
            let audio_outputs = component.getBusCount(
                MediaTypes_::kAudio as MediaType,
                BusDirections_::kOutput as BusDirection,
            );
            for bus in 0..audio_outputs {
                check(
                    component.activateBus(
                        MediaTypes_::kAudio as MediaType,
                        BusDirections_::kOutput as BusDirection,
                        bus,
                        1,
                    ),
                    "activateBus (audio)",
                )?;
            }
            check(component.setActive(1), "setActive")?;
            check(processor.setProcessing(1), "setProcessing")?;
        }
        let list = || {
            ComWrapper::new(EventList {
                events: Mutex::new(Vec::with_capacity(1024)),
            })
        };
        // SAFETY: a plain query.
        let audio_outputs = unsafe {
            component.getBusCount(
                MediaTypes_::kAudio as MediaType,
                BusDirections_::kOutput as BusDirection,
            )
        };
        let channels = if class == INSTRUMENT { 2 } else { 0 };
        ensure!(
            audio_outputs == i32::from(channels > 0),
            "{class} has {audio_outputs} audio output buses"
        );
        Ok(Vst3Plugin {
            _library: library,
            component,
            processor,
            inputs: list(),
            outputs: list(),
            audio: vec![vec![0.0; BLOCK as usize]; channels],
            peak: 0.0,
        })
    }
}

impl Drop for Vst3Plugin {
    fn drop(&mut self) {
        // SAFETY: the standard teardown sequence.
        unsafe {
            self.processor.setProcessing(0);
            self.component.setActive(0);
            self.component.terminate();
        }
    }
}

fn note_event(edge: &Edge) -> Event {
    let mut event = Event {
        busIndex: 0,
        sampleOffset: edge.time as int32,
        ppqPosition: 0.0,
        flags: Event_::EventFlags_::kIsLive as uint16,
        r#type: Event_::EventTypes_::kNoteOnEvent as uint16,
        __field0: Event__type0 {
            noteOn: NoteOnEvent {
                channel: edge.channel.into(),
                pitch: edge.key.into(),
                tuning: 0.0,
                velocity: 0.8,
                length: 0,
                noteId: -1,
            },
        },
    };
    if !edge.on {
        event.r#type = Event_::EventTypes_::kNoteOffEvent as uint16;
        event.__field0 = Event__type0 {
            noteOff: NoteOffEvent {
                channel: edge.channel.into(),
                pitch: edge.key.into(),
                velocity: 0.0,
                noteId: -1,
                tuning: 0.0,
            },
        };
    }
    event
}

impl scenario::Plugin for Vst3Plugin {
    fn process(&mut self, block: &Block, input: &[Edge]) -> Result<Vec<Edge>> {
        *self.inputs.events.lock().unwrap() = input.iter().map(note_event).collect();
        self.outputs.events.lock().unwrap().clear();
        let mut state = kTempoValid | kTimeSigValid | kProjectTimeMusicValid | kBarPositionValid;
        if block.playing {
            state |= kPlaying;
        }
        let bar = f64::from(block.numerator) * 4.0 / f64::from(block.denominator);
        // SAFETY: ProcessContext is plain old data; every field the flags mark valid is set.
        let mut context: ProcessContext = unsafe { std::mem::zeroed() };
        context.state = state as uint32;
        context.sampleRate = SAMPLE_RATE;
        context.projectTimeMusic = block.position;
        context.barPositionMusic = (block.position / bar).floor() * bar;
        context.tempo = block.bpm;
        context.timeSigNumerator = block.numerator.into();
        context.timeSigDenominator = block.denominator.into();
        let inputs = self
            .inputs
            .to_com_ptr::<IEventList>()
            .context("input list")?;
        let outputs = self
            .outputs
            .to_com_ptr::<IEventList>()
            .context("output list")?;
        // The instrument's stereo output, filled with garbage the plugin must overwrite; the
        // effect has no audio buses, but a real sample count.
        for channel in &mut self.audio {
            channel.clear();
            channel.resize(block.frames as usize, 0.5);
        }
        let mut pointers: Vec<*mut f32> = self.audio.iter_mut().map(|c| c.as_mut_ptr()).collect();
        let mut bus = AudioBusBuffers {
            numChannels: pointers.len() as int32,
            silenceFlags: 0,
            __field0: AudioBusBuffers__type0 {
                channelBuffers32: pointers.as_mut_ptr(),
            },
        };
        let outputs_audio = if self.audio.is_empty() {
            ptr::null_mut()
        } else {
            &mut bus as *mut AudioBusBuffers
        };
        let mut data = ProcessData {
            processMode: ProcessModes_::kRealtime as int32,
            symbolicSampleSize: SymbolicSampleSizes_::kSample32 as int32,
            numSamples: block.frames as int32,
            numInputs: 0,
            numOutputs: i32::from(!self.audio.is_empty()),
            inputs: ptr::null_mut(),
            outputs: outputs_audio,
            inputParameterChanges: ptr::null_mut(),
            outputParameterChanges: ptr::null_mut(),
            inputEvents: inputs.as_ptr(),
            outputEvents: outputs.as_ptr(),
            processContext: &mut context,
        };
        // SAFETY: every pointer in `data` is valid for the duration of the call.
        check(unsafe { self.processor.process(&mut data) }, "process")?;
        let peak = self
            .audio
            .iter()
            .flatten()
            .fold(0.0f32, |peak, s| peak.max(s.abs()));
        self.peak = self.peak.max(peak);
        let mut edges = Vec::new();
        for event in self.outputs.events.lock().unwrap().iter() {
            // SAFETY: the union member read is the one the event's type names.
            let (channel, key, on) = unsafe {
                match event.r#type {
                    t if t == Event_::EventTypes_::kNoteOnEvent as uint16 => (
                        event.__field0.noteOn.channel,
                        event.__field0.noteOn.pitch,
                        true,
                    ),
                    t if t == Event_::EventTypes_::kNoteOffEvent as uint16 => (
                        event.__field0.noteOff.channel,
                        event.__field0.noteOff.pitch,
                        false,
                    ),
                    _ => continue,
                }
            };
            if !(0..16).contains(&channel) || !(0..128).contains(&key) {
                bail!("malformed note event: channel {channel}, key {key}");
            }
            edges.push(Edge {
                time: event.sampleOffset as u32,
                channel: channel as u8,
                key: key as u8,
                on,
            });
        }
        Ok(edges)
    }
}

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let class = match args.iter().position(|a| a == "--instrument") {
        Some(at) => {
            args.remove(at);
            INSTRUMENT
        }
        None => EFFECT,
    };
    let path = if args.first().is_some_and(|a| !a.starts_with("--")) {
        PathBuf::from(args.remove(0))
    } else {
        PathBuf::from("target/bundled/Continuator.vst3")
    };
    let expect = scenario::Expect::from_args(args);
    let load =
        || Vst3Plugin::load(&path, class).map_err(|e| anyhow!("loading {}: {e:#}", path.display()));
    scenario::play_all(load, expect)?;
    if class == INSTRUMENT {
        // The preview is off by default: the instrument's output is silence.
        let mut plugin = load()?;
        scenario::play(&mut plugin, 120.0, 4, scenario::Twist::LoopJump, expect)?;
        ensure!(
            plugin.peak == 0.0,
            "the instrument's output is not silent (peak {})",
            plugin.peak
        );
        println!("instrument: MIDI out as the effect's, audio out silent");
    }
    Ok(())
}
