//! `cargo xtask score --model DIR FILE.mid [--adapter FILE] [--precision f32|f16|bf16|q8]`:
//! mean negative log-likelihood per token (nats) of a MIDI file under a model, decoder alone or
//! with a style adapter. Long pieces are scored in windows of the model's context.

use std::path::PathBuf;

use anyhow::{Context, Result};
use engine::midi::Score;
use engine::models::{LoadOptions, Model, Precision};

#[derive(clap::Args)]
pub struct Args {
    /// The model directory (config.json, tokenizer.json, decoder.safetensors, …).
    #[arg(long)]
    model: PathBuf,
    /// The MIDI file to score.
    file: PathBuf,
    /// A style adapter file to score with (default: the directory's adapter.safetensors if
    /// present, else the decoder alone).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Ignore the directory's adapter.safetensors and score with the decoder alone.
    #[arg(long, conflicts_with = "adapter")]
    no_adapter: bool,
    /// Weight precision: f32 (reference), f16, bf16 or q8 (8-bit, fast on CPU).
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    precision: Precision,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn parse_precision(s: &str) -> Result<Precision, String> {
    match s {
        "f32" => Ok(Precision::F32),
        "f16" => Ok(Precision::F16),
        "bf16" => Ok(Precision::BF16),
        "q8" => Ok(Precision::Q8),
        other => Err(format!("unknown precision `{other}` (f32, f16, bf16, q8)")),
    }
}

pub fn run(args: Args) -> Result<()> {
    let opts = LoadOptions {
        precision: args.precision,
        adapter: !args.no_adapter && args.adapter.is_none(),
        ..LoadOptions::default()
    };
    let mut model = Model::load(&args.model, &opts)?;
    if let Some(adapter) = &args.adapter {
        model.load_adapter(adapter, &opts)?;
    }
    let score = Score::read_file(&args.file)?;
    let ids = model.tokenizer.encode(&score);
    let result = model
        .score(&ids)
        .with_context(|| format!("scoring {}", args.file.display()))?;
    if args.json {
        let v = serde_json::json!({
            "file": args.file,
            "tokens": result.tokens,
            "mean_nll": result.mean_nll,
            "perplexity": result.perplexity(),
            "adapter": model.adapter.is_some(),
        });
        println!("{v}");
    } else {
        println!(
            "{}: {} tokens, mean NLL {:.4} nats/token (perplexity {:.2}){}",
            args.file.display(),
            result.tokens,
            result.mean_nll,
            result.perplexity(),
            if model.adapter.is_some() {
                ", with adapter"
            } else {
                ""
            }
        );
    }
    Ok(())
}
