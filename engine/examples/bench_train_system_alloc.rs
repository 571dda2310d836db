//! `cargo xtask bench train` with the system allocator instead of mimalloc: the measurement
//! behind xtask's `#[global_allocator]`. Same step, same shapes; prints tokens/s.
//!
//! `RAYON_NUM_THREADS=1 cargo run --release -p continuator-engine --example bench_train_system_alloc`

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = engine::models::ModelConfig::small();
    let (batch, seq, steps) = (8, 512, 3);
    let mut times = engine::training::bench::step_seconds(
        &model,
        batch,
        seq,
        steps,
        &candle_core::Device::Cpu,
    )?;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "system allocator: {:.0} tokens/s (median of {steps} steps, batch {batch} x {seq}, {} threads)",
        (batch * seq) as f64 / median,
        candle_core::utils::get_num_threads()
    );
    Ok(())
}
