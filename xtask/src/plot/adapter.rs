//! The plot of an adapter run (`train adapter`): rewards and the discriminator's accuracy, the
//! KL to the frozen decoder, and the guards (validation NLL, copied bars, distinct 4-grams),
//! one panel each over the same steps, with every phase switch drawn as a vertical line.

use std::path::Path;

use anyhow::{bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Whether `metrics.jsonl` text comes from an adapter run.
pub fn is_adapter_run(text: &str) -> bool {
    text.lines().any(|l| {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .is_some_and(|v| v.get("accuracy_smoothed").is_some() || v.get("val_nll").is_some())
    })
}

type Series = Vec<(f64, f64)>;

#[derive(Default)]
struct Metrics {
    reward: Series,
    baseline: Series,
    accuracy: Series,
    kl: Series,
    nll: Series,
    copy: Series,
    real_copy: Option<f64>,
    distinct: Series,
    switches: Vec<(f64, String)>,
}

fn parse(text: &str) -> Metrics {
    let mut m = Metrics::default();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(step) = v["step"].as_f64() else {
            continue;
        };
        let push = |s: &mut Series, key: &str| {
            if let Some(x) = v[key].as_f64() {
                s.push((step, x));
            }
        };
        match v["kind"].as_str() {
            Some("train") => {
                push(&mut m.reward, "reward_sample");
                push(&mut m.baseline, "reward_baseline");
                push(&mut m.accuracy, "accuracy_smoothed");
                push(&mut m.kl, "kl");
            }
            Some("eval") => {
                push(&mut m.nll, "val_nll");
                push(&mut m.copy, "copy_share");
                push(&mut m.distinct, "distinct_4");
                m.real_copy = v["real_copy_share"].as_f64().or(m.real_copy);
            }
            Some("phase") => m.switches.push((
                step,
                format!(
                    "{}→{}",
                    v["from"].as_str().unwrap_or("?"),
                    v["to"].as_str().unwrap_or("?")
                ),
            )),
            _ => {}
        }
    }
    m
}

/// A line and its legend entry.
struct Line<'a> {
    label: &'a str,
    data: &'a [(f64, f64)],
    color: RGBColor,
}

/// The right-hand corner (top, middle or bottom third) where the fewest points of the
/// right half lie, so the legend hides as little of the latest steps as it can.
fn legend_position(lines: &[Line<'_>], max_step: f64, lo: f64, hi: f64) -> SeriesLabelPosition {
    let mut thirds = [0usize; 3];
    for &(x, y) in lines.iter().flat_map(|l| l.data.iter()) {
        if x >= max_step / 2.0 && hi > lo {
            let third = (((y - lo) / (hi - lo)) * 3.0).clamp(0.0, 2.0) as usize;
            thirds[third] += 1;
        }
    }
    match (0..3).min_by_key(|&i| (thirds[i], i == 0)) {
        Some(0) => SeriesLabelPosition::LowerRight,
        Some(2) => SeriesLabelPosition::UpperRight,
        _ => SeriesLabelPosition::MiddleRight,
    }
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    max_step: f64,
    lines: &[Line<'_>],
    fixed: Option<(f64, f64)>,
    switches: &[(f64, String)],
) -> Result<()> {
    let values = lines.iter().flat_map(|l| l.data.iter().map(|p| p.1));
    let (lo, hi) = fixed.unwrap_or_else(|| {
        let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        if lo.is_finite() {
            let pad = ((hi - lo) * 0.1).max(1e-3);
            (lo - pad, hi + pad)
        } else {
            (0.0, 1.0)
        }
    });
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_step, lo..hi)?;
    chart.configure_mesh().x_desc("step").draw()?;
    for l in lines.iter().filter(|l| !l.data.is_empty()) {
        let color = l.color;
        chart
            .draw_series(LineSeries::new(
                l.data.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(l.label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        if l.data.len() < 60 {
            chart.draw_series(l.data.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
    }
    for (step, label) in switches {
        chart.draw_series(LineSeries::new(
            [(*step, lo), (*step, hi)],
            RGBColor(120, 120, 120),
        ))?;
        chart.draw_series(std::iter::once(Text::new(
            label.clone(),
            (*step, hi - (hi - lo) * 0.08),
            ("sans-serif", 13),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(legend_position(lines, max_step, lo, hi))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Draws the three panels of an adapter run's metrics into `out`.
pub fn draw(text: &str, metrics_path: &Path, run: &Path, out: &Path) -> Result<()> {
    let m = parse(text);
    if m.accuracy.is_empty() && m.nll.is_empty() {
        bail!(
            "{}: no adapter training steps recorded yet",
            metrics_path.display()
        );
    }
    let max_step = m
        .accuracy
        .iter()
        .chain(&m.nll)
        .map(|p| p.0)
        .fold(1.0, f64::max);
    let real_copy: Series = m
        .real_copy
        .map(|r| vec![(0.0, r), (max_step, r)])
        .unwrap_or_default();
    let root = BitMapBackend::new(out, (1000, 1050)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, rest) = root.split_vertically(350);
    let (middle, bottom) = rest.split_vertically(350);
    panel(
        &top,
        &format!("{}: rewards and discriminator accuracy", run.display()),
        max_step,
        // The baseline first, so the reward is drawn over it: with the `others` baseline
        // their means per step are equal and the reward would otherwise be hidden.
        &[
            Line {
                label: "baseline's P(real)",
                data: &m.baseline,
                color: RGBColor(120, 160, 230),
            },
            Line {
                label: "reward (samples' P(real))",
                data: &m.reward,
                color: BLUE,
            },
            Line {
                label: "held-out accuracy (smoothed)",
                data: &m.accuracy,
                color: RED,
            },
        ],
        Some((0.0, 1.0)),
        &m.switches,
    )?;
    panel(
        &middle,
        "KL to the frozen decoder (nats/token)",
        max_step,
        &[Line {
            label: "KL estimate",
            data: &m.kl,
            color: RGBColor(0, 130, 0),
        }],
        None,
        &m.switches,
    )?;
    let (left, right) = bottom.split_horizontally(500);
    panel(
        &left,
        "validation NLL (nats/token)",
        max_step,
        &[Line {
            label: "true continuations",
            data: &m.nll,
            color: BLACK,
        }],
        None,
        &m.switches,
    )?;
    panel(
        &right,
        "copying and diversity",
        max_step,
        &[
            Line {
                label: "copied bars",
                data: &m.copy,
                color: RGBColor(200, 100, 0),
            },
            Line {
                label: "copied bars, real music",
                data: &real_copy,
                color: RGBColor(230, 180, 120),
            },
            Line {
                label: "distinct 4-grams",
                data: &m.distinct,
                color: RGBColor(130, 0, 160),
            },
        ],
        Some((0.0, 1.0)),
        &m.switches,
    )?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legend_for(data: &[(f64, f64)]) -> SeriesLabelPosition {
        let line = Line {
            label: "x",
            data,
            color: BLUE,
        };
        legend_position(&[line], 10.0, 0.0, 1.0)
    }

    #[test]
    fn the_legend_goes_where_the_latest_steps_leave_room() {
        let middle: Vec<(f64, f64)> = (0..=10).map(|s| (f64::from(s), 0.5)).collect();
        let top: Vec<(f64, f64)> = (0..=10).map(|s| (f64::from(s), 0.95)).collect();
        // Points in the left half do not count.
        let early_low_late_middle: Vec<(f64, f64)> = (0..=10)
            .map(|s| (f64::from(s), if s < 5 { 0.1 } else { 0.5 }))
            .collect();
        assert!(matches!(
            legend_for(&middle),
            SeriesLabelPosition::UpperRight
        ));
        assert!(matches!(legend_for(&top), SeriesLabelPosition::MiddleRight));
        assert!(matches!(
            legend_for(&early_low_late_middle),
            SeriesLabelPosition::UpperRight
        ));
        assert!(matches!(legend_for(&[]), SeriesLabelPosition::MiddleRight));
    }
}
