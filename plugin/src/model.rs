//! Loading the model the inference thread continues with.
//!
//! The default model is built into the plugin (see [`crate::engine_continuer::ModelSource`]).
//! When a model cannot be loaded (a broken adapter file, or a `CONTINUATOR_MODEL_DIR` without
//! one), the plugin says so in its status rather than pretending: it keeps listening and passing
//! MIDI through, and generates nothing.

use crate::inference::Loader;

/// The loader for the embedded default model (or `CONTINUATOR_MODEL_DIR`'s). The project's
/// style adapter is applied afterwards (see [`crate::continuer::Continuer::set_style`]), so that
/// a style file that does not fit leaves a working model.
#[cfg(not(feature = "test-continuer"))]
pub fn loader() -> Loader {
    Box::new(move || {
        let source = crate::engine_continuer::ModelSource::from_env();
        let continuer = crate::engine_continuer::EngineContinuer::load(&source, None)?;
        Ok(Box::new(continuer) as Box<dyn crate::continuer::Continuer>)
    })
}

/// Test builds for the headless hosts: a scripted continuation instead of a model.
#[cfg(feature = "test-continuer")]
pub fn loader() -> Loader {
    tracing::warn!("continuator built with the `test-continuer` feature: scripted continuations");
    Box::new(|| Ok(Box::new(scripted::EighthNotes) as Box<dyn crate::continuer::Continuer>))
}

#[cfg(feature = "test-continuer")]
mod scripted {
    use std::ops::ControlFlow;

    use crate::continuer::{
        ContinueError, ContinueRequest, Continuer, Generated, GridNote, Variation,
    };
    use engine::time::GridTicks;

    /// Eighth notes from the requested start to its end, walking up a scale; variation `v`
    /// starts `v` steps higher on it, so candidates differ where a screenshot can see it.
    pub struct EighthNotes;

    impl Continuer for EighthNotes {
        fn continue_phrase(
            &mut self,
            request: &ContinueRequest,
            emit: &mut dyn FnMut(Variation, GridNote) -> ControlFlow<()>,
        ) -> Result<Generated, ContinueError> {
            let step = i64::from(GridTicks::PER_QUARTER / 2);
            let end = request.start.0 + request.length.0;
            for (i, onset) in (request.start.0..end).step_by(step as usize).enumerate() {
                for variation in 0..request.variations.max(1) as usize {
                    let key = 60 + [0, 2, 4, 5, 7, 9, 11, 12][(i + variation) % 8];
                    let note = GridNote {
                        onset: GridTicks(onset),
                        duration: GridTicks(step - 1),
                        key,
                        velocity: 90,
                    };
                    if emit(variation, note).is_break() {
                        return Ok(Generated::default());
                    }
                }
            }
            Ok(Generated::default())
        }
    }
}
