//! Loading the model the inference thread continues with.
//!
//! The engine's generation API (the generation issue) is being built; until it lands there is no
//! model to load, and the plugin says so in its status rather than pretending: it keeps listening
//! and passing MIDI through, and generates nothing.

use crate::continuer::ContinueError;
use crate::inference::Loader;

/// The loader for the embedded default model, or for the user's adapter at `adapter_path`.
pub fn loader(adapter_path: Option<String>) -> Loader {
    Box::new(move || {
        let source = adapter_path.as_deref().unwrap_or("the embedded model");
        Err(ContinueError::NoModel(format!(
            "cannot load {source}: the engine's generation API is not wired into the plugin yet"
        )))
    })
}
