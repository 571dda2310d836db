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
    /// Too few prime/continuation pairs to train an adapter on.
    #[error("{} hold {train} training and {val} validation pairs of {prime_bars}+{bars} bars (one meter, a note in every continuation bar, within the model's context); at least {needed} training and 1 validation pair are needed: add files or lower --prime-bars/--bars", dirs_list(.dirs))]
    TooFewPairs {
        dirs: Vec<PathBuf>,
        train: usize,
        val: usize,
        needed: usize,
        prime_bars: u32,
        bars: u32,
    },
    /// Sampling a continuation failed (a prime the grammar refuses, a bad setting).
    #[error("generating a continuation: {0}")]
    Generation(String),
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
