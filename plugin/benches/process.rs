//! `process()` cost per 64-sample block with events flowing: the real-time core as the plugin
//! runs it (transport following, capture, pass-through routing, scheduling, sorting the output),
//! without a host wrapper around it. Reports the median and 99th percentile.
//!
//! `cargo bench -p continuator --bench process`

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use continuator::bench::{
    playback_channel, BlockSettings, HostTransport, Incoming, OutNote, OutQueue, Processor,
    ScheduledNote, Shared, Tempo, MAX_SOUNDING,
};
use engine::time::{Beats, TimeSignature};

const BLOCK: u32 = 64;
const RATE: f32 = 48_000.0;
const BLOCKS: usize = 200_000;

fn main() {
    let shared = Arc::new(Shared::default());
    let (mut playback, rx) = playback_channel();
    let (mut processor, mut captured) = Processor::new(rx, shared.clone());
    let mut out = OutQueue::<OutNote>::with_capacity(2048, MAX_SOUNDING);
    let settings = BlockSettings {
        yield_on_play: false,
        ..BlockSettings::default()
    };
    shared.active_take.store(1, Ordering::Release);
    let beats_per_block = f64::from(BLOCK) * 2.0 / f64::from(RATE); // 120 BPM
    let mut position = 0.0;
    let mut times = Vec::with_capacity(BLOCKS);
    let mut emitted = 0usize;
    for block in 0..BLOCKS {
        // Keep the playback queue fed: a sixteenth note every eight blocks, a beat ahead.
        if block % 8 == 0 {
            let onset = position + 1.0;
            let note = ScheduledNote {
                take: 1,
                onset: Beats(onset),
                end: Beats(onset + 0.2),
                key: 60 + (block % 24) as u8,
                velocity: 100,
            };
            let _ = playback.push(note);
        }
        let host = HostTransport {
            playing: true,
            position: Some(Beats(position)),
            tempo: Tempo::from_bpm(120.0),
            time_signature: TimeSignature::new(4, 4),
            sample_rate: RATE,
            len: BLOCK,
        };
        let key = 40 + (block % 12) as u8;
        let started = Instant::now();
        processor.begin_block(&host, &settings, &mut out);
        processor.input(
            Incoming::NoteOn {
                timing: 5,
                channel: 0,
                key,
                velocity: 0.7,
            },
            &settings,
            &mut out,
        );
        processor.input(
            Incoming::NoteOff {
                timing: 40,
                channel: 0,
                key,
            },
            &settings,
            &mut out,
        );
        processor.end_block(&settings, &mut out);
        out.drain_sorted(|e| {
            std::hint::black_box(e);
            emitted += 1;
        });
        times.push(started.elapsed().as_nanos() as u64);
        while captured.pop().is_ok() {}
        position += beats_per_block;
    }
    times.sort_unstable();
    let median = times[times.len() / 2];
    let p99 = times[times.len() * 99 / 100];
    println!("process() per {BLOCK}-sample block, {BLOCKS} blocks, {emitted} generated events:");
    println!(
        "  median {:.3} µs, p99 {:.3} µs, max {:.3} µs",
        median as f64 / 1e3,
        p99 as f64 / 1e3,
        *times.last().unwrap() as f64 / 1e3
    );
}
