//! The scenario, independent of the plugin API: a transport, a musician, and the checks
//! on what comes out. A host only has to turn one [`Block`] into a `process` call.

use anyhow::{bail, ensure, Result};

pub const SAMPLE_RATE: f64 = 48_000.0;
pub const BLOCK: u32 = 512;

/// How much faster than real time the transport runs for the scripted continuation. The plugin's
/// inference thread lives in real time; a host that processed the whole song in a few
/// milliseconds would leave it no moment to hear the pause and answer before the playhead had
/// passed. The real model is played in real time, as a musician would: it has to answer within
/// the rest of the bar like on stage, on whatever machine runs the test.
pub const SCRIPTED_SPEEDUP: f64 = 8.0;

fn pace(frames: u32, speedup: f64) {
    std::thread::sleep(std::time::Duration::from_secs_f64(
        f64::from(frames) / SAMPLE_RATE / speedup,
    ));
}

/// A note edge in or out of the plugin, at a sample offset of its block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    pub time: u32,
    pub channel: u8,
    pub key: u8,
    pub on: bool,
}

/// What the host tells the plugin about one block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Block {
    pub playing: bool,
    pub position: f64,
    pub bpm: f64,
    pub numerator: u16,
    pub denominator: u16,
    pub frames: u32,
}

/// Runs one block through the plugin and returns its output note edges.
pub trait Plugin {
    fn process(&mut self, block: &Block, input: &[Edge]) -> Result<Vec<Edge>>;
}

#[derive(Debug, Default)]
pub struct Report {
    pub thru: usize,
    pub generated_ons: usize,
    pub first_generated: Option<u64>,
    /// The generated notes' keys, in the order they started.
    pub generated_keys: Vec<u8>,
}

/// What the plugin under test is expected to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Nothing in particular (a build without a model passes MIDI through only).
    Anything,
    /// The `test-continuer` build: eighth notes from the bar line on, so the first generated
    /// note must land exactly on the bar line.
    Scripted,
    /// The real model: a continuation must come, starting on or after the bar line (a model
    /// may well begin with a rest) and on the grid.
    Model,
}

impl Expect {
    /// How fast the transport runs (see [`SCRIPTED_SPEEDUP`]).
    pub fn speedup(self) -> f64 {
        match self {
            Self::Model => 1.0,
            Self::Anything | Self::Scripted => SCRIPTED_SPEEDUP,
        }
    }

    /// From the hosts' command-line flags.
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Self {
        let mut expect = Self::Anything;
        for arg in args {
            match arg.as_str() {
                "--require-continuation" => expect = Self::Scripted,
                "--model-continuation" => expect = Self::Model,
                _ => {}
            }
        }
        expect
    }
}

/// What happens in the middle of the continuation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Twist {
    /// The tempo drops by a quarter.
    TempoChange,
    /// The transport loops back to the start of the continuation.
    LoopJump,
}

/// Plays four bars of quarter notes at `bpm` in `numerator/4`, then silence; checks pass-through,
/// the continuation (if the plugin generates one), the twist, and that nothing hangs after stop.
pub fn play(
    plugin: &mut dyn Plugin,
    bpm: f64,
    numerator: u16,
    twist: Twist,
    expect: Expect,
) -> Result<Report> {
    let bar = f64::from(numerator);
    let musician: Vec<(f64, u8, bool)> = (0..(4 * numerator))
        .flat_map(|b| {
            let key = 60 + (b % 5) as u8;
            [(f64::from(b), key, true), (f64::from(b) + 0.5, key, false)]
        })
        .collect();
    let mut block = Block {
        playing: true,
        position: 0.0,
        bpm,
        numerator,
        denominator: 4,
        frames: BLOCK,
    };
    let mut sample: u64 = 0;
    let mut report = Report::default();
    let mut sounding = std::collections::HashMap::<(u8, u8), i32>::new();
    // Generated NoteOns as (absolute sample, beat position by the clock of their block).
    let mut generated: Vec<(u64, f64)> = Vec::new();
    let mut twisted = false;
    let end = 10.0 * bar;
    while block.position < end {
        let beats_per_sample = block.bpm / 60.0 / SAMPLE_RATE;
        let block_end = block.position + f64::from(block.frames) * beats_per_sample;
        let input: Vec<Edge> = musician
            .iter()
            .filter(|(beat, _, _)| *beat >= block.position - 1e-9 && *beat < block_end - 1e-9)
            .map(|&(beat, key, on)| Edge {
                time: ((beat - block.position) / beats_per_sample).round() as u32,
                channel: 0,
                key,
                on,
            })
            .collect();
        let mut output = plugin.process(&block, &input)?;
        pace(block.frames, expect.speedup());
        for edge in &input {
            let Some(index) = output.iter().position(|o| o == edge) else {
                bail!("input {edge:?} did not pass through at {sample}");
            };
            output.remove(index);
            report.thru += 1;
        }
        for edge in output {
            let count = sounding.entry((edge.channel, edge.key)).or_default();
            *count += if edge.on { 1 } else { -1 };
            ensure!(
                (0..=1).contains(count),
                "unbalanced {edge:?} at sample {sample}"
            );
            if edge.on {
                let beat = block.position + f64::from(edge.time) * beats_per_sample;
                generated.push((sample + u64::from(edge.time), beat));
                report.generated_keys.push(edge.key);
            }
        }
        sample += u64::from(block.frames);
        block.position = block_end;
        if !twisted && !generated.is_empty() && block.position > 6.5 * bar {
            twisted = true;
            match twist {
                Twist::TempoChange => block.bpm *= 0.75,
                Twist::LoopJump => {
                    block.position = 5.0 * bar;
                    let output = plugin.process(&block, &[])?;
                    for edge in output {
                        *sounding.entry((edge.channel, edge.key)).or_default() +=
                            if edge.on { 1 } else { -1 };
                    }
                    ensure!(
                        sounding.values().all(|&c| c == 0),
                        "a loop jump left notes sounding"
                    );
                    sample += u64::from(block.frames);
                    block.position += f64::from(block.frames) * block.bpm / 60.0 / SAMPLE_RATE;
                }
            }
        }
    }
    block.playing = false;
    for edge in plugin.process(&block, &[])? {
        *sounding.entry((edge.channel, edge.key)).or_default() += if edge.on { 1 } else { -1 };
    }
    ensure!(
        sounding.values().all(|&c| c == 0),
        "notes left sounding after stop: {sounding:?}"
    );
    ensure!(
        report.thru == musician.len(),
        "only {} of {} input events passed",
        report.thru,
        musician.len()
    );

    report.generated_ons = generated.len();
    report.first_generated = generated.first().map(|g| g.0);
    if let Some(&(first, beat)) = generated.first() {
        // Four bars end at bar 4; a beat of silence later the next bar line is bar 5.
        let expected = (5.0 * bar * 60.0 / bpm * SAMPLE_RATE).round() as u64;
        if expect == Expect::Model {
            ensure!(
                first >= expected,
                "continuation starts at sample {first} (beat {beat}), before the bar line at {expected}"
            );
        } else {
            ensure!(
                first == expected,
                "continuation starts at sample {first} (beat {beat}), not {expected}"
            );
        }
        for &(at, beat) in &generated {
            let ticks = beat * 12.0;
            let off_grid_samples = (ticks - ticks.round()).abs() / 12.0 * 60.0 / bpm * SAMPLE_RATE;
            ensure!(
                off_grid_samples <= 1.5,
                "onset at sample {at} is off the grid (beat {beat})"
            );
        }
    }
    Ok(report)
}

/// Plays every scenario (120 BPM 4/4 and 90 BPM 3/4, each with a tempo change and with a loop
/// jump) on a freshly loaded plugin, prints a line for each, and fails if any failed, or, unless
/// `expect` is [`Expect::Anything`], if any produced no continuation. Both hosts run exactly this.
pub fn play_all<P: Plugin>(mut load: impl FnMut() -> Result<P>, expect: Expect) -> Result<()> {
    let require_continuation = expect != Expect::Anything;
    let mut failures = 0;
    for (bpm, numerator) in [(120.0, 4), (90.0, 3)] {
        for twist in [Twist::TempoChange, Twist::LoopJump] {
            let mut plugin = load()?;
            match play(&mut plugin, bpm, numerator, twist, expect) {
                Ok(report) => {
                    println!(
                        "{bpm} BPM {numerator}/4 {twist:?}: {} events passed through, {} generated notes{}",
                        report.thru,
                        report.generated_ons,
                        report.first_generated.map(|s| format!(", first at sample {s}")).unwrap_or_default()
                    );
                    if require_continuation && report.generated_ons == 0 {
                        println!("  FAILED: no continuation");
                        failures += 1;
                    }
                }
                Err(err) => {
                    println!("{bpm} BPM {numerator}/4 {twist:?}: FAILED: {err:#}");
                    failures += 1;
                }
            }
        }
    }
    ensure!(failures == 0, "{failures} scenario(s) failed");
    Ok(())
}
