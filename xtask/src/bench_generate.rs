//! `cargo xtask bench generate [--model DIR] [--preset small|seed] [--bars 4] [--runs 3]
//! [--lengths 4,16,64]`:
//! time to first note, tokens/s and real-time factor of continuing a prime, for one
//! continuation (K = 1) and for four variations in one batch (K = 4), in one run so the ratio
//! compares like with like. Without `--model`, a randomly initialised model of the preset's
//! shape is timed (speed does not depend on the weights; the real-time factor does, through how
//! many tokens a bar takes, so give `--model` for it). Then the cost per bar at each of
//! `--lengths` bars, K = 1: past the context the window slides, and the table shows the slides,
//! what one costs and their share of the time.

use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use engine::generation::{GenerationStats, Generator, Settings};
use engine::midi::Score;
use engine::models::{LoadOptions, Model, ModelConfig, Precision};
use engine::tokenizer::Tokenizer;

use crate::train::Preset;

#[derive(clap::Args)]
pub struct Args {
    /// A model directory; without it, random weights of --preset's shape.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Shape to time without --model: small or seed (or tiny).
    #[arg(long, value_enum, default_value_t = Preset::Small)]
    preset: Preset,
    /// The prime (default: the bundled 4/4 example).
    #[arg(long)]
    prime: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    bars: u32,
    /// Timed runs per setting (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Weight precision: f32 or q8.
    #[arg(long, default_value = "f32", value_parser = crate::score::parse_precision)]
    precision: Precision,
    /// Continuation lengths (bars) for the cost-per-bar table, K = 1: past the context the
    /// window slides, and the cost per bar must stay flat.
    #[arg(long, value_delimiter = ',', default_value = "4,16,64")]
    lengths: Vec<u32>,
    /// Steering to time with (its sampling share shows in the table).
    #[command(flatten)]
    steering: crate::continuation::SteeringArgs,
}

pub fn run(args: Args) -> Result<()> {
    let model = match &args.model {
        Some(dir) => Model::load(
            dir,
            &LoadOptions {
                precision: args.precision,
                ..LoadOptions::default()
            },
        )?,
        None => random_model(&args.preset, args.precision)?,
    };
    let prime_path = args.prime.clone().unwrap_or_else(|| {
        crate::continuation::default_model_dir()
            .parent()
            .map(|assets| assets.join("examples/pop_4_4.mid"))
            .unwrap_or_default()
    });
    let score = Score::read_file(&prime_path)?;
    let generator = Generator::new(&model)?;
    let bpm = score.initial_bpm();
    let steering = args.steering.steering()?;
    println!("steering: {steering:?}");
    println!(
        "model {} ({}), prime {}, {} bars at {bpm:.0} BPM, {} threads",
        args.model.as_ref().map_or_else(
            || format!("random `{}`", args.preset),
            |d| d.display().to_string()
        ),
        format!("{:?}", args.precision).to_lowercase(),
        prime_path.display(),
        args.bars,
        candle_core::utils::get_num_threads(),
    );
    let runs = args.runs.max(1);
    let generate_bars = |bars: u32, seed: u64, k: usize| -> Result<(GenerationStats, f64)> {
        let settings = Settings {
            bars,
            temperature: 1.0,
            top_p: 0.95,
            seed,
            variations: k,
            steering,
            ..Settings::default()
        };
        let prime = generator.prime(&score, None, &settings)?;
        let (continuations, stats) = generator
            .generate(&prime, &settings, None, |_| ControlFlow::Continue(()))
            .context("generating")?;
        let quarters = continuations[0]
            .length
            .to_quarters(model.tokenizer.ticks_per_quarter())
            .0;
        Ok((stats, quarters * 60.0 / bpm))
    };
    let generate = |seed: u64, k: usize| generate_bars(args.bars, seed, k);
    // K = 1 for every seed a K = 4 run uses (run r: seeds r..r + 4), so that each batch can be
    // compared with the same four variations generated one at a time.
    let singles = (0..runs + 3)
        .map(|seed| generate(seed as u64, 1))
        .collect::<Result<Vec<_>>>()?;
    let batches = (0..runs)
        .map(|seed| generate(seed as u64, 4))
        .collect::<Result<Vec<_>>>()?;
    let mut per_k = Vec::new();
    for (k, results) in [(1usize, &singles[..runs]), (4, &batches[..])] {
        let mut results = results.to_vec();
        results.sort_by_key(|r| r.0.total);
        let (stats, playing) = results[results.len() / 2].clone();
        let total = stats.total.as_secs_f64();
        let step_seconds = (total - stats.prefill.as_secs_f64()).max(1e-9);
        println!(
            "K={k}: {:>6} tokens in {:>7.3} s = {:>7.0} tokens/s | prefill {:>6.1} ms | first note {:>6.1} ms | real-time factor {:.3} | sampling+grammar {:.1} % of decode time",
            stats.tokens,
            total,
            stats.tokens as f64 / total.max(1e-9),
            stats.prefill.as_secs_f64() * 1e3,
            stats.first_note.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
            total / playing.max(1e-9),
            100.0 * stats.sampling.as_secs_f64() / step_seconds,
        );
        per_k.push(step_seconds / stats.steps.max(1) as f64);
    }
    // What four variations in one batch cost against one variation of the same seeds (the mean
    // of the four generated alone), run by run: the batch runs until its longest variation
    // ends, so the whole-continuation ratio includes how unequal the four happen to be, while
    // the per-step ratio is the batching cost alone.
    let mut ratios: Vec<f64> = batches
        .iter()
        .enumerate()
        .map(|(r, (stats, _))| {
            let one: f64 = singles[r..r + 4]
                .iter()
                .map(|(s, _)| s.total.as_secs_f64())
                .sum::<f64>()
                / 4.0;
            stats.total.as_secs_f64() / one.max(1e-9)
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "K=4 / K=1 time, same seeds: median {:.2}x (range {:.2}-{:.2}x over {runs} runs); per decoding step {:.2}x ({:.3} vs {:.3} ms)",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1],
        per_k[1] / per_k[0].max(1e-12),
        per_k[1] * 1e3,
        per_k[0] * 1e3,
    );

    // Cost per bar as continuations grow past the context (K = 1, median of the runs).
    println!(
        "context {} tokens, the prime keeps at most {}:",
        generator.context(),
        generator.prime_budget()
    );
    for &bars in &args.lengths {
        let mut results = (0..runs)
            .map(|seed| generate_bars(bars, seed as u64, 1))
            .collect::<Result<Vec<_>>>()?;
        results.sort_by_key(|r| r.0.total);
        let (stats, playing) = &results[results.len() / 2];
        let total = stats.total.as_secs_f64();
        let per_slide = stats.sliding.as_secs_f64() / stats.slides.max(1) as f64;
        println!(
            "{bars:>4} bars: {:>6} tokens in {:>7.3} s = {:>6.1} ms a bar ({:>5.1} tokens a bar) | real-time factor {:.3} | {} slides, {:.1} ms each, {:.1} % of the time",
            stats.tokens,
            total,
            1e3 * total / f64::from(bars),
            stats.tokens as f64 / f64::from(bars),
            total / playing.max(1e-9),
            stats.slides,
            per_slide * 1e3,
            100.0 * stats.sliding.as_secs_f64() / total.max(1e-9),
        );
    }
    Ok(())
}

fn random_model(preset: &Preset, precision: Precision) -> Result<Model> {
    let config = ModelConfig {
        adapter: None,
        discriminator: None,
        ..preset.config()
    };
    let model = Model::random(config, Tokenizer::reference(), &Device::Cpu)?;
    if precision == Precision::Q8 {
        Ok(Model {
            decoder: model.decoder.quantize()?,
            ..model
        })
    } else {
        Ok(model)
    }
}
