//! `--soak N`: N takes in a row, with the transport doing what a session does to a plugin.
//!
//! Call and response on a one-bar phrase (Listen and Continue bars 1, Auto silence a quarter
//! beat): the musician plays three legato quarter notes, Continuator answers on the next bar line, the
//! musician plays again. Every 7th take the transport loops back mid-take, every 11th it stops for
//! a moment, every 13th the plugin is bypassed for a bar; those takes are cut short on purpose.
//! Every other phrase must get an answer (at most [`MAX_SILENT_ANSWERS`] of them silent), no note
//! may be left sounding at a stop or at the end, and the host's resident memory may grow by at
//! most 5 % from take 100 to take N. The transport runs at [`SOAK_SPEEDUP`] times real time.

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use continuator_host_scenario::{Block, Edge, Plugin as _, BLOCK, SAMPLE_RATE};

use crate::ClapPlugin;

const SOAK_SPEEDUP: f64 = 8.0;
const MAX_GROWTH: f64 = 0.05;
/// Undisturbed phrases whose answer bar may stay silent. Every phrase is asked for (the plugin's
/// debug log shows one `continuing` per phrase), but the host only hears notes: a one-bar answer
/// can be a rest, and on a starved machine its notes can all come too late for the bar (they are
/// dropped and counted, never played late). 1,000 takes measured 8 (0.8 %) while two compilers
/// shared the two cores.
const MAX_SILENT_ANSWERS: f64 = 0.02;

/// The process's resident set, in bytes (Linux `/proc/self/statm`).
fn resident_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("reading /proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .context("no resident size in /proc/self/statm")?;
    Ok(pages * 4096)
}

struct Soak {
    plugin: ClapPlugin,
    block: Block,
    sounding: HashMap<(u8, u8), i32>,
    /// Generated NoteOns since the phrase ended.
    answered: usize,
}

impl Soak {
    fn step(&mut self, input: &[Edge]) -> Result<()> {
        let output = self.plugin.process(&self.block, input)?;
        for edge in output {
            if input.contains(&edge) {
                continue;
            }
            let count = self.sounding.entry((edge.channel, edge.key)).or_default();
            *count += if edge.on { 1 } else { -1 };
            ensure!(
                (0..=1).contains(count),
                "unbalanced {edge:?} at beat {}",
                self.block.position
            );
            if edge.on {
                self.answered += 1;
            }
        }
        if self.block.playing {
            self.block.position += f64::from(BLOCK) * self.block.bpm / 60.0 / SAMPLE_RATE;
        }
        std::thread::sleep(std::time::Duration::from_secs_f64(
            f64::from(BLOCK) / SAMPLE_RATE / SOAK_SPEEDUP,
        ));
        Ok(())
    }

    /// Runs until the transport reaches `beat`, with the musician's (beat, key, on) edges.
    fn run_until(&mut self, beat: f64, musician: &[(f64, u8, bool)]) -> Result<()> {
        while self.block.position < beat {
            let per_sample = self.block.bpm / 60.0 / SAMPLE_RATE;
            let end = self.block.position + f64::from(BLOCK) * per_sample;
            let input: Vec<Edge> = musician
                .iter()
                .filter(|(b, _, _)| *b >= self.block.position && *b < end)
                .map(|&(b, key, on)| Edge {
                    time: ((b - self.block.position) / per_sample) as u32,
                    channel: 0,
                    key,
                    on,
                })
                .collect();
            self.step(&input)?;
        }
        Ok(())
    }

    fn silent(&self) -> bool {
        self.sounding.values().all(|&c| c == 0)
    }
}

pub fn soak(mut plugin: ClapPlugin, takes: u32) -> Result<()> {
    ensure!(
        takes >= 100,
        "--soak needs at least 100 takes (memory is compared from take 100)"
    );
    // CLAP values: step indices for Listen/Continue bars (1 bar), normalized for Auto silence.
    plugin.set_param("Listen bars", 0.0)?;
    plugin.set_param("Continue bars", 0.0)?;
    plugin.set_param("Auto silence", 0.0)?;
    let mut soak = Soak {
        plugin,
        block: Block {
            playing: true,
            position: 0.0,
            bpm: 120.0,
            numerator: 4,
            denominator: 4,
            frames: BLOCK,
        },
        sounding: HashMap::new(),
        answered: 0,
    };
    let mut memory_at_100 = None;
    let mut dropped = Vec::new();
    for take in 1..=takes {
        // The musician's phrase: three legato quarter notes from the next bar line (gaps shorter
        // than Auto silence, so only the pause after them is heard as one).
        let bar = (soak.block.position / 4.0).ceil() * 4.0;
        let key = 60 + (take % 12) as u8;
        let phrase: Vec<(f64, u8, bool)> = (0..3)
            .flat_map(|b| {
                let at = bar + f64::from(b);
                [
                    (at, key + b as u8 * 2, true),
                    (at + 0.9, key + b as u8 * 2, false),
                ]
            })
            .collect();
        soak.run_until(bar + 4.0, &phrase)?;
        soak.answered = 0;
        let disturbed = if take % 7 == 0 {
            // Loop back into the phrase's bar, half a bar into the answer.
            soak.run_until(bar + 6.0, &[])?;
            soak.block.position = bar;
            soak.step(&[])?;
            ensure!(
                soak.silent(),
                "a loop jump left notes sounding (take {take})"
            );
            true
        } else if take % 11 == 0 {
            soak.run_until(bar + 5.0, &[])?;
            soak.block.playing = false;
            for _ in 0..8 {
                soak.step(&[])?;
            }
            ensure!(soak.silent(), "a stop left notes sounding (take {take})");
            soak.block.playing = true;
            true
        } else if take % 13 == 0 {
            soak.plugin.set_param("Bypass", 1.0)?;
            soak.run_until(bar + 8.0, &[])?;
            ensure!(soak.silent(), "bypass left notes sounding (take {take})");
            soak.plugin.set_param("Bypass", 0.0)?;
            soak.step(&[])?;
            true
        } else {
            // The answer: the bar after the phrase.
            soak.run_until(bar + 8.0, &[])?;
            false
        };
        if !disturbed && soak.answered == 0 {
            dropped.push(take);
        }
        if take == 100 {
            memory_at_100 = Some(resident_bytes()?);
        }
        if take % 100 == 0 {
            eprintln!(
                "soak: {take} takes, resident {:.1} MB",
                resident_bytes()? as f64 / 1e6
            );
        }
    }
    soak.block.playing = false;
    soak.step(&[])?;
    ensure!(
        soak.silent(),
        "notes left sounding at the end: {:?}",
        soak.sounding
    );
    let start = memory_at_100.context("never reached take 100")?;
    let end = resident_bytes()?;
    let growth = end as f64 / start as f64 - 1.0;
    println!(
        "soak: {takes} takes, {} without an answer, resident {:.1} MB at take 100 and {:.1} MB \
         at take {takes} ({:+.2} %)",
        dropped.len(),
        start as f64 / 1e6,
        end as f64 / 1e6,
        growth * 100.0
    );
    ensure!(
        dropped.len() as f64 <= MAX_SILENT_ANSWERS * f64::from(takes),
        "{} takes without an answer (at most {:.0} %): {dropped:?}",
        dropped.len(),
        MAX_SILENT_ANSWERS * 100.0
    );
    ensure!(
        growth <= MAX_GROWTH,
        "resident memory grew {:.1} % from take 100 (at most {:.0} %)",
        growth * 100.0,
        MAX_GROWTH * 100.0
    );
    soak.plugin.close();
    Ok(())
}
