//! Continuator's engine: everything that thinks, with no plugin or GUI dependencies.
//!
//! The pipeline is MIDI file → [`midi::Score`] → REMI token ids ([`tokenizer`]) → models →
//! sampling under the token [`grammar`] → ids → notes → MIDI file. Each concept lives in the
//! module named for it.

pub mod baselines;
pub mod fs;
pub mod generation;
pub mod grammar;
mod hash;
pub mod key;
pub mod metrics;
pub mod midi;
pub mod models;
pub mod rerank;
pub mod sampling;
pub mod steering;
pub mod threads;
pub mod time;
pub mod tokenizer;
pub mod training;
