//! `cargo xtask`: Continuator's command line.
//!
//! Each subcommand lives in the module named for it; this file only parses arguments and
//! dispatches, so that commands stay independent of each other.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod bench_generate;
mod bench_train;
mod continuation;
mod eval;
mod plot;
mod score;
mod systems;
mod tokenize;
mod train;
mod visualize;
mod windows;

/// Training allocates and frees large tensors every step; glibc malloc returns the pages and the
/// kernel zeroes them again. mimalloc reuses them (measured ~1.7x faster training on 2 cores).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    version,
    about = "Continuator: continue a MIDI phrase in its style"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Continue a MIDI phrase: writes the prime and its continuation.
    Continue(continuation::Args),
    /// Print the REMI tokens of a MIDI file (MidiTok 3.1.0 ids).
    Tokenize(tokenize::Args),
    /// Throughput measurements over real files (see scripts/ for the Python comparisons).
    #[command(subcommand)]
    Bench(bench::Command),
    /// Mean NLL per token (nats) of a MIDI file under a model (and optional style adapter).
    Score(score::Args),
    /// Train networks: `train decoder` pretrains on MIDI folders, `train export` writes a model
    /// directory from a run.
    #[command(subcommand)]
    Train(train::Command),
    /// Measure continuations against the truth: the model, the decoder alone, a Markov
    /// continuator and "repeat the last bars" on the same seeded windows.
    Eval(eval::Args),
    /// Write a static site to see and hear continuations next to the truth.
    Visualize(visualize::Args),
    /// Draw a run's loss curves to a PNG (RUN/loss.png).
    Plot(plot::Args),
    /// Build the plugin and bundle it into target/bundled (CLAP and VST3):
    /// `cargo xtask bundle continuator --release`.
    Bundle {
        /// The package to bundle, then any `cargo build` arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The inference commands keep candle's spinning worker pool on the calling thread (see
/// [`engine::threads`] for the stall it causes otherwise); training keeps candle's default.
/// Called first thing, before any thread exists.
fn limit_candle_pool_for_inference() {
    let args: Vec<String> = std::env::args().skip(1).take(2).collect();
    let training = match args.first().map(String::as_str) {
        // Adapter training spends most of its time generating, like `continue`.
        Some("train") => args.get(1).map(String::as_str) != Some("adapter"),
        Some("bench") => args.get(1).map(String::as_str) == Some("train"),
        _ => false,
    };
    if !training {
        engine::threads::keep_candle_spin_pool_on_caller();
    }
}

fn main() {
    limit_candle_pool_for_inference();
    // The bundler parses its own arguments (`bundle <package> [cargo build args]`), so it gets
    // them untouched, before clap could reject a cargo flag it does not know.
    if std::env::args().nth(1).as_deref() == Some("bundle") {
        if let Err(err) = nice_plug_xtask::main() {
            eprintln!("error: {err:#}");
            std::process::exit(1);
        }
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,xtask::train=info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: `nohup … > run.log` logs stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(err) = run(Cli::parse()) {
        // A reader that stopped reading (`cargo xtask tokenize f.mid | head`) is not a failure.
        let broken_pipe = err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe);
        if !broken_pipe {
            eprintln!("error: {err:#}");
            std::process::exit(1);
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Continue(args) => continuation::run(args),
        Command::Tokenize(args) => tokenize::run(args),
        Command::Score(args) => score::run(args),
        Command::Train(command) => train::run(command),
        Command::Plot(args) => plot::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Visualize(args) => visualize::run(args),
        Command::Bench(command) => bench::run(command),
        Command::Bundle { args } => nice_plug_xtask::main_with_args(
            "cargo xtask",
            std::iter::once("bundle".into()).chain(args),
        ),
    }
}
