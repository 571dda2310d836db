//! `cargo xtask tokenize FILE.mid [--ids] [--tokenizer tokenizer.json]`: the REMI tokens of a
//! file, for eyes (`Type_Value` strings) or for other tools (`--ids`: one JSON array).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use engine::midi::Score;
use engine::tokenizer::Tokenizer;

#[derive(clap::Args)]
pub struct Args {
    /// The MIDI file to tokenize.
    file: PathBuf,
    /// Print a JSON array of ids on one line instead of token strings.
    #[arg(long)]
    ids: bool,
    /// A MidiTok `tokenizer.json` (default: the built-in MidiTok 3.1.0 REMI reference).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let tokenizer = match &args.tokenizer {
        Some(path) => Tokenizer::from_file(path)?,
        None => Tokenizer::reference(),
    };
    let score = Score::read_file(&args.file)?;
    let ids = tokenizer.encode(&score);
    // Written through a handle (not `println!`) so that a closed pipe (`| head`) is an error
    // the caller ends quietly on, never a panic.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.ids {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&ids).context("serializing ids")?
        )?;
    } else {
        for token in tokenizer.token_strings(&ids) {
            writeln!(out, "{token}")?;
        }
    }
    out.flush()?;
    Ok(())
}
