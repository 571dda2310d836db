//! `--state-roundtrip`: a project saved and reopened keeps the plugin as the musician left it.
//!
//! A first instance gets parameters off their defaults (three variations, the second one picked,
//! and more), plays the 120 BPM 4/4 scenario until its continuation has played, and its state is
//! saved through the CLAP state extension. A fresh instance loads that state; every parameter
//! must read back the same, and pressing Replay (a parameter, as automation would) must play the
//! same take again from the next bar line: the same keys, in the same order.

use anyhow::{ensure, Context, Result};
use clack_extensions::state::PluginState;
use continuator_host_scenario::{self as scenario, Block, Plugin as _, BLOCK, SAMPLE_RATE};

use crate::ClapPlugin;

/// Parameters set off their defaults before saving: (name, CLAP value). nice-plug's CLAP values
/// are step indices for stepped parameters and normalized values for continuous ones.
const CHANGES: &[(&str, f64)] = &[
    ("Variations", 2.0),
    ("Pick", 1.0),
    ("Temperature", 0.3),
    ("Top-p", 0.5),
    ("Key", 5.0),
    ("Density", 4.0),
    ("Faithfulness", 0.6),
    ("Lowest note", 9.0),
    ("Output channel", 2.0),
];

fn save(plugin: &mut ClapPlugin) -> Result<Vec<u8>> {
    let state: PluginState = plugin
        .instance
        .plugin_handle()
        .get_extension()
        .context("the plugin has no CLAP state extension")?;
    let mut bytes = Vec::new();
    state
        .save(&plugin.instance.plugin_handle(), &mut bytes)
        .map_err(|e| anyhow::anyhow!("saving the state: {e}"))?;
    Ok(bytes)
}

fn load(plugin: &mut ClapPlugin, bytes: &[u8]) -> Result<()> {
    let state: PluginState = plugin
        .instance
        .plugin_handle()
        .get_extension()
        .context("the plugin has no CLAP state extension")?;
    state
        .load(&plugin.instance.plugin_handle(), &mut &bytes[..])
        .map_err(|e| anyhow::anyhow!("loading the state: {e}"))
}

pub fn roundtrip(mut load_plugin: impl FnMut() -> Result<ClapPlugin>) -> Result<()> {
    let mut first = load_plugin()?;
    let defaults = first.parameters()?;
    for &(name, value) in CHANGES {
        first.set_param(name, value)?;
    }
    let report = scenario::play(
        &mut first,
        120.0,
        4,
        scenario::Twist::TempoChange,
        scenario::Expect::Scripted,
    )?;
    ensure!(
        !report.generated_keys.is_empty(),
        "the first instance played no continuation"
    );
    let before = first.parameters()?;
    for &(name, _) in CHANGES {
        let (was, now) = defaults
            .iter()
            .zip(&before)
            .find(|(d, _)| d.0 == name)
            .map(|(d, b)| (d.2, b.2))
            .with_context(|| format!("no parameter {name}"))?;
        ensure!(was != now, "{name} did not change ({was} → {now})");
    }
    let bytes = save(&mut first)?;
    first.close();

    let mut second = load_plugin()?;
    load(&mut second, &bytes)?;
    let after = second.parameters()?;
    ensure!(
        before == after,
        "parameters changed on the way through the saved state:\n{:?}\n{:?}",
        before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b != a)
            .map(|(b, _)| b)
            .collect::<Vec<_>>(),
        after
            .iter()
            .zip(&before)
            .filter(|(a, b)| b != a)
            .map(|(a, _)| a)
            .collect::<Vec<_>>()
    );

    // Replay: the restored take plays again from the next bar line.
    let mut block = Block {
        playing: true,
        position: 0.0,
        bpm: 120.0,
        numerator: 4,
        denominator: 4,
        frames: BLOCK,
    };
    let beats_per_block = f64::from(BLOCK) * 2.0 / SAMPLE_RATE;
    let mut keys = Vec::new();
    let mut sounding = 0i32;
    let mut index = 0u32;
    // A few blocks for the inference thread to load and restore, then the button, then enough
    // bars for the whole take (its continuation is four bars, starting at most a bar later).
    while block.position < 14.0 * 4.0 {
        match index {
            40 => second.set_param("Replay take", 1.0)?,
            41 => second.set_param("Replay take", 0.0)?,
            _ => {}
        }
        for edge in second.process(&block, &[])? {
            sounding += if edge.on { 1 } else { -1 };
            if edge.on {
                keys.push(edge.key);
            }
        }
        block.position += beats_per_block;
        index += 1;
        std::thread::sleep(std::time::Duration::from_secs_f64(
            f64::from(BLOCK) / SAMPLE_RATE / scenario::SCRIPTED_SPEEDUP,
        ));
    }
    block.playing = false;
    for edge in second.process(&block, &[])? {
        sounding += if edge.on { 1 } else { -1 };
    }
    second.close();
    ensure!(sounding == 0, "{sounding} notes left sounding after stop");
    ensure!(
        keys == report.generated_keys,
        "the reopened take played {keys:?}, the saved one was {:?}",
        report.generated_keys
    );
    println!(
        "state: {} parameters and a {}-note take came back; Replay played it again",
        after.len(),
        keys.len()
    );
    Ok(())
}
