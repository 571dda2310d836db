//! The inference thread: listens to what the musician plays, decides when to continue, asks the
//! [`Continuer`] for a take and streams its notes to the audio thread as they are sampled.
//!
//! It runs on its own thread so the model may take its time without the audio thread ever
//! waiting. Its clock is the transport the audio thread publishes every block: a note whose onset
//! has already passed when it is sampled is dropped (and counted), never played late.

use std::num::NonZeroUsize;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use engine::steering::Steering;
use engine::threads::ThreadBudget;
use engine::time::{Beats, GridTicks};
use rtrb::{Consumer, Producer};

use crate::capture::CapturedNote;
use crate::continuer::{ContinueError, ContinueRequest, Continuer, GridNote, GridPrime, Variation};
use crate::memory::PlayingMemory;
use crate::params::{Mode, SavedNote, StartParam};
use crate::phrase::Phrase;
use crate::restored::Restored;
use crate::scheduler::ScheduledNote;
use crate::shared::{Counters, Shared, TakeId, TransportView, NO_TAKE};
use crate::status::ModelState;
use crate::takes::{SavedTake, Selection, Take, TakeHistory, TakeNumber};
use crate::view::{
    view_channel, Command, CommandReceiver, CommandSender, EditorView, Roll, TakeLine, ViewInput,
    ViewOutput,
};

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
    /// Worker threads the model runs on (see [`InferenceThread`]).
    pub model_threads: NonZeroUsize,
    /// Which variation of a take plays (0-based).
    pub pick: usize,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            mode: Mode::Auto,
            listen_bars: 4,
            continue_bars: 4,
            temperature: 1.0,
            top_p: 0.95,
            variations: 1,
            start: StartParam::NextBar,
            auto_silence: Beats(1.0),
            steering: Steering::default(),
            clear_memory: false,
            model_threads: NonZeroUsize::MIN,
            pick: 0,
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
    /// A manual trigger (or the editor's `Continue` button) at this position.
    Trigger(Beats),
    /// Auto mode: the musician paused.
    Pause,
}

/// What is saved with the project and shared with the plugin's parameters.
#[derive(Debug, Clone, Default)]
pub struct Persisted {
    pub last_take: Restored<SavedTake>,
    pub playing_memory: Arc<RwLock<Vec<SavedNote>>>,
    pub adapter_path: Restored<Option<String>>,
}

impl Persisted {
    /// Changes whenever the host restores the take or the style.
    fn restores(&self) -> u64 {
        u64::from(self.last_take.restores()) << 32 | u64::from(self.adapter_path.restores())
    }
}

/// The inference thread's ends of the editor's view and command channels.
pub struct EditorLink {
    view: ViewInput,
    commands: CommandReceiver,
}

impl EditorLink {
    /// A link and the editor's ends of it.
    pub fn new() -> (EditorLink, ViewOutput, CommandSender) {
        let (view, output) = view_channel();
        let (sender, commands) = crossbeam_channel::unbounded();
        (EditorLink { view, commands }, output, sender)
    }
}

/// Where a take sits on the host's timeline while it plays.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Placed {
    number: Option<TakeNumber>,
    /// The take's first bar line.
    origin: Beats,
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
    persisted: Persisted,
    memory: PlayingMemory,
    /// The clear-memory button as last seen, to act on its rising edge only.
    clear_pressed: bool,
    /// The last [`Shared::replays`] served.
    served_replays: u32,
    /// The Pick parameter as last seen.
    pick: usize,
    /// The last [`Persisted::restores`] acted on.
    restored: Option<u64>,
    history: TakeHistory,
    placed: Option<Placed>,
    link: EditorLink,
    editor: EditorView,
    /// The roll shows the current take (rather than what the musician is playing).
    showing_take: bool,
    /// The bar the listening roll was last drawn for.
    drawn_bar: Option<i64>,
}

/// A take's notes as saved and shown: grid notes, clamped the way playback clamps them.
fn saved(note: &GridNote) -> SavedNote {
    SavedNote {
        onset: note.onset.0,
        duration: note.duration.0.max(1),
        key: note.key.min(127),
        velocity: note.velocity.clamp(1, 127),
    }
}

fn grid(note: &SavedNote) -> GridNote {
    GridNote {
        onset: GridTicks(note.onset),
        duration: GridTicks(note.duration.max(1)),
        key: note.key,
        velocity: note.velocity,
    }
}

fn roll_of(take: &Take, origin: Option<Beats>) -> Roll {
    Roll {
        meter: take.time_signature(),
        bars: take.bars(),
        origin,
        heard: take.prime.clone(),
        transition: Some(take.start),
        variations: take.variations.clone(),
        picked: take.picked,
    }
}

/// Queues `note` of take `take` at `origin` for the audio thread, waiting for room while the
/// take is still active. False if it was cancelled meanwhile.
fn schedule(
    shared: &Shared,
    playback: &mut Producer<ScheduledNote>,
    take: TakeId,
    origin: Beats,
    note: &SavedNote,
) -> bool {
    let onset = origin + GridTicks(note.onset).to_quarters();
    let scheduled = ScheduledNote {
        take,
        onset,
        end: onset + GridTicks(note.duration.max(1)).to_quarters(),
        key: note.key.min(127),
        velocity: note.velocity.clamp(1, 127),
    };
    // A full queue means the model is far ahead of the playhead: wait for room.
    while playback.push(scheduled).is_err() {
        if shared.active_take() != take {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

impl Inference {
    pub fn new(
        shared: Arc<Shared>,
        captured: Consumer<CapturedNote>,
        playback: Producer<ScheduledNote>,
        knobs: KnobSource,
        persisted: Persisted,
        link: EditorLink,
    ) -> Self {
        let served_triggers = shared.triggers.load(Ordering::Acquire);
        let served_replays = shared.replays.load(Ordering::Acquire);
        let pick = knobs().pick;
        Inference {
            memory: PlayingMemory::new(persisted.playing_memory.clone()),
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
            persisted,
            clear_pressed: false,
            served_replays,
            pick,
            // Whatever the project holds is restored once the model is loaded.
            restored: None,
            history: TakeHistory::default(),
            placed: None,
            link,
            editor: EditorView::default(),
            showing_take: false,
            drawn_bar: None,
        }
    }

    /// Loads the model, reporting the outcome in the GUI status, then applies the project's
    /// style and brings back its take. Without a model the plugin keeps listening and passing
    /// MIDI through, but never generates.
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
        self.restore_if_loaded();
        self.publish();
    }

    /// The project's state was (re)loaded: bring back its take and its style.
    fn restore_if_loaded(&mut self) {
        let restored = self.persisted.restores();
        if Some(restored) == self.restored {
            return;
        }
        self.restored = Some(restored);
        let saved = self.persisted.last_take.read().0.clone();
        if let Some(take) = saved {
            if self.history.current().map(|(_, t)| t) != Some(&take) {
                self.editor.roll = roll_of(&take, None);
                self.history.push(take);
                self.placed = None;
                self.showing_take = true;
            }
        }
        let style = self
            .persisted
            .adapter_path
            .read()
            .clone()
            .map(PathBuf::from);
        if style
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            != self.editor.style
        {
            self.apply_style(style);
        }
        self.refresh_takes();
    }

    /// Swaps the style adapter; a file that does not fit keeps the previous model and says why.
    fn apply_style(&mut self, path: Option<PathBuf>) {
        let Some(continuer) = self.continuer.as_mut() else {
            return;
        };
        match continuer.set_style(path.as_deref()) {
            Ok(()) => {
                self.editor.style = path
                    .as_ref()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned());
                self.editor.style_error = None;
                *self.persisted.adapter_path.write() =
                    path.map(|p| p.to_string_lossy().into_owned());
            }
            Err(err) => {
                let message = match &self.editor.style {
                    Some(name) => format!("{err} (still using {name})"),
                    None => format!("{err} (still using the model alone)"),
                };
                tracing::warn!(%message, "style refused");
                self.editor.style_error = Some(message);
            }
        }
    }

    /// How many worker threads the model should run on now.
    fn workers(&self) -> NonZeroUsize {
        (self.knobs)().model_threads
    }

    /// Does whatever is due: takes in captured notes, follows the transport, serves the editor,
    /// a trigger or an Auto-mode pause. Returns whether a continuation was generated.
    pub fn poll(&mut self) -> bool {
        self.restore_if_loaded();
        let mut heard = false;
        while let Ok(edge) = self.captured.pop() {
            self.phrase.record(edge);
            heard = true;
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
        if heard && !self.take_running(view) {
            self.showing_take = false;
        }
        if !self.showing_take {
            self.draw_listening(view, &knobs, heard);
        }

        let mut generated = false;
        while let Ok(command) = self.link.commands.try_recv() {
            generated |= self.command(command, view);
        }
        let replays = self.shared.replays.load(Ordering::Acquire);
        if replays != self.served_replays {
            self.served_replays = replays;
            if let Some((number, _)) = self.history.current() {
                self.audition(number, view);
            }
        }
        if knobs.pick != self.pick {
            self.pick = knobs.pick;
            self.pick_variation(knobs.pick, view);
        }

        let triggers = self.shared.triggers.load(Ordering::Acquire);
        let ask = if triggers != self.served_triggers {
            self.served_triggers = triggers;
            Some(Ask::Trigger(Beats(self.shared.trigger_position.load())))
        } else if self.pause_heard(view) {
            Some(Ask::Pause)
        } else {
            None
        };
        generated |= match ask {
            Some(ask) if view.playing => self.continue_phrase(ask, view),
            _ => false,
        };
        generated
    }

    fn take_running(&self, view: TransportView) -> bool {
        self.current_take != NO_TAKE
            && self.shared.active_take() == self.current_take
            && view.position < self.take_end
    }

    /// The listening roll: the last bars the musician played, redrawn when a note came in or a
    /// bar went by.
    fn draw_listening(&mut self, view: TransportView, knobs: &Knobs, heard: bool) {
        let sig = view.time_signature;
        let current = sig.bar_index(view.position);
        if !heard && self.drawn_bar == Some(current) && self.editor.shown_take_is_none() {
            return;
        }
        self.drawn_bar = Some(current);
        let listen = knobs.listen_bars.max(1);
        let first = current - i64::from(listen) + 1;
        let prime = self.phrase.prime(sig, first, listen, view.position);
        self.editor.roll = Roll {
            meter: sig,
            bars: listen,
            origin: Some(sig.bar_start(first)),
            heard: prime.notes.iter().map(saved).collect(),
            transition: None,
            variations: Vec::new(),
            picked: 0,
        };
        self.editor.shown_take = None;
        self.publish();
    }

    fn publish(&mut self) {
        self.link.view.write(self.editor.clone());
    }

    /// The take list, undo/redo state and the saved take after the history changed.
    fn refresh_takes(&mut self) {
        self.editor.takes = self
            .history
            .iter()
            .map(|(number, take)| TakeLine {
                number,
                bars: take.bars(),
                notes: take.continuation().len(),
                variations: take.variations.len(),
                picked: take.picked,
            })
            .collect();
        self.editor.current = self.history.current().map(|(n, _)| n);
        self.editor.can_undo = self.history.can_undo();
        self.editor.can_redo = self.history.can_redo();
        *self.persisted.last_take.write() =
            SavedTake(self.history.current().map(|(_, take)| take.clone()));
        if self.showing_take {
            if let Some((number, take)) = self.history.current() {
                let origin = self
                    .placed
                    .filter(|p| p.number == Some(number))
                    .map(|p| p.origin);
                self.editor.roll = roll_of(take, origin);
                self.editor.shown_take = Some(number);
            }
        }
        self.publish();
    }

    /// Serves one editor command; true if it generated.
    fn command(&mut self, command: Command, view: TransportView) -> bool {
        match command {
            Command::Continue => {
                if view.playing {
                    return self.continue_phrase(Ask::Trigger(view.position), view);
                }
                self.shared
                    .model
                    .set_message("start the transport to continue");
            }
            Command::Audition(number) => self.audition(number, view),
            Command::Pick(selection) => {
                if self.history.select(selection) {
                    self.showing_take = true;
                    self.replace_playing(view);
                    self.refresh_takes();
                }
            }
            Command::Undo | Command::Redo => {
                let moved = if command == Command::Undo {
                    self.history.undo()
                } else {
                    self.history.redo()
                };
                if moved.is_some() {
                    self.showing_take = true;
                    self.replace_playing(view);
                    self.refresh_takes();
                }
            }
            Command::Regenerate => return self.regenerate(view),
            Command::Export { folder, part } => {
                self.editor.export = Some(match self.history.current() {
                    Some((number, take)) => crate::export::write_take(take, number, &folder, part)
                        .map_err(|e| e.to_string()),
                    None => Err("no take to export yet".into()),
                });
                self.publish();
            }
            Command::Style(path) => {
                self.apply_style(path);
                self.publish();
            }
        }
        false
    }

    /// The Pick parameter moved: the current take's variation `pick` plays from now on.
    fn pick_variation(&mut self, pick: usize, view: TransportView) {
        let Some((number, take)) = self.history.current() else {
            return;
        };
        let selection = Selection {
            take: number,
            variation: pick.min(take.variations.len().saturating_sub(1)),
        };
        if self.history.select(selection) {
            self.replace_playing(view);
            self.refresh_takes();
        }
    }

    /// The choice changed while a take plays: the rest of it is now the current take's picked
    /// variation, in the same place on the timeline.
    fn replace_playing(&mut self, view: TransportView) {
        let Some(placed) = self.placed else {
            return;
        };
        if !self.take_running(view) || !view.playing {
            return;
        }
        let Some((number, take)) = self.history.current() else {
            return;
        };
        let take = take.clone();
        let id = self.next_take_id();
        self.placed = Some(Placed {
            number: Some(number),
            origin: placed.origin,
        });
        self.shared.active_take.store(id, Ordering::Release);
        for note in take.continuation() {
            if placed.origin + GridTicks(note.onset).to_quarters() < view.position {
                continue;
            }
            if !schedule(&self.shared, &mut self.playback, id, placed.origin, note) {
                break;
            }
        }
    }

    fn next_take_id(&mut self) -> TakeId {
        self.takes_started = self.takes_started.wrapping_add(1);
        let id = self.takes_started.max(1);
        self.current_take = id;
        id
    }

    /// Where a take would start if played again from the next bar line: its first bar line,
    /// moved by whole bars so the continuation's bar starts there.
    fn replay_origin(take: &Take, view: TransportView) -> Beats {
        let sig = take.time_signature();
        let bar = sig.grid_ticks_per_bar().0.max(1);
        let start_bar = take.start.div_euclid(bar);
        let next = view.time_signature.next_bar_line(view.position);
        next - GridTicks(start_bar * bar).to_quarters()
    }

    /// Plays take `number` again from the next bar line (and makes it current).
    fn audition(&mut self, number: TakeNumber, view: TransportView) {
        let Some(take) = self.history.get(number).cloned() else {
            return;
        };
        if !view.playing {
            self.shared
                .model
                .set_message("start the transport to hear the take");
            return;
        }
        self.history.select(Selection {
            take: number,
            variation: take.picked,
        });
        let origin = Self::replay_origin(&take, view);
        let id = self.next_take_id();
        self.take_end = origin + GridTicks(take.start + take.length).to_quarters();
        self.placed = Some(Placed {
            number: Some(number),
            origin,
        });
        self.showing_take = true;
        self.shared.active_take.store(id, Ordering::Release);
        self.refresh_takes();
        for note in take.continuation() {
            if !schedule(&self.shared, &mut self.playback, id, origin, note) {
                break;
            }
        }
    }

    /// New candidates for the current take's phrase, from the next bar line.
    fn regenerate(&mut self, view: TransportView) -> bool {
        let Some((_, take)) = self.history.current() else {
            return false;
        };
        if !view.playing {
            self.shared
                .model
                .set_message("start the transport to regenerate");
            return false;
        }
        let take = take.clone();
        let knobs = (self.knobs)();
        let sig = take.time_signature();
        let bar = sig.grid_ticks_per_bar().0.max(1);
        let request = self.request(
            GridPrime {
                time_signature: sig,
                bars: (take.start.div_euclid(bar)).max(1) as u32,
                notes: take.prime.iter().map(grid).collect(),
            },
            GridTicks(take.start),
            GridTicks(take.length),
            &knobs,
        );
        let origin = Self::replay_origin(&take, view);
        self.run(request, origin, view)
    }

    fn request(
        &self,
        prime: GridPrime,
        start: GridTicks,
        length: GridTicks,
        knobs: &Knobs,
    ) -> ContinueRequest {
        let bar_ticks = prime.time_signature.grid_ticks_per_bar();
        let variations = knobs.variations.max(1);
        ContinueRequest {
            prime,
            start,
            length,
            temperature: knobs.temperature,
            top_p: knobs.top_p,
            // Every take gets seeds of its own, so asking again gives other candidates.
            seed: u64::from(self.takes_started) * u64::from(variations),
            steering: knobs.steering,
            memory: if knobs.steering.faithfulness > 0.0 {
                self.memory.snapshot(bar_ticks)
            } else {
                Vec::new()
            },
            variations,
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
                self.drawn_bar = None;
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
        if self.take_running(view) {
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
            tracing::debug!(
                current = self.current_take,
                active = self.shared.active_take(),
                position = view.position.0,
                take_end = self.take_end.0,
                phrase_start = self.phrase_start.0,
                "pause heard"
            );
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
        let request = self.request(
            prime,
            GridTicks::from_quarters(start - origin),
            length,
            &knobs,
        );
        if self.continuer.is_none() {
            tracing::debug!(?ask, "continuation asked for, but no model is loaded");
            return false;
        }
        self.phrase_start = view.position;
        tracing::debug!(?ask, start = start.0, "continuing");
        self.run(request, origin, view)
    }

    /// Generates `request` with its first bar line at `origin` on the timeline: the picked
    /// variation streams to the audio thread as it is sampled, every variation to the editor,
    /// and the finished take joins the history as the current one.
    fn run(&mut self, request: ContinueRequest, origin: Beats, _view: TransportView) -> bool {
        let Some(continuer) = self.continuer.as_mut() else {
            return false;
        };
        let knobs = (self.knobs)();
        let variations = request.variations.max(1) as usize;
        let mut take = Take::new(
            request.prime.time_signature,
            request.start.0,
            request.length.0,
            request.prime.notes.iter().map(saved).collect(),
        );
        take.variations = vec![Vec::new(); variations];
        take.picked = knobs.pick.min(variations - 1);
        let picked = take.picked;

        self.takes_started = self.takes_started.wrapping_add(1);
        let id = self.takes_started.max(1);
        self.current_take = id;
        self.take_end = origin + GridTicks(request.start.0 + request.length.0).to_quarters();
        self.placed = Some(Placed {
            number: None,
            origin,
        });
        self.showing_take = true;
        self.editor.roll = roll_of(&take, Some(origin));
        self.editor.shown_take = None;
        // Publishing the new take makes the audio thread release whatever the old one left
        // sounding before the first note of this one plays.
        self.shared.active_take.store(id, Ordering::Release);
        self.shared.model.set_state(ModelState::Generating);
        self.link.view.write(self.editor.clone());

        let shared = &self.shared;
        let playback = &mut self.playback;
        let editor = &mut self.editor;
        let view_input = &mut self.link.view;
        let take_end = request.start.0 + request.length.0;
        let notes = &mut take.variations;
        let mut emit = |variation: Variation, note: GridNote| {
            if shared.active_take() != id {
                return ControlFlow::Break(());
            }
            // Past the span: no more notes are wanted (the engine stops there by itself; a
            // continuer that streams on is told to stop).
            if note.onset.0 >= take_end || variation >= notes.len() {
                return ControlFlow::Break(());
            }
            let note = saved(&note);
            notes[variation].push(note);
            if let Some(shown) = editor.roll.variations.get_mut(variation) {
                shown.push(note);
            }
            view_input.write(editor.clone());
            if variation != picked {
                return ControlFlow::Continue(());
            }
            let onset = origin + GridTicks(note.onset).to_quarters();
            if onset < shared.transport.view().position {
                Counters::bump(&shared.counters.late_notes);
                return ControlFlow::Continue(());
            }
            if schedule(shared, playback, id, origin, &note) {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        };
        let result = continuer.continue_phrase(&request, &mut emit);
        self.shared.model.set_state(ModelState::Ready);
        match result {
            Ok(generated) => {
                if generated.tokens_per_second.is_some() {
                    self.editor.tokens_per_second = generated.tokens_per_second;
                }
                let number = self.history.push(take);
                self.placed = Some(Placed {
                    number: Some(number),
                    origin,
                });
                self.pick = knobs.pick;
                self.refresh_takes();
            }
            Err(err) => {
                tracing::warn!(%err, "continuation failed");
                self.shared.model.set_message(err.to_string());
                self.shared.cancel_take(id);
                self.publish();
            }
        }
        true
    }
}

impl EditorView {
    fn shown_take_is_none(&self) -> bool {
        self.shown_take.is_none() && self.roll.transition.is_none()
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
    /// Starts the thread. The model then runs on its own small budget of worker threads
    /// ([`Knobs::model_threads`], one by default) rather than on rayon's or candle's
    /// one-per-core pools, whose busy workers would compete with the host's audio threads; a
    /// change of the setting takes effect at the next idle poll.
    pub fn spawn(mut inference: Inference, loader: Loader) -> std::io::Result<InferenceThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let shared = inference.shared.clone();
        let handle = std::thread::Builder::new()
            .name("continuator-inference".into())
            .spawn(move || {
                engine::threads::keep_candle_spin_pool_on_caller();
                let mut loader = Some(loader);
                let mut run = |inference: &mut Inference, workers: NonZeroUsize| {
                    if let Some(loader) = loader.take() {
                        inference.load(loader);
                    }
                    while !stop_flag.load(Ordering::Acquire) && inference.workers() == workers {
                        if !inference.poll() {
                            std::thread::sleep(POLL_INTERVAL);
                        }
                    }
                };
                while !stop_flag.load(Ordering::Acquire) {
                    let workers = inference.workers();
                    match ThreadBudget::new(workers, "continuator-model") {
                        Ok(budget) => budget.install(|| run(&mut inference, workers)),
                        Err(err) => {
                            // Still continue, on this thread alone, and say why.
                            inference.shared.model.set_message(err.to_string());
                            run(&mut inference, workers);
                        }
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
    use nice_plug::params::persist::PersistentField;

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
            emit: &mut dyn FnMut(Variation, GridNote) -> ControlFlow<()>,
        ) -> Result<crate::continuer::Generated, ContinueError> {
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
                if emit(0, note).is_break() {
                    break;
                }
            }
            Ok(crate::continuer::Generated::default())
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
        /// Generated NoteOns with their absolute sample, and their keys.
        ons: Vec<u64>,
        keys: Vec<u8>,
        offs: usize,
        persisted: Persisted,
        view: ViewOutput,
        commands: CommandSender,
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
            Rig::restoring(bpm, sig, loader, Persisted::default())
        }

        /// A rig whose plugin state is `persisted` (what the host restored).
        fn restoring(bpm: f64, sig: TimeSignature, loader: Loader, persisted: Persisted) -> Rig {
            let shared = Arc::new(Shared::default());
            let (tx, rx) = playback_channel();
            let (processor, captured) = Processor::new(rx, shared.clone());
            let knobs = Arc::new(Mutex::new(Knobs::default()));
            let source = knobs.clone();
            let (link, view, commands) = EditorLink::new();
            let mut inference = Inference::new(
                shared.clone(),
                captured,
                tx,
                Box::new(move || *source.lock().unwrap()),
                persisted.clone(),
                link,
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
                keys: Vec::new(),
                offs: 0,
                persisted,
                view,
                commands,
            }
        }

        fn editor(&self) -> EditorView {
            self.view.lock().unwrap().read().clone()
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
                    OutNote::On { timing, key, .. } => {
                        self.ons.push(self.samples + u64::from(timing));
                        self.keys.push(key);
                    }
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

    #[test]
    fn the_model_loads_and_runs_on_its_own_thread_budget() {
        for threads in [1usize, 3] {
            let shared = Arc::new(Shared::default());
            let (tx, rx) = playback_channel();
            let (_processor, captured) = Processor::new(rx, shared.clone());
            let knobs = Knobs {
                model_threads: NonZeroUsize::new(threads).unwrap(),
                ..Knobs::default()
            };
            let inference = Inference::new(
                shared.clone(),
                captured,
                tx,
                Box::new(move || knobs),
                Persisted::default(),
                EditorLink::new().0,
            );
            let (seen_tx, seen_rx) = std::sync::mpsc::channel();
            let loader: Loader = Box::new(move || {
                let name = std::thread::current().name().unwrap_or("").to_owned();
                seen_tx.send((rayon::current_num_threads(), name)).unwrap();
                Err(ContinueError::NoModel("none needed".into()))
            });
            let thread = InferenceThread::spawn(inference, loader).unwrap();
            let (workers, name) = seen_rx.recv_timeout(Duration::from_secs(20)).unwrap();
            drop(thread);
            assert_eq!(workers, threads, "rayon work stays on the budget");
            assert!(name.starts_with("continuator-model-"), "{name}");
        }
    }

    /// Variation `v` plays key `60 + 10 v` on every eighth note; styles whose file name says
    /// "good" are taken, any other is refused.
    struct Candidates {
        style: Arc<Mutex<Option<std::path::PathBuf>>>,
    }

    impl Continuer for Candidates {
        fn continue_phrase(
            &mut self,
            request: &ContinueRequest,
            emit: &mut dyn FnMut(Variation, GridNote) -> ControlFlow<()>,
        ) -> Result<crate::continuer::Generated, ContinueError> {
            let end = request.start.0 + request.length.0;
            for onset in (request.start.0..end).step_by(6) {
                for v in 0..request.variations as usize {
                    let note = GridNote {
                        onset: GridTicks(onset),
                        duration: GridTicks(5),
                        key: 60 + 10 * v as u8,
                        velocity: 80,
                    };
                    if emit(v, note).is_break() {
                        return Ok(Default::default());
                    }
                }
            }
            Ok(crate::continuer::Generated {
                tokens_per_second: Some(1000.0),
            })
        }

        fn set_style(&mut self, adapter: Option<&std::path::Path>) -> Result<(), ContinueError> {
            match adapter {
                Some(p) if !p.to_string_lossy().contains("good") => Err(ContinueError::Style(
                    format!("{}: wrong shape", p.display()),
                )),
                _ => {
                    *self.style.lock().unwrap() = adapter.map(|p| p.to_path_buf());
                    Ok(())
                }
            }
        }
    }

    fn candidates_rig(persisted: Persisted) -> (Rig, Arc<Mutex<Option<std::path::PathBuf>>>) {
        let style = Arc::new(Mutex::new(None));
        let continuer = Candidates {
            style: style.clone(),
        };
        let loader: Loader = Box::new(move || Ok(Box::new(continuer) as Box<dyn Continuer>));
        let rig = Rig::restoring(120.0, TimeSignature::default(), loader, persisted);
        (rig, style)
    }

    #[test]
    fn variations_stream_side_by_side_and_the_pick_switches_what_plays() {
        let (mut rig, _) = candidates_rig(Persisted::default());
        rig.knobs.lock().unwrap().variations = 3;
        rig.knobs.lock().unwrap().pick = 1;
        let played = four_bars(TimeSignature::default());
        // The continuation starts at beat 20; two beats of it with variation 1.
        rig.run_until(22.0, &played);
        assert!(!rig.keys.is_empty());
        assert!(rig.keys.iter().all(|&k| k == 70), "{:?}", rig.keys);
        let view = rig.editor();
        assert_eq!(view.roll.variations.len(), 3);
        assert_eq!(view.roll.picked, 1);
        assert_eq!(view.roll.transition, Some(5 * 48), "after the pause bar");
        assert!(view.roll.variations.iter().all(|v| v.len() == 32));
        assert_eq!(view.tokens_per_second, Some(1000.0));
        assert_eq!(view.takes.len(), 1);
        // Picking the third mid-take: the rest of the take is the third, in the same place.
        let before = rig.keys.len();
        rig.knobs.lock().unwrap().pick = 2;
        rig.run_until(36.0, &played);
        let after = &rig.keys[before..];
        assert!(
            !after.is_empty() && after.iter().all(|&k| k == 80),
            "{after:?}"
        );
        assert_eq!(rig.keys.len(), 32, "one note per eighth, none twice");
        assert_eq!(rig.ons.len(), rig.offs);
        let saved = rig.persisted.last_take.read().0.clone().unwrap();
        assert_eq!(saved.picked, 2);
        assert_eq!(saved.continuation()[0].key, 80);
    }

    #[test]
    fn a_restored_take_comes_back_and_replays_from_the_next_bar_line() {
        // A first session makes a take; its state is what the host saves.
        let (mut first, _) = candidates_rig(Persisted::default());
        first.knobs.lock().unwrap().variations = 2;
        first.run_until(40.0, &four_bars(TimeSignature::default()));
        let saved = first.persisted.last_take.read().clone();
        let take = saved.0.clone().expect("a take was saved");
        assert_eq!(take.continuation().len(), 32);
        assert_eq!(take.prime.len(), 16);

        // The project reopens: the host hands the saved take back.
        let persisted = Persisted::default();
        PersistentField::set(&persisted.last_take, saved);
        let (mut second, _) = candidates_rig(persisted);
        second.block(&[]);
        let view = second.editor();
        assert_eq!(view.current, Some(0));
        assert_eq!(view.roll.heard, take.prime);
        assert_eq!(view.roll.variations, take.variations);
        assert_eq!(view.roll.origin, None, "not on the timeline until replayed");
        // Replay at beat 1.5: the continuation's bar (the prime's fifth) starts on beat 4.
        second.run_until(1.5, &[]);
        // The button is held for one block only, as a host's automation may: the press is
        // caught by the audio thread and served by the next poll.
        second.settings.replay = true;
        second.block(&[]);
        second.settings.replay = false;
        second.run_until(24.0, &[]);
        assert_eq!(second.keys.len(), 32);
        assert_eq!(second.ons[0], 4 * 24_000);
        assert_eq!(second.ons.len(), second.offs);
        assert_eq!(second.editor().roll.origin, Some(Beats(-16.0)));
    }

    #[test]
    fn takes_are_picked_undone_and_exported_from_the_editor() {
        let (mut rig, _) = candidates_rig(Persisted::default());
        let played = four_bars(TimeSignature::default());
        rig.run_until(40.0, &played);
        rig.commands.send(Command::Continue).unwrap();
        rig.block(&[]);
        rig.run_until(60.0, &[]);
        let view = rig.editor();
        assert_eq!(view.takes.len(), 2);
        assert_eq!(view.current, Some(1));
        rig.commands.send(Command::Undo).unwrap();
        rig.block(&[]);
        assert_eq!(rig.editor().current, Some(0));
        assert!(rig.editor().can_redo);
        let dir = tempfile::tempdir().unwrap();
        rig.commands
            .send(Command::Export {
                folder: dir.path().to_path_buf(),
                part: crate::view::ExportPart::Whole,
            })
            .unwrap();
        rig.commands
            .send(Command::Export {
                folder: dir.path().join("missing"),
                part: crate::view::ExportPart::Whole,
            })
            .unwrap();
        rig.block(&[]);
        let export = rig.editor().export.unwrap();
        assert!(export.unwrap_err().contains("missing"));
        assert!(dir.path().join("continuator-take-0.mid").exists());
    }

    #[test]
    fn a_style_that_does_not_fit_keeps_the_previous_one_and_the_project_keeps_the_choice() {
        let persisted = Persisted::default();
        PersistentField::set(
            &persisted.adapter_path,
            Some("/styles/good-jazz.safetensors".into()),
        );
        let (mut rig, style) = candidates_rig(persisted);
        rig.block(&[]);
        assert_eq!(
            style.lock().unwrap().as_deref(),
            Some(std::path::Path::new("/styles/good-jazz.safetensors")),
            "the project's style is loaded with the model"
        );
        assert_eq!(rig.editor().style.as_deref(), Some("good-jazz.safetensors"));
        rig.commands
            .send(Command::Style(Some(
                "/styles/other-model.safetensors".into(),
            )))
            .unwrap();
        rig.block(&[]);
        let view = rig.editor();
        assert_eq!(view.style.as_deref(), Some("good-jazz.safetensors"));
        let error = view.style_error.unwrap();
        assert!(
            error.contains("other-model.safetensors") && error.contains("still using good-jazz"),
            "{error}"
        );
        assert_eq!(
            rig.persisted.adapter_path.read().as_deref(),
            Some("/styles/good-jazz.safetensors")
        );
        rig.commands.send(Command::Style(None)).unwrap();
        rig.block(&[]);
        assert_eq!(rig.editor().style, None);
        assert_eq!(*rig.persisted.adapter_path.read(), None);
        assert_eq!(*style.lock().unwrap(), None);
    }

    #[test]
    fn a_one_bar_phrase_gets_one_answer() {
        let mut rig = Rig::new(120.0, TimeSignature::default(), Vec::new(), true);
        {
            let mut k = rig.knobs.lock().unwrap();
            k.listen_bars = 1;
            k.continue_bars = 1;
            k.auto_silence = Beats(0.25);
        }
        let phrase: Vec<(f64, u8, bool)> = (0..3)
            .flat_map(|b| {
                [
                    (f64::from(b), 60 + b as u8, true),
                    (f64::from(b) + 0.9, 60 + b as u8, false),
                ]
            })
            .collect();
        rig.run_until(8.0, &phrase);
        let requests = rig.requests.lock().unwrap().clone();
        assert_eq!(
            requests.len(),
            1,
            "{:?}",
            requests.iter().map(|r| r.start).collect::<Vec<_>>()
        );
    }
}
