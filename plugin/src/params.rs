//! The plugin's parameters, saved with the host project.
//!
//! Parameter ids are part of every saved project: never change one once released.

use std::sync::{Arc, RwLock};

use nice_plug::prelude::*;
use serde::{Deserialize, Serialize};

use engine::key::Key;
use engine::steering::{KeyLock, PitchRange, Steering};

use crate::realtime::{BlockSettings, TriggerBinding};
use crate::restored::Restored;
use crate::takes::SavedTake;

/// When Continuator plays.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only when triggered (the `Continue` parameter, or the trigger note or CC).
    #[id = "manual"]
    Manual,
    /// Call and response: after the musician plays and then pauses.
    #[id = "auto"]
    Auto,
}

/// The Start parameter: where a manual continuation starts. The same choice as the engine's
/// [`engine::generation::Start`] makes for a file's prime; here the inference thread turns it
/// into a position on the host's timeline (the engine is then told to start exactly there).
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartParam {
    #[id = "next-bar"]
    #[name = "Next bar"]
    NextBar,
    #[id = "now"]
    Now,
}

/// What on the MIDI input triggers a continuation.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerSource {
    #[id = "off"]
    Off,
    #[id = "note"]
    Note,
    #[id = "cc"]
    #[name = "CC"]
    Cc,
}

/// One note of a take as saved with the project: onset and duration in grid ticks from the take's
/// first bar line, so it means the same thing at any tempo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedNote {
    pub onset: i64,
    pub duration: i64,
    pub key: u8,
    pub velocity: u8,
}

#[derive(Params)]
pub struct ContinuatorParams {
    #[id = "bypass"]
    pub bypass: BoolParam,
    #[id = "mode"]
    pub mode: EnumParam<Mode>,
    /// How many bars of the musician's playing the model listens to.
    #[id = "listen-bars"]
    pub listen_bars: IntParam,
    /// How many bars a continuation lasts.
    #[id = "continue-bars"]
    pub continue_bars: IntParam,
    #[id = "temperature"]
    pub temperature: FloatParam,
    #[id = "top-p"]
    pub top_p: FloatParam,
    /// How many candidate continuations each take makes at once (each its own sampling seed),
    /// shown side by side in the editor; `pick` chooses the one that plays.
    #[id = "variations"]
    pub variations: IntParam,
    /// Which candidate plays (1-based); automatable, so an arrangement can switch between them.
    #[id = "pick"]
    pub pick: IntParam,
    /// Plays the current take again from the next bar line (a button: its rising edge).
    #[id = "replay"]
    pub replay: BoolParam,
    /// The manual trigger; automatable, so a continuation can be written into an arrangement.
    #[id = "trigger"]
    pub trigger: BoolParam,
    #[id = "thru"]
    pub thru: BoolParam,
    #[id = "out-channel"]
    pub output_channel: IntParam,
    #[id = "start"]
    pub start: EnumParam<StartParam>,
    #[id = "trigger-source"]
    pub trigger_source: EnumParam<TriggerSource>,
    /// The note number or controller number the trigger source listens to.
    #[id = "trigger-number"]
    pub trigger_number: IntParam,
    /// In Auto mode, how long the musician must pause before the continuation comes (beats).
    #[id = "auto-silence"]
    pub auto_silence: FloatParam,
    /// Whether playing over a continuation stops it.
    #[id = "yield"]
    pub yield_on_play: BoolParam,
    /// How closely continuations follow the musician's own playing (the playing memory), 0 (the
    /// model alone) to 1.
    #[id = "faithfulness"]
    pub faithfulness: FloatParam,
    /// The key continuations keep to: off, the prime's own (auto), or one of the 24 keys (see
    /// [`key_lock`]).
    #[id = "key"]
    pub key: IntParam,
    /// Notes per bar to aim for; 0 leaves it to the model.
    #[id = "density"]
    pub density: IntParam,
    /// The lowest and highest pitch continuations may play.
    #[id = "range-low"]
    pub range_low: IntParam,
    #[id = "range-high"]
    pub range_high: IntParam,
    /// Forgets the playing memory (a button: turning it on clears, once).
    #[id = "clear-memory"]
    pub clear_memory: BoolParam,
    /// Worker threads the model runs on: one by default, so that on a busy machine generation
    /// takes one core and leaves the rest to the host's audio threads.
    #[id = "model-threads"]
    pub model_threads: IntParam,

    /// The Continuator Instrument's preview: a soft sine for every note it sends out, so the
    /// track is audible without routing its MIDI anywhere (the MIDI effect has no audio).
    #[id = "preview"]
    pub preview: BoolParam,

    /// The style: an adapter file (fine-tuned weights) for the model.
    #[persist = "adapter-path"]
    pub adapter_path: Restored<Option<String>>,
    /// The current take (the phrase, its candidates and the pick), so reopening the project
    /// shows it and the Replay button plays it again.
    #[persist = "last-take"]
    pub last_take: Restored<SavedTake>,
    /// The folder takes are exported to.
    #[persist = "export-folder"]
    pub export_folder: Arc<RwLock<String>>,
    /// Everything the musician played since the project opened (bounded): what faithfulness
    /// follows, kept with the project.
    #[persist = "playing-memory"]
    pub playing_memory: Arc<RwLock<Vec<SavedNote>>>,
}

/// Values of the `key` parameter: 0 off, 1 auto, then C major … B major, C minor … B minor.
pub const KEY_CHOICES: i32 = 26;

/// The key lock a `key` parameter value stands for.
pub fn key_lock(value: i32) -> KeyLock {
    match value {
        i32::MIN..=0 => KeyLock::Off,
        1 => KeyLock::Auto,
        v => {
            let k = (v - 2).min(23) as u8;
            KeyLock::Fixed(Key {
                tonic: k % 12,
                minor: k >= 12,
            })
        }
    }
}

fn key_to_string(value: i32) -> String {
    match key_lock(value) {
        KeyLock::Off => "Off".into(),
        KeyLock::Auto => "Auto".into(),
        KeyLock::Fixed(key) => key.short_name(),
    }
}

fn string_to_key(text: &str) -> Option<i32> {
    match text.trim().to_ascii_lowercase().as_str() {
        "off" => Some(0),
        "auto" => Some(1),
        _ => {
            let key: Key = text.parse().ok()?;
            Some(2 + i32::from(key.tonic) + if key.minor { 12 } else { 0 })
        }
    }
}

impl Default for ContinuatorParams {
    fn default() -> Self {
        Self {
            bypass: BoolParam::new("Bypass", false).make_bypass(),
            mode: EnumParam::new("Mode", Mode::Auto),
            listen_bars: IntParam::new("Listen bars", 4, IntRange::Linear { min: 1, max: 16 })
                .with_unit(" bars"),
            continue_bars: IntParam::new("Continue bars", 4, IntRange::Linear { min: 1, max: 16 })
                .with_unit(" bars"),
            temperature: FloatParam::new(
                "Temperature",
                1.0,
                FloatRange::Linear { min: 0.1, max: 2.0 },
            )
            .with_step_size(0.01),
            top_p: FloatParam::new(
                "Top-p",
                0.95,
                FloatRange::Linear {
                    min: 0.05,
                    max: 1.0,
                },
            )
            .with_step_size(0.01),
            variations: IntParam::new("Variations", 1, IntRange::Linear { min: 1, max: 8 }),
            pick: IntParam::new("Pick", 1, IntRange::Linear { min: 1, max: 8 }),
            replay: BoolParam::new("Replay take", false),
            trigger: BoolParam::new("Continue", false),
            thru: BoolParam::new("Thru", true),
            output_channel: IntParam::new(
                "Output channel",
                1,
                IntRange::Linear { min: 1, max: 16 },
            ),
            start: EnumParam::new("Start", StartParam::NextBar),
            trigger_source: EnumParam::new("Trigger source", TriggerSource::Off),
            trigger_number: IntParam::new(
                "Trigger number",
                36,
                IntRange::Linear { min: 0, max: 127 },
            ),
            auto_silence: FloatParam::new(
                "Auto silence",
                1.0,
                FloatRange::Linear {
                    min: 0.25,
                    max: 8.0,
                },
            )
            .with_step_size(0.25)
            .with_unit(" beats"),
            yield_on_play: BoolParam::new("Yield to player", true),
            faithfulness: FloatParam::new(
                "Faithfulness",
                engine::steering::DEFAULT_FAITHFULNESS,
                FloatRange::Linear { min: 0.0, max: 1.0 },
            )
            .with_step_size(0.01),
            key: IntParam::new(
                "Key",
                0,
                IntRange::Linear {
                    min: 0,
                    max: KEY_CHOICES - 1,
                },
            )
            .with_value_to_string(Arc::new(key_to_string))
            .with_string_to_value(Arc::new(string_to_key)),
            density: IntParam::new(
                "Density",
                0,
                IntRange::Linear {
                    min: 0,
                    max: engine::steering::MAX_DENSITY as i32,
                },
            )
            .with_value_to_string(Arc::new(|v| {
                if v == 0 {
                    "Off".into()
                } else {
                    format!("{v} notes/bar")
                }
            })),
            range_low: IntParam::new("Lowest note", 21, IntRange::Linear { min: 21, max: 108 })
                .with_value_to_string(formatters::v2s_i32_key_formatter())
                .with_string_to_value(formatters::s2v_i32_key_formatter()),
            range_high: IntParam::new("Highest note", 108, IntRange::Linear { min: 21, max: 108 })
                .with_value_to_string(formatters::v2s_i32_key_formatter())
                .with_string_to_value(formatters::s2v_i32_key_formatter()),
            clear_memory: BoolParam::new("Clear memory", false),
            model_threads: IntParam::new("Model threads", 1, IntRange::Linear { min: 1, max: 16 })
                .non_automatable(),
            preview: BoolParam::new("Preview tone", false),
            adapter_path: Restored::new(None),
            last_take: Restored::new(SavedTake::default()),
            export_folder: Arc::new(RwLock::new(String::new())),
            playing_memory: Arc::new(RwLock::new(Vec::new())),
        }
    }
}

impl ContinuatorParams {
    /// The steering controls as the engine takes them. A range whose ends cross is passed on
    /// as it is, so the engine's error names it in the status line.
    pub fn steering(&self) -> Steering {
        let density = self.density.value();
        let (low, high) = (self.range_low.value(), self.range_high.value());
        Steering {
            faithfulness: self.faithfulness.value(),
            key: key_lock(self.key.value()),
            density: (density > 0).then_some(density as u32),
            range: (low > 21 || high < 108).then_some(PitchRange {
                low: low.clamp(0, 127) as u8,
                high: high.clamp(0, 127) as u8,
            }),
        }
    }

    /// The audio thread's view of the parameters for one block.
    pub fn block_settings(&self) -> BlockSettings {
        let number = self.trigger_number.value().clamp(0, 127) as u8;
        BlockSettings {
            bypass: self.bypass.value(),
            thru: self.thru.value(),
            output_channel: (self.output_channel.value().clamp(1, 16) - 1) as u8,
            yield_on_play: self.yield_on_play.value(),
            trigger: self.trigger.value(),
            replay: self.replay.value(),
            trigger_binding: match self.trigger_source.value() {
                TriggerSource::Off => TriggerBinding::Off,
                TriggerSource::Note => TriggerBinding::Note(number),
                TriggerSource::Cc => TriggerBinding::Cc(number),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_value_names_itself_and_reads_back() {
        for v in 0..KEY_CHOICES {
            let text = key_to_string(v);
            assert_eq!(string_to_key(&text), Some(v), "{text}");
        }
        assert_eq!(key_to_string(0), "Off");
        assert_eq!(key_to_string(1), "Auto");
        assert_eq!(key_to_string(2), "C");
        assert_eq!(key_to_string(2 + 12 + 9), "Am");
    }

    #[test]
    fn default_parameters_steer_only_faithfulness() {
        let params = ContinuatorParams::default();
        assert_eq!(params.steering(), Steering::default());
    }
}
