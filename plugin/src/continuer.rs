//! The seam between the plugin and the model: turn a prime into a stream of notes.
//!
//! The inference thread only knows this trait, so it can be tested with a scripted fake, and the
//! engine's generation API plugs in behind it without the real-time shell changing. Everything
//! here is on the grid ([`GridTicks`], [`GridTicks::PER_QUARTER`] to a quarter note), relative to
//! the prime's first bar line, so the engine never has to know about tempo, samples or the host's
//! timeline.

use std::ops::ControlFlow;
use std::path::Path;

use engine::steering::Steering;
use engine::time::{GridTicks, TimeSignature};

/// A note on the grid, relative to the prime's first bar line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GridNote {
    pub onset: GridTicks,
    /// At least one tick.
    pub duration: GridTicks,
    pub key: u8,
    /// MIDI velocity, 1..=127.
    pub velocity: u8,
}

/// What the musician played, as the plugin hands it to a [`Continuer`]: `bars` whole bars in one
/// time signature (the listening window), notes on the grid in onset order.
///
/// Not the engine's [`engine::generation::Prime`], which is tokens cut at a start and ready to
/// generate from: the product's continuer builds that from this one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GridPrime {
    pub time_signature: TimeSignature,
    pub bars: u32,
    pub notes: Vec<GridNote>,
}

/// A request for one continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct ContinueRequest {
    pub prime: GridPrime,
    /// Where the continuation starts, from the prime's first bar line: usually the prime's end
    /// (`bars` bar lengths), later if the musician paused for whole bars, earlier (mid-bar, inside
    /// the prime's last bar) when a manual trigger says "now".
    pub start: GridTicks,
    /// How long the continuation lasts from `start`; notes at or after `start + length` are not
    /// wanted (the implementation may stop there).
    pub length: GridTicks,
    pub temperature: f32,
    pub top_p: f32,
    /// Sampling seed: the same prime, settings and seed give the same continuation.
    pub seed: u64,
    /// Faithfulness, key, density and register.
    pub steering: Steering,
    /// The playing memory (everything played since the project opened, the first note's bar
    /// at 0): what faithfulness follows besides the prime.
    pub memory: Vec<GridNote>,
    /// How many candidate continuations to make at once (variations `0..variations`, each with
    /// its own seed derived from `seed`); at least one.
    pub variations: u32,
}

/// Which candidate of a request a streamed note belongs to, `0..ContinueRequest::variations`.
pub type Variation = usize;

/// What a finished continuation cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Generated {
    /// Tokens sampled (all variations) per second of generation, when the continuer samples
    /// tokens at all (a scripted stand-in does not).
    pub tokens_per_second: Option<f32>,
}

/// Why a continuation could not be produced; shown in the GUI status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContinueError {
    #[error("no model loaded: {0}")]
    NoModel(String),
    #[error("generation failed: {0}")]
    Failed(String),
    #[error("cannot use this style: {0}")]
    Style(String),
}

/// Something that continues a phrase: the engine's model in the product, a script in tests.
pub trait Continuer: Send {
    /// Streams the continuations of `request`, note by note (in onset order within each
    /// variation), as soon as each is sampled: `emit` returns [`ControlFlow::Break`] when the
    /// take was cancelled (the musician played over it, the transport moved) or no more notes
    /// are wanted, and the implementation should then return promptly.
    fn continue_phrase(
        &mut self,
        request: &ContinueRequest,
        emit: &mut dyn FnMut(Variation, GridNote) -> ControlFlow<()>,
    ) -> Result<Generated, ContinueError>;

    /// The prime a continuation starting at the next bar line would get, handed over as soon as
    /// the musician finishes a bar, for incremental prefill: an implementation may feed it to the
    /// model's cache now, so that when a continuation is asked for only what came after is left
    /// to process. The default ignores it.
    fn listening(&mut self, _prime: &GridPrime) {}

    /// Continues in the style of the adapter file `adapter` from now on (`None`: the model
    /// alone). A file that does not fit the model is refused and the previous style stays.
    fn set_style(&mut self, _adapter: Option<&Path>) -> Result<(), ContinueError> {
        Err(ContinueError::Style(
            "this build continues without a model, so it has no styles".into(),
        ))
    }
}
