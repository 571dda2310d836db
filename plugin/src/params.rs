//! The plugin's parameters, saved with the host project.
//!
//! Parameter ids are part of every saved project: never change one once released.

use std::sync::{Arc, RwLock};

use nice_plug::prelude::*;
use serde::{Deserialize, Serialize};

use crate::realtime::{BlockSettings, TriggerBinding};

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

/// Where a manual continuation starts.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
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
    /// How many different takes successive triggers cycle through for the same phrase before
    /// repeating one (each variation is a different sampling seed); 1 makes continuations
    /// repeatable.
    #[id = "variations"]
    pub variations: IntParam,
    /// The manual trigger; automatable, so a continuation can be written into an arrangement.
    #[id = "trigger"]
    pub trigger: BoolParam,
    #[id = "thru"]
    pub thru: BoolParam,
    #[id = "out-channel"]
    pub output_channel: IntParam,
    #[id = "start"]
    pub start: EnumParam<Start>,
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

    /// A user adapter (fine-tuned weights) to load instead of the embedded model.
    #[persist = "adapter-path"]
    pub adapter_path: Arc<RwLock<Option<String>>>,
    /// The last continuation, so reopening the project shows (and can replay) it.
    #[persist = "last-take"]
    pub last_take: Arc<RwLock<Vec<SavedNote>>>,
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
            variations: IntParam::new("Variations", 4, IntRange::Linear { min: 1, max: 16 }),
            trigger: BoolParam::new("Continue", false),
            thru: BoolParam::new("Thru", true),
            output_channel: IntParam::new(
                "Output channel",
                1,
                IntRange::Linear { min: 1, max: 16 },
            ),
            start: EnumParam::new("Start", Start::NextBar),
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
            adapter_path: Arc::new(RwLock::new(None)),
            last_take: Arc::new(RwLock::new(Vec::new())),
        }
    }
}

impl ContinuatorParams {
    /// The audio thread's view of the parameters for one block.
    pub fn block_settings(&self) -> BlockSettings {
        let number = self.trigger_number.value().clamp(0, 127) as u8;
        BlockSettings {
            bypass: self.bypass.value(),
            thru: self.thru.value(),
            output_channel: (self.output_channel.value().clamp(1, 16) - 1) as u8,
            yield_on_play: self.yield_on_play.value(),
            trigger: self.trigger.value(),
            trigger_binding: match self.trigger_source.value() {
                TriggerSource::Off => TriggerBinding::Off,
                TriggerSource::Note => TriggerBinding::Note(number),
                TriggerSource::Cc => TriggerBinding::Cc(number),
            },
        }
    }
}
