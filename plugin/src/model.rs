//! Loading the model the inference thread continues with.
//!
//! The default model is built into the plugin (see [`crate::engine_continuer::ModelSource`]).
//! When a model cannot be loaded (a broken adapter file, or a `CONTINUATOR_MODEL_DIR` without
//! one), the plugin says so in its status rather than pretending: it keeps listening and passing
//! MIDI through, and generates nothing.

use crate::inference::Loader;

/// The loader for the embedded default model, or for the user's adapter at `adapter_path`.
#[cfg(not(feature = "test-continuer"))]
pub fn loader(adapter_path: Option<String>) -> Loader {
    Box::new(move || {
        let source = crate::engine_continuer::ModelSource::from_env();
        let adapter = adapter_path.as_deref().map(std::path::Path::new);
        let continuer = crate::engine_continuer::EngineContinuer::load(&source, adapter)?;
        Ok(Box::new(continuer) as Box<dyn crate::continuer::Continuer>)
    })
}

/// Test builds for the headless hosts: a scripted continuation instead of a model.
#[cfg(feature = "test-continuer")]
pub fn loader(_adapter_path: Option<String>) -> Loader {
    tracing::warn!("continuator built with the `test-continuer` feature: scripted continuations");
    Box::new(|| Ok(Box::new(scripted::EighthNotes) as Box<dyn crate::continuer::Continuer>))
}

#[cfg(feature = "test-continuer")]
mod scripted {
    use std::ops::ControlFlow;

    use crate::continuer::{ContinueError, ContinueRequest, Continuer, GridNote};
    use engine::time::GridTicks;

    /// Eighth notes from the requested start to its end, walking up a scale.
    pub struct EighthNotes;

    impl Continuer for EighthNotes {
        fn continue_phrase(
            &mut self,
            request: &ContinueRequest,
            emit: &mut dyn FnMut(GridNote) -> ControlFlow<()>,
        ) -> Result<(), ContinueError> {
            let step = i64::from(GridTicks::PER_QUARTER / 2);
            let end = request.start.0 + request.length.0;
            for (i, onset) in (request.start.0..end).step_by(step as usize).enumerate() {
                let key = 60 + [0, 2, 4, 5, 7, 9, 11, 12][i % 8];
                let note = GridNote {
                    onset: GridTicks(onset),
                    duration: GridTicks(step - 1),
                    key,
                    velocity: 90,
                };
                if emit(note).is_break() {
                    break;
                }
            }
            Ok(())
        }
    }
}
