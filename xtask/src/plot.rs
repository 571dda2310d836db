//! `cargo xtask plot runs/NAME [--out FILE.png]`: the run's loss curves (training loss, its
//! moving average, validation loss, and the bigram baseline as a horizontal line) drawn from
//! `metrics.jsonl` with plotters. For an adapter run (`adapters/NAME.run`) it draws rewards,
//! accuracy, KL and the guards instead ([`adapter`]).
//!
//! plotters is built without its system-font backend (which needs fontconfig and freetype at
//! build time); text is rendered with ab_glyph from a TrueType font found on the system.

mod adapter;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use engine::training::pretrain::{BASELINE_FILE, METRICS_FILE};
use plotters::prelude::*;

#[derive(clap::Args)]
pub struct Args {
    /// The run folder.
    run: PathBuf,
    /// Where to write the PNG (default: RUN/loss.png; RUN/adapter.png for an adapter run).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Common places of a sans-serif TrueType font (Debian/Ubuntu, Fedora, macOS, Windows).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

fn register_font() -> Result<()> {
    let env = std::env::var("CONTINUATOR_FONT").ok();
    for path in env.iter().map(String::as_str).chain(FONTS.iter().copied()) {
        if let Ok(bytes) = std::fs::read(path) {
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(());
            }
        }
    }
    bail!("no TrueType font found for the plot's labels: set CONTINUATOR_FONT=/path/to/font.ttf")
}

pub fn run(args: Args) -> Result<()> {
    let path = args.run.join(METRICS_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    if adapter::is_adapter_run(&text) {
        register_font()?;
        let out = args.out.unwrap_or_else(|| args.run.join("adapter.png"));
        adapter::draw(&text, &path, &args.run, &out)?;
        println!("wrote {}", out.display());
        return Ok(());
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(step) = v["step"].as_f64() else {
            continue;
        };
        match v["kind"].as_str() {
            Some("train") => train.extend(v["loss"].as_f64().map(|l| (step, l))),
            Some("val") => val.extend(v["val_loss"].as_f64().map(|l| (step, l))),
            _ => {}
        }
    }
    if train.is_empty() {
        bail!("{}: no training steps recorded yet", path.display());
    }
    let bigram = std::fs::read_to_string(args.run.join(BASELINE_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["bigram_val_loss"].as_f64());
    let mut ema = Vec::with_capacity(train.len());
    let mut avg = None;
    for &(s, l) in &train {
        let a: f64 = avg.map_or(l, |a: f64| 0.98 * a + 0.02 * l);
        avg = Some(a);
        ema.push((s, a));
    }

    register_font()?;
    let out = args.out.unwrap_or_else(|| args.run.join("loss.png"));
    let max_step = train.last().map_or(1.0, |p| p.0).max(1.0);
    let values = train.iter().chain(&val).map(|p| p.1).chain(bigram);
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    // The first steps' loss (~ln V) dwarfs the rest; cap the axis a little above the baseline.
    let top = bigram.map_or(hi, |b| hi.min(b * 1.6)).max(lo + 0.1);
    {
        let root = BitMapBackend::new(&out, (1000, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: loss (nats/token)", args.run.display()),
                ("sans-serif", 24),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..max_step, (lo * 0.95).max(0.0)..top)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("nats/token")
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                train.iter().copied(),
                RGBColor(180, 200, 235),
            ))?
            .label("train (per step)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RGBColor(180, 200, 235)));
        chart
            .draw_series(LineSeries::new(ema, BLUE.stroke_width(2)))?
            .label("train (moving average)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        if !val.is_empty() {
            chart
                .draw_series(LineSeries::new(val.iter().copied(), RED.stroke_width(2)))?
                .label("validation")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(2)));
            chart.draw_series(val.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
        }
        if let Some(b) = bigram {
            chart
                .draw_series(LineSeries::new(
                    [(0.0, b), (max_step, b)],
                    BLACK.stroke_width(1),
                ))?
                .label("bigram baseline (validation)")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    println!("wrote {}", out.display());
    Ok(())
}
