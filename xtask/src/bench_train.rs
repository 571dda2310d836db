//! `cargo xtask bench train [--preset small] [--batch 8] [--seq 512] [--steps 5]`: training
//! tokens/s (forward, backward, AdamW) on random ids, the median over steps, printed in the same
//! JSON shape as `scripts/bench_train_pytorch.py` so the two compare line for line. Threads:
//! `RAYON_NUM_THREADS` (the script uses `torch.set_num_threads` with the same value).

use anyhow::Result;
use engine::models::ModelConfig;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "small", value_parser = ["tiny", "small", "seed"])]
    preset: String,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 512)]
    seq: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    steps: usize,
}

pub fn run(args: Args) -> Result<()> {
    let model = match args.preset.as_str() {
        "tiny" => ModelConfig::tiny(),
        "seed" => ModelConfig::seed(),
        _ => ModelConfig::small(),
    };
    let times = engine::training::bench::step_seconds(
        &model,
        args.batch,
        args.seq,
        args.steps,
        &candle_core::Device::Cpu,
    )?;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let tokens = (args.batch * args.seq) as f64;
    let threads = candle_core::utils::get_num_threads();
    println!(
        "{}",
        serde_json::json!({
            "impl": "candle",
            "preset": args.preset,
            "batch": args.batch,
            "seq": args.seq,
            "threads": threads,
            "step_seconds": times,
            "median_step_seconds": median,
            "tokens_per_second": tokens / median,
        })
    );
    Ok(())
}
