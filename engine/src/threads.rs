//! The CPU threads inference runs on.
//!
//! Two programs generate: the `cargo xtask` commands, which own the machine, and the plugin,
//! which is a guest in a DAW whose audio threads must never be starved. Both need the same two
//! things, kept here so they cannot drift apart:
//!
//! - [`keep_candle_spin_pool_on_caller`]: candle 0.11 runs 8-bit matmuls and element-wise kernels
//!   on a private pool of *spinning* worker threads (sized by `CANDLE_NUM_THREADS`, else
//!   `RAYON_NUM_THREADS`, else one per core). In generation that pool stalled every decoding
//!   step: with two threads, 23–36 ms a step instead of 0.26 ms for the 8-bit `small` model
//!   (`cargo xtask bench generate --precision q8`, `RAYON_NUM_THREADS=2`, nothing else running).
//!   Keeping it on the calling thread removes the stall; rayon's threads still run the f32
//!   matmuls and attention in parallel.
//! - [`ThreadBudget`]: a rayon pool of a chosen size that generation runs inside. Everything the
//!   engine splits with rayon (decode attention, small matmuls, candle's own rayon kernels) then
//!   runs on those workers only, instead of on rayon's global pool or candle's one-per-core pool
//!   (see `models::model_dir::in_pool`, which runs inline when already on a pool thread).

use std::num::NonZeroUsize;

/// Keeps candle's spinning worker pool on the calling thread unless the user chose its size
/// (`CANDLE_NUM_THREADS`). Must run before the first 8-bit kernel: candle sizes the pool once per
/// process, on first use. Training should not call it (its large matmuls gain from the pool).
///
/// This writes a process environment variable, the only knob candle 0.11 offers; call it early,
/// from one thread (the xtask's `main`, the plugin's inference thread before it loads a model).
pub fn keep_candle_spin_pool_on_caller() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Why a [`ThreadBudget`] could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot start {workers} inference worker thread(s): {source}")]
pub struct ThreadBudgetError {
    workers: usize,
    #[source]
    source: rayon::ThreadPoolBuildError,
}

/// A fixed number of worker threads that inference runs on (see the module docs).
#[derive(Debug)]
pub struct ThreadBudget {
    pool: rayon::ThreadPool,
}

impl ThreadBudget {
    /// A pool of `workers` threads, named `{name}-{index}` (so a profiler or a DAW's CPU meter
    /// shows whose they are).
    pub fn new(workers: NonZeroUsize, name: &str) -> Result<Self, ThreadBudgetError> {
        let prefix = name.to_owned();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers.get())
            .thread_name(move |i| format!("{prefix}-{i}"))
            .build()
            .map_err(|source| ThreadBudgetError {
                workers: workers.get(),
                source,
            })?;
        Ok(Self { pool })
    }

    pub fn workers(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `f` on one of the budget's workers; whatever it splits with rayon stays on them.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::generation::{Generator, Settings};
    use crate::models::{Model, ModelConfig};
    use crate::tokenizer::Tokenizer;

    #[test]
    fn work_inside_a_budget_sees_only_its_workers() {
        for workers in [1, 3] {
            let budget = ThreadBudget::new(NonZeroUsize::new(workers).unwrap(), "test").unwrap();
            assert_eq!(budget.workers(), workers);
            let (seen, name) = budget.install(|| {
                (
                    rayon::current_num_threads(),
                    std::thread::current().name().map(str::to_owned),
                )
            });
            assert_eq!(seen, workers);
            assert!(name.is_some_and(|n| n.starts_with("test-")));
            // A parallel loop inside the budget runs on its threads only.
            use rayon::prelude::*;
            let threads: std::collections::HashSet<String> = budget.install(|| {
                (0..64)
                    .into_par_iter()
                    .map(|_| std::thread::current().name().unwrap_or("").to_owned())
                    .collect()
            });
            assert!(
                threads.iter().all(|n| n.starts_with("test-")),
                "{threads:?}"
            );
            assert!(threads.len() <= workers);
        }
    }

    #[test]
    fn generation_inside_a_budget_matches_generation_outside() {
        use crate::midi::{Note, Score};
        use crate::time::Ticks;
        use std::ops::ControlFlow;

        let mut config = ModelConfig::tiny();
        config.max_seq_len = 256;
        let model =
            Model::random(config, Tokenizer::reference(), &candle_core::Device::Cpu).unwrap();
        let generator = Generator::new(&model).unwrap();
        let settings = Settings {
            bars: 1,
            variations: 2,
            ..Settings::default()
        };
        let mut score = Score::new(480);
        score.notes = (0..8)
            .map(|i| Note {
                start: Ticks(i * 480),
                duration: Ticks(240),
                pitch: 60 + (i % 5) as u8,
                velocity: 80,
            })
            .collect();
        let prime = generator.prime(&score, None, &settings).unwrap();
        let run = || {
            generator
                .generate(&prime, &settings, None, |_| ControlFlow::Continue(()))
                .map(|(takes, _)| takes)
        };
        let budget = ThreadBudget::new(NonZeroUsize::MIN, "test").unwrap();
        let inside = budget.install(run).unwrap();
        assert_eq!(inside, run().unwrap());
    }
}
