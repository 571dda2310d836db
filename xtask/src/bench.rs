//! `cargo xtask bench ...`: throughput measurements that are not `cargo bench` micro-benchmarks
//! (they run over a folder of real files, and scripts compare them with Python tools).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use engine::midi::Score;
use engine::tokenizer::Tokenizer;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Tokenizer throughput (load + encode, one thread) over MIDI files.
    Tokenize(TokenizeArgs),
    /// Generation: time to first note, tokens/s and real-time factor, K = 1 and K = 4.
    Generate(crate::bench_generate::Args),
    /// Training throughput (tokens/s) of a preset on synthetic data; compare with
    /// scripts/bench_train_pytorch.py.
    Train(crate::bench_train::Args),
}

#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// A folder searched recursively for .mid/.midi files.
    #[arg(long, conflicts_with = "files")]
    data: Option<PathBuf>,
    /// A text file listing MIDI paths, one per line (what scripts/bench_tokenizer.py passes).
    #[arg(long)]
    files: Option<PathBuf>,
    /// Write `{"file": ..., "ids": [...]}` per line, for comparing with MidiTok.
    #[arg(long)]
    ids_out: Option<PathBuf>,
    /// Print the summary as one JSON line.
    #[arg(long)]
    json: bool,
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Tokenize(args) => tokenize(args),
        Command::Generate(args) => crate::bench_generate::run(args),
        Command::Train(args) => crate::bench_train::run(args),
    }
}

/// MIDI files under a folder, sorted, recursively.
pub fn midi_files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)
            .with_context(|| format!("{}: cannot list the folder", d.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("mid") || e.eq_ignore_ascii_case("midi"))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn tokenize(args: TokenizeArgs) -> Result<()> {
    let files = match (&args.data, &args.files) {
        (Some(dir), None) => midi_files_under(dir)?,
        (None, Some(list)) => std::fs::read_to_string(list)
            .with_context(|| format!("{}: cannot read the file list", list.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(PathBuf::from)
            .collect(),
        _ => bail!("give --data DIR or --files LIST"),
    };
    if files.is_empty() {
        bail!("no MIDI files to tokenize");
    }
    let tokenizer = Tokenizer::reference();
    let mut ids_out = match &args.ids_out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("{}: cannot create", p.display()))?,
        )),
        None => None,
    };
    let (mut tokens, mut failed, mut seconds) = (0usize, 0usize, 0.0f64);
    let mut ids = Vec::new();
    for file in &files {
        ids.clear();
        let start = Instant::now();
        let ok = match Score::read_file(file) {
            Ok(score) => {
                tokenizer.encode_into(&score, &mut ids);
                true
            }
            Err(err) => {
                tracing::warn!("{err}");
                false
            }
        };
        seconds += start.elapsed().as_secs_f64();
        tokens += ids.len();
        failed += usize::from(!ok);
        if let Some(out) = ids_out.as_mut() {
            let record =
                serde_json::json!({"file": file, "ids": if ok { Some(&ids) } else { None }});
            writeln!(out, "{record}")?;
        }
    }
    if let Some(mut out) = ids_out {
        out.flush()?;
    }
    let rate = tokens as f64 / seconds.max(1e-9);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"files": files.len(), "failed": failed, "tokens": tokens, "seconds": seconds, "tokens_per_second": rate})
        );
    } else {
        println!(
            "{} files ({failed} unreadable), {tokens} tokens in {seconds:.3} s: {rate:.0} tokens/s (load + encode, one thread)",
            files.len()
        );
    }
    Ok(())
}
