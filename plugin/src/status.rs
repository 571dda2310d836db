//! What the inference thread tells the GUI: whether a model is loaded, and what went wrong.
//!
//! The audio thread never touches this (it holds a lock); everything it reports goes through the
//! atomics in [`crate::shared`].

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ModelState {
    /// The inference thread has not started (the plugin was never activated).
    NotStarted = 0,
    Loading = 1,
    /// Listening, ready to continue.
    Ready = 2,
    /// Generating a take.
    Generating = 3,
    /// No model: MIDI still passes through, nothing is generated. See the message.
    Failed = 4,
}

impl ModelState {
    fn from_u8(value: u8) -> ModelState {
        match value {
            1 => ModelState::Loading,
            2 => ModelState::Ready,
            3 => ModelState::Generating,
            4 => ModelState::Failed,
            _ => ModelState::NotStarted,
        }
    }
}

#[derive(Debug, Default)]
pub struct ModelStatus {
    state: AtomicU8,
    message: Mutex<String>,
}

impl ModelStatus {
    pub fn state(&self) -> ModelState {
        ModelState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, state: ModelState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// The last error or notice, empty if none.
    pub fn message(&self) -> String {
        self.message.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn set_message(&self, message: impl Into<String>) {
        if let Ok(mut m) = self.message.lock() {
            *m = message.into();
        }
    }

    pub fn fail(&self, message: impl Into<String>) {
        let message = message.into();
        tracing::warn!(%message, "continuator: model unavailable");
        self.set_message(message);
        self.set_state(ModelState::Failed);
    }
}
