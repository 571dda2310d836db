//! Training errors. Every error that concerns a file or folder names it.

use std::path::PathBuf;

/// Why training (or preparing its data) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The I/O error is part of the message and deliberately not a `source`: callers that
    /// print the error chain (anyhow's `{:#}`) would show it twice.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("no MIDI files (.mid, .midi) under {}", dirs_list(.dirs))]
    NoMidi { dirs: Vec<PathBuf> },
    #[error("none of the {files} MIDI files under {} could be tokenized (see the skipped-file list)", dirs_list(.dirs))]
    NothingUsable { dirs: Vec<PathBuf>, files: usize },
    #[error("{}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    #[error("invalid training setting: {0}")]
    Config(String),
    /// The loss stopped being a finite number: the run diverged.
    #[error("the loss became {loss} at step {step}; lower --lr")]
    Diverged { step: u64, loss: f64 },
    /// A trainable variable got no gradient from the backward pass: it was computed with
    /// kernels that have no backward (see `docs/candle-cpu-training.md`).
    #[error("`{name}` got no gradient (computed with inference kernels?)")]
    MissingGradient { name: String },
    #[error(transparent)]
    Model(#[from] crate::models::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

fn dirs_list(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |error| Self::Io { path, error }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
