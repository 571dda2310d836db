//! The inference thread: listens to what the musician plays, decides when to continue, asks the
//! [`Continuer`] for a take and streams its notes to the audio thread as they are sampled.
//!
//! It runs on its own thread so the model may take its time without the audio thread ever
//! waiting. Its clock is the transport the audio thread publishes every block: a note whose onset
//! has already passed when it is sampled is dropped (and counted), never played late.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use engine::steering::Steering;
use engine::time::{Beats, GridTicks};
use rtrb::{Consumer, Producer};

use crate::capture::CapturedNote;
use crate::continuer::{ContinueError, ContinueRequest, Continuer};
use crate::memory::PlayingMemory;
use crate::params::{Mode, SavedNote, StartParam};
use crate::phrase::Phrase;
use crate::scheduler::ScheduledNote;
use crate::shared::{Counters, Shared, TakeId, TransportView, NO_TAKE};
use crate::status::ModelState;

/// The parameters the inference thread needs, read afresh on every poll.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Knobs {
    pub mode: Mode,
    pub listen_bars: u32,
    pub continue_bars: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub variations: u32,
    pub start: StartParam,
    /// In Auto mode, the pause after which the continuation comes.
    pub auto_silence: Beats,
    pub steering: Steering,
    /// The "clear memory" button: its rising edge forgets the playing memory.
    pub clear_memory: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            mode: Mode::Auto,
            listen_bars: 4,
            continue_bars: 4,
            temperature: 1.0,
            top_p: 0.95,
            variations: 4,
            start: StartParam::NextBar,
            auto_silence: Beats(1.0),
            steering: Steering::default(),
            clear_memory: false,
        }
    }
}

/// Reads the current [`Knobs`] (from the plugin's parameters, or from a test).
pub type KnobSource = Box<dyn Fn() -> Knobs + Send>;

/// Loads the model; runs on the inference thread so loading never stalls the host.
pub type Loader = Box<dyn FnOnce() -> Result<Box<dyn Continuer>, ContinueError> + Send>;

/// Why a continuation was asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ask {
    /// A manual trigger at this position.
    Trigger(Beats),
    /// Auto mode: the musician paused.
    Pause,
}

pub struct Inference {
    shared: Arc<Shared>,
    captured: Consumer<CapturedNote>,
    playback: Producer<ScheduledNote>,
    knobs: KnobSource,
    continuer: Option<Box<dyn Continuer>>,
    phrase: Phrase,
    /// Only notes from here on count towards Auto mode's "played at least N bars".
    phrase_start: Beats,
    served_triggers: u32,
    last_view: Option<TransportView>,
    /// The last finished bar whose prime went to [`Continuer::listening`].
    last_prefilled_bar: Option<i64>,
    takes_started: u32,
    current_take: TakeId,
    /// Where the current take's span ends; Auto mode waits for it.
    take_end: Beats,
    last_take: Arc<RwLock<Vec<SavedNote>>>,
    memory: PlayingMemory,
    /// The clear-memory button as last seen, to act on its rising edge only.
    clear_pressed: bool,
}

impl Inference {
    pub fn new(
        shared: Arc<Shared>,
        captured: Consumer<CapturedNote>,
        playback: Producer<ScheduledNote>,
        knobs: KnobSource,
        last_take: Arc<RwLock<Vec<SavedNote>>>,
        playing_memory: Arc<RwLock<Vec<SavedNote>>>,
    ) -> Self {
        let served_triggers = shared.triggers.load(Ordering::Acquire);
        Inference {
            shared,
            captured,
            playback,
            knobs,
            continuer: None,
            phrase: Phrase::default(),
            phrase_start: Beats::ZERO,
            served_triggers,
            last_view: None,
            last_prefilled_bar: None,
            takes_started: 0,
            current_take: NO_TAKE,
            take_end: Beats::ZERO,
            last_take,
            memory: PlayingMemory::new(playing_memory),
            clear_pressed: false,
        }
    }

    /// Loads the model, reporting the outcome in the GUI status. Without a model the plugin keeps
    /// listening and passing MIDI through, but never generates.
    pub fn load(&mut self, loader: Loader) {
        self.shared.model.set_state(ModelState::Loading);
        match loader() {
            Ok(continuer) => {
                self.continuer = Some(continuer);
                self.shared.model.set_message("");
                self.shared.model.set_state(ModelState::Ready);
            }
            Err(err) => self.shared.model.fail(err.to_string()),
        }
    }

    /// Does whatever is due: takes in captured notes, follows the transport, serves a trigger or
    /// an Auto-mode pause. Returns whether a continuation was generated.
    pub fn poll(&mut self) -> bool {
        while let Ok(edge) = self.captured.pop() {
            self.phrase.record(edge);
        }
        let view = self.shared.transport.view();
        self.follow_transport(view);
        let knobs = (self.knobs)();
        if knobs.clear_memory && !self.clear_pressed {
            self.memory.clear();
        }
        self.clear_pressed = knobs.clear_memory;
        let bar = view.time_signature.grid_ticks_per_bar();
        for note in self.phrase.take_finished() {
            self.memory.add(&note, bar);
        }
        self.prefill(view);

        let triggers = self.shared.triggers.load(Ordering::Acquire);
        let ask = if triggers != self.served_triggers {
            self.served_triggers = triggers;
            Some(Ask::Trigger(Beats(self.shared.trigger_position.load())))
        } else if self.pause_heard(view) {
            Some(Ask::Pause)
        } else {
            None
        };
        match ask {
            Some(ask) if view.playing => self.continue_phrase(ask, view),
            _ => false,
        }
    }

    fn follow_transport(&mut self, view: TransportView) {
        if let Some(last) = self.last_view {
            let stopped = last.playing && !view.playing;
            let jumped_back = view.playing && view.position.0 < last.position.0 - 1e-6;
            if stopped || jumped_back {
                let now = if stopped {
                    last.position
                } else {
                    view.position
                };
                self.phrase.transport_moved(now);
                self.phrase_start = view.position;
                self.take_end = view.position;
                self.last_prefilled_bar = None;
            }
        }
        if view.playing {
            self.phrase.prune(view.position, view.time_signature);
        }
        self.last_view = Some(view);
    }

    /// Hands each newly finished bar to the continuer for incremental prefill.
    fn prefill(&mut self, view: TransportView) {
        let Some(continuer) = self.continuer.as_mut() else {
            return;
        };
        if !view.playing {
            return;
        }
        let sig = view.time_signature;
        let current = sig.bar_index(view.position);
        if self
            .last_prefilled_bar
            .is_some_and(|bar| bar + 1 >= current)
        {
            return;
        }
        // The window a continuation from the current bar line would listen to: the bars up to
        // the one just finished.
        let listen = (self.knobs)().listen_bars.max(1);
        let prime = self
            .phrase
            .prime(sig, current - i64::from(listen), listen, view.position);
        if !prime.notes.is_empty() {
            continuer.listening(&prime);
        }
        self.last_prefilled_bar = Some(current - 1);
    }

    /// Auto mode: has the musician played at least `listen_bars` bars and then paused?
    fn pause_heard(&mut self, view: TransportView) -> bool {
        let knobs = (self.knobs)();
        if knobs.mode != Mode::Auto || !view.playing || self.phrase.is_holding() {
            return false;
        }
        let take_running = self.current_take != NO_TAKE
            && self.shared.active_take() == self.current_take
            && view.position < self.take_end;
        if take_running {
            return false;
        }
        let Some(last_activity) = self.phrase.last_activity() else {
            return false;
        };
        if view.position.0 - last_activity.0 < knobs.auto_silence.0 {
            return false;
        }
        let sig = view.time_signature;
        let mut notes = self.phrase.notes_since(self.phrase_start);
        let Some(first) = notes.next() else {
            return false;
        };
        let last = notes.last().unwrap_or(first);
        let bars = sig.bar_index(last.onset) - sig.bar_index(first.onset) + 1;
        if bars >= i64::from(knobs.listen_bars) {
            true
        } else {
            // Too short to answer: this pause ends the phrase, the next one starts afresh.
            self.phrase_start = view.position;
            false
        }
    }

    fn continue_phrase(&mut self, ask: Ask, view: TransportView) -> bool {
        let knobs = (self.knobs)();
        let sig = view.time_signature;
        let listen = knobs.listen_bars.max(1);
        let bar_ticks = sig.grid_ticks_per_bar();
        // Where the continuation starts on the timeline, and the first bar of the prime.
        let (start, first_bar) = match ask {
            Ask::Trigger(at) => match knobs.start {
                StartParam::NextBar => {
                    let start = sig.next_bar_line(at);
                    (start, sig.bar_index(start) - i64::from(listen))
                }
                StartParam::Now => {
                    // The first grid position at or after the trigger.
                    let ticks = (at.0 * f64::from(GridTicks::PER_QUARTER) - 1e-6).ceil() as i64;
                    let start = GridTicks(ticks).to_quarters();
                    (start, sig.bar_index(start) - i64::from(listen) + 1)
                }
            },
            Ask::Pause => {
                let last_onset = self
                    .phrase
                    .notes_since(self.phrase_start)
                    .last()
                    .map(|n| n.onset);
                let last_bar = sig.bar_index(last_onset.unwrap_or(view.position));
                (
                    sig.next_bar_line(view.position),
                    last_bar - i64::from(listen) + 1,
                )
            }
        };
        let prime = self.phrase.prime(sig, first_bar, listen, view.position);
        let origin = sig.bar_start(first_bar);
        let length = GridTicks(i64::from(knobs.continue_bars.max(1)) * bar_ticks.0);
        let variation = self.takes_started % knobs.variations.max(1);
        let request = ContinueRequest {
            prime,
            start: GridTicks::from_quarters(start - origin),
            length,
            temperature: knobs.temperature,
            top_p: knobs.top_p,
            seed: u64::from(variation),
            steering: knobs.steering,
            memory: if knobs.steering.faithfulness > 0.0 {
                self.memory.snapshot(bar_ticks)
            } else {
                Vec::new()
            },
        };
        let Some(continuer) = self.continuer.as_mut() else {
            tracing::debug!(?ask, "continuation asked for, but no model is loaded");
            return false;
        };

        self.takes_started = self.takes_started.wrapping_add(1);
        let take = self.takes_started.max(1);
        self.current_take = take;
        self.take_end = start + length.to_quarters();
        self.phrase_start = view.position;
        // Publishing the new take makes the audio thread release whatever the old one left
        // sounding before the first note of this one plays.
        self.shared.active_take.store(take, Ordering::Release);
        self.shared.model.set_state(ModelState::Generating);
        tracing::debug!(
            ?ask,
            take,
            start = start.0,
            notes = request.prime.notes.len(),
            "continuing"
        );

        let shared = &self.shared;
        let playback = &mut self.playback;
        let take_end = request.start.0 + request.length.0;
        let mut saved = Vec::new();
        let mut emit = |note: crate::continuer::GridNote| {
            if shared.active_take() != take || note.onset.0 >= take_end {
                return ControlFlow::Break(());
            }
            let onset = origin + note.onset.to_quarters();
            if onset < shared.transport.view().position {
                Counters::bump(&shared.counters.late_notes);
                return ControlFlow::Continue(());
            }
            let scheduled = ScheduledNote {
                take,
                onset,
                end: onset + GridTicks(note.duration.0.max(1)).to_quarters(),
                key: note.key.min(127),
                velocity: note.velocity.clamp(1, 127),
            };
            saved.push(SavedNote {
                onset: note.onset.0,
                duration: note.duration.0,
                key: scheduled.key,
                velocity: scheduled.velocity,
            });
            // A full queue means the model is far ahead of the playhead: wait for room.
            while playback.push(scheduled).is_err() {
                if shared.active_take() != take {
                    return ControlFlow::Break(());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            ControlFlow::Continue(())
        };
        let result = continuer.continue_phrase(&request, &mut emit);
        match result {
            Ok(()) => {
                self.shared.model.set_state(ModelState::Ready);
                if let Ok(mut last_take) = self.last_take.write() {
                    *last_take = saved;
                }
            }
            Err(err) => {
                tracing::warn!(%err, "continuation failed");
                self.shared.model.set_message(err.to_string());
                self.shared.model.set_state(ModelState::Ready);
                self.shared.cancel_take(take);
            }
        }
        true
    }
}

/// The running inference thread; stopped and joined on drop.
pub struct InferenceThread {
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

/// How often the thread looks for work when idle: well under a 16th note at any tempo.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

impl InferenceThread {
    pub fn spawn(mut inference: Inference, loader: Loader) -> std::io::Result<InferenceThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let shared = inference.shared.clone();
        let handle = std::thread::Builder::new()
            .name("continuator-inference".into())
            .spawn(move || {
                inference.load(loader);
                while !stop_flag.load(Ordering::Acquire) {
                    if !inference.poll() {
                        std::thread::sleep(POLL_INTERVAL);
                    }
                }
            })?;
        Ok(InferenceThread {
            stop,
            shared,
            handle: Some(handle),
        })
    }
}

impl Drop for InferenceThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // A take in progress stops streaming as soon as it is no longer active.
        self.shared.cancel_any_take();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::clock::Tempo;
    use crate::continuer::GridNote;
    use crate::output::{OutNote, OutQueue};
    use crate::realtime::{BlockSettings, Incoming, Processor};
    use crate::scheduler::playback_channel;
    use crate::sounding::MAX_SOUNDING;
    use crate::status::ModelState;
    use crate::transport::HostTransport;
    use engine::time::TimeSignature;

    /// Plays an eighth-note run from the requested start, and remembers what it was asked.
    struct Scripted {
        requests: Arc<Mutex<Vec<ContinueRequest>>>,
        /// Extra notes to emit first, at these onsets (ticks from the prime's first bar line).
        early: Vec<i64>,
    }

    impl Continuer for Scripted {
        fn continue_phrase(
            &mut self,
            request: &ContinueRequest,
            emit: &mut dyn FnMut(GridNote) -> ControlFlow<()>,
        ) -> Result<(), ContinueError> {
            self.requests.lock().unwrap().push(request.clone());
            let early = self.early.iter().map(|&t| GridTicks(t));
            let run = (0..).map(|i| GridTicks(request.start.0 + i * 6));
            for onset in early.chain(run) {
                let note = GridNote {
                    onset,
                    duration: GridTicks(5),
                    key: 72,
                    velocity: 80,
                };
                if emit(note).is_break() {
                    break;
                }
            }
            Ok(())
        }
    }

    const RATE: f32 = 48_000.0;
    const BLOCK: u32 = 480;

    struct Rig {
        processor: Processor,
        inference: Inference,
        shared: Arc<Shared>,
        knobs: Arc<Mutex<Knobs>>,
        requests: Arc<Mutex<Vec<ContinueRequest>>>,
        out: OutQueue<OutNote>,
        settings: BlockSettings,
        bpm: f64,
        sig: TimeSignature,
        position: f64,
        playing: bool,
        samples: u64,
        /// Generated NoteOns with their absolute sample.
        ons: Vec<u64>,
        offs: usize,
    }

    impl Rig {
        fn new(bpm: f64, sig: TimeSignature, early: Vec<i64>, with_model: bool) -> Rig {
            let requests = Arc::new(Mutex::new(Vec::new()));
            let continuer = Scripted {
                requests: requests.clone(),
                early,
            };
            let loader: Loader = if with_model {
                Box::new(move || Ok(Box::new(continuer) as Box<dyn Continuer>))
            } else {
                Box::new(|| {
                    let dir = std::path::PathBuf::from("/nonexistent/continuator-model");
                    let source = crate::engine_continuer::ModelSource::Dir(dir);
                    let continuer = crate::engine_continuer::EngineContinuer::load(&source, None)?;
                    Ok(Box::new(continuer) as Box<dyn Continuer>)
                })
            };
            let mut rig = Rig::with_loader(bpm, sig, loader);
            rig.requests = requests;
            rig
        }

        fn with_loader(bpm: f64, sig: TimeSignature, loader: Loader) -> Rig {
            let shared = Arc::new(Shared::default());
            let (tx, rx) = playback_channel();
            let (processor, captured) = Processor::new(rx, shared.clone());
            let knobs = Arc::new(Mutex::new(Knobs::default()));
            let source = knobs.clone();
            let mut inference = Inference::new(
                shared.clone(),
                captured,
                tx,
                Box::new(move || *source.lock().unwrap()),
                Arc::new(RwLock::new(Vec::new())),
                Arc::new(RwLock::new(Vec::new())),
            );
            let requests = Arc::new(Mutex::new(Vec::new()));
            inference.load(loader);
            Rig {
                processor,
                inference,
                shared,
                knobs,
                requests,
                out: OutQueue::with_capacity(2048, MAX_SOUNDING),
                settings: BlockSettings::default(),
                bpm,
                sig,
                position: 0.0,
                playing: true,
                samples: 0,
                ons: Vec::new(),
                offs: 0,
            }
        }

        fn samples_per_beat(&self) -> f64 {
            f64::from(RATE) * 60.0 / self.bpm
        }

        /// One block, with the musician's notes given as (beat, key, on) that fall inside it.
        fn block(&mut self, musician: &[(f64, u8, bool)]) {
            let host = HostTransport {
                playing: self.playing,
                position: Some(Beats(self.position)),
                tempo: Tempo::from_bpm(self.bpm),
                time_signature: Some(self.sig),
                sample_rate: RATE,
                len: BLOCK,
            };
            self.processor
                .begin_block(&host, &self.settings, &mut self.out);
            let spb = self.samples_per_beat();
            for &(beat, key, on) in musician {
                let offset = ((beat - self.position) * spb).round();
                if self.playing && offset >= 0.0 && offset < f64::from(BLOCK) {
                    let timing = offset as u32;
                    let event = if on {
                        Incoming::NoteOn {
                            timing,
                            channel: 0,
                            key,
                            velocity: 0.7,
                        }
                    } else {
                        Incoming::NoteOff {
                            timing,
                            channel: 0,
                            key,
                        }
                    };
                    self.processor.input(event, &self.settings, &mut self.out);
                }
            }
            self.processor.end_block(&self.settings, &mut self.out);
            let mut events = Vec::new();
            self.out.drain_sorted(|e| events.push(e));
            for e in events {
                match e {
                    OutNote::On { timing, .. } => self.ons.push(self.samples + u64::from(timing)),
                    OutNote::Off { .. } => self.offs += 1,
                }
            }
            if self.playing {
                self.position += f64::from(BLOCK) / spb;
            }
            self.samples += u64::from(BLOCK);
            self.inference.poll();
        }

        fn run_until(&mut self, beat: f64, musician: &[(f64, u8, bool)]) {
            while self.position < beat {
                self.block(musician);
            }
        }
    }

    /// Four bars of quarter notes (each half a beat long) from beat 0.
    fn four_bars(sig: TimeSignature) -> Vec<(f64, u8, bool)> {
        let beats = (4.0 * sig.quarters_per_bar().0) as usize;
        (0..beats)
            .flat_map(|b| {
                [
                    (b as f64, 60 + (b % 5) as u8, true),
                    (b as f64 + 0.5, 60 + (b % 5) as u8, false),
                ]
            })
            .collect()
    }

    #[test]
    fn the_playing_memory_grows_with_what_is_played_reaches_requests_and_clears() {
        let sig = TimeSignature::default();
        let mut rig = Rig::new(120.0, sig, Vec::new(), true);
        rig.knobs.lock().unwrap().steering.faithfulness = 0.5;
        let played = four_bars(sig);
        let bar = sig.quarters_per_bar().0;
        rig.run_until(8.0 * bar, &played);
        let requests = rig.requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 1);
        let memory = &requests[0].memory;
        assert_eq!(
            memory.len(),
            played.len() / 2,
            "every played note is remembered"
        );
        assert_eq!(memory[0].onset, GridTicks(0));
        assert_eq!(requests[0].steering.faithfulness, 0.5);
        assert_eq!(rig.inference.memory.len(), played.len() / 2);
        // The button's rising edge forgets it all, once.
        rig.knobs.lock().unwrap().clear_memory = true;
        rig.block(&[]);
        assert_eq!(rig.inference.memory.len(), 0);
        let at = rig.position;
        rig.run_until(at + 1.0, &[(at + 0.1, 64, true), (at + 0.5, 64, false)]);
        assert_eq!(
            rig.inference.memory.len(),
            1,
            "held button: no second clear"
        );
    }

    fn auto_scenario(bpm: f64, sig: TimeSignature) {
        let mut rig = Rig::new(bpm, sig, Vec::new(), true);
        let played = four_bars(sig);
        let bar = sig.quarters_per_bar().0;
        rig.run_until(8.0 * bar, &played);
        let requests = rig.requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 1, "one continuation after the pause");
        let request = &requests[0];
        assert_eq!(request.prime.bars, 4);
        assert_eq!(request.prime.notes.len(), played.len() / 2);
        assert_eq!(request.prime.time_signature, sig);
        // Last note ends half a beat into the last beat of bar 4; one beat of silence later is
        // still inside bar 5, so the continuation starts on the line of bar 6 (index 5).
        assert_eq!(request.start, GridTicks(5 * sig.grid_ticks_per_bar().0));
        assert_eq!(request.length, GridTicks(4 * sig.grid_ticks_per_bar().0));
        let spb = rig.samples_per_beat();
        let first = (5.0 * bar * spb).round() as u64;
        assert_eq!(
            rig.ons.first().copied(),
            Some(first),
            "starts on the next bar line"
        );
        for (i, &on) in rig.ons.iter().enumerate() {
            // Eighth notes on the grid: every half beat, at the exact sample.
            assert_eq!(on, first + (i as f64 * 0.5 * spb).round() as u64);
        }
        rig.playing = false;
        rig.block(&[]);
        assert_eq!(
            rig.ons.len(),
            rig.offs,
            "NoteOn/NoteOff balance is zero after stop"
        );
    }

    #[test]
    fn auto_mode_answers_on_the_next_bar_line_in_four_four() {
        auto_scenario(120.0, TimeSignature::new(4, 4).unwrap());
    }

    #[test]
    fn auto_mode_answers_on_the_next_bar_line_in_three_four() {
        auto_scenario(90.0, TimeSignature::new(3, 4).unwrap());
    }

    #[test]
    fn short_phrases_get_no_answer() {
        let mut rig = Rig::new(120.0, TimeSignature::default(), Vec::new(), true);
        let played: Vec<_> = four_bars(TimeSignature::default())
            .into_iter()
            .take(8)
            .collect();
        rig.run_until(24.0, &played);
        assert!(rig.requests.lock().unwrap().is_empty());
        assert!(rig.ons.is_empty());
    }

    #[test]
    fn manual_trigger_continues_from_the_next_bar() {
        let mut rig = Rig::new(120.0, TimeSignature::default(), Vec::new(), true);
        rig.knobs.lock().unwrap().mode = Mode::Manual;
        rig.knobs.lock().unwrap().listen_bars = 2;
        // Two bars, so the musician is not playing over the continuation.
        let played: Vec<_> = four_bars(TimeSignature::default())
            .into_iter()
            .take(16)
            .collect();
        rig.run_until(9.0, &played);
        assert!(
            rig.requests.lock().unwrap().is_empty(),
            "manual mode waits for the trigger"
        );
        rig.settings.trigger = true;
        rig.block(&played);
        rig.settings.trigger = false;
        rig.run_until(14.0, &played);
        let request = rig.requests.lock().unwrap()[0].clone();
        // Triggered in bar 3 (beats 8..12): prime is bars 1-2, the continuation starts at beat 12.
        assert_eq!(request.prime.bars, 2);
        assert_eq!(request.start, GridTicks(2 * 48));
        assert_eq!(
            request.prime.notes.first().map(|n| n.onset),
            Some(GridTicks(0))
        );
        assert_eq!(rig.ons.first().copied(), Some(12 * 24_000));
    }

    #[test]
    fn late_notes_are_dropped_and_counted() {
        // The fake first "samples" two notes at the prime's start, long gone by the time it runs.
        let mut rig = Rig::new(120.0, TimeSignature::default(), vec![0, 6], true);
        let played = four_bars(TimeSignature::default());
        rig.run_until(28.0, &played);
        assert_eq!(rig.shared.counters.late_notes.load(Ordering::Relaxed), 2);
        assert_eq!(rig.ons.first().copied(), Some(20 * 24_000));
    }

    #[test]
    fn playing_over_the_continuation_stops_it() {
        let mut rig = Rig::new(120.0, TimeSignature::default(), Vec::new(), true);
        let mut played = four_bars(TimeSignature::default());
        played.push((21.0, 50, true));
        played.push((21.2, 50, false));
        rig.run_until(30.0, &played);
        // Eighths from beat 20 until the musician came in at beat 21: two notes.
        assert_eq!(rig.ons.len(), 2);
        assert_eq!(rig.ons.len(), rig.offs);
    }

    #[test]
    fn tempo_change_mid_continuation_keeps_notes_on_beats() {
        let mut rig = Rig::new(120.0, TimeSignature::default(), Vec::new(), true);
        let played = four_bars(TimeSignature::default());
        rig.run_until(21.0, &played);
        let before = rig.ons.len();
        let change_sample = rig.samples;
        let change_beat = rig.position;
        rig.bpm = 60.0;
        rig.run_until(24.0, &played);
        let after: Vec<u64> = rig.ons[before..].to_vec();
        assert!(!after.is_empty());
        for on in after {
            let beat = change_beat + (on - change_sample) as f64 / rig.samples_per_beat();
            let on_grid = (beat * 2.0).round() / 2.0;
            assert!(
                (beat - on_grid).abs() * rig.samples_per_beat() <= 1.0,
                "note at beat {beat}"
            );
        }
    }

    #[test]
    fn without_a_model_nothing_is_generated_and_the_status_says_why() {
        let mut rig = Rig::new(120.0, TimeSignature::default(), Vec::new(), false);
        assert_eq!(rig.shared.model.state(), ModelState::Failed);
        assert!(rig
            .shared
            .model
            .message()
            .contains("no model at /nonexistent"));
        let played = four_bars(TimeSignature::default());
        rig.run_until(28.0, &played);
        assert!(rig.ons.is_empty());
    }

    #[test]
    fn the_engine_answers_on_the_grid_after_the_bar_line() {
        for (bpm, sig) in [
            (120.0, TimeSignature::new(4, 4).unwrap()),
            (90.0, TimeSignature::new(3, 4).unwrap()),
        ] {
            let loader: Loader = Box::new(|| {
                let model = crate::engine_continuer::testing::tiny_model();
                let continuer = crate::engine_continuer::EngineContinuer::from_model(model)
                    .map_err(|e| ContinueError::NoModel(e.to_string()))?;
                Ok(Box::new(continuer) as Box<dyn Continuer>)
            });
            let mut rig = Rig::with_loader(bpm, sig, loader);
            assert_eq!(rig.shared.model.state(), ModelState::Ready);
            let played = four_bars(sig);
            let bar = sig.quarters_per_bar().0;
            rig.run_until(10.0 * bar, &played);
            let spb = rig.samples_per_beat();
            let start = (5.0 * bar * spb).round() as u64;
            let end = (9.0 * bar * spb).round() as u64;
            assert!(!rig.ons.is_empty(), "the model played in {sig:?}");
            for &on in &rig.ons {
                assert!(
                    (start..end).contains(&on),
                    "onset at {on} outside bars 6-9 in {sig:?}"
                );
                let ticks = (on - start) as f64 / spb * 12.0;
                assert!(
                    (ticks - ticks.round()).abs() * spb / 12.0 <= 1.0,
                    "onset at {on} off the grid"
                );
            }
            rig.playing = false;
            rig.block(&[]);
            assert_eq!(rig.ons.len(), rig.offs, "balance after stop in {sig:?}");
        }
    }
}
