//! Takeover latency: from a trigger (the inference thread calling the continuer) to the first
//! continuation note ready, with the plugin's built-in model (or the one in `CONTINUATOR_MODEL_DIR`).
//! Measured cold (the whole prime prefilled at the trigger) and warm (the listening window
//! already prefilled, as the inference thread does bar by bar while the musician plays).
//!
//! `cargo bench -p continuator --bench takeover`

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use continuator::bench::{
    ContinueRequest, Continuer, EngineContinuer, GridNote, GridPrime, ModelSource,
};
use engine::time::{GridTicks, TimeSignature};

fn main() {
    let source = ModelSource::from_env();
    let mut continuer = EngineContinuer::load(&source, None).expect("the model loads");
    let which = source.to_string();
    // Four bars of eighth notes in 4/4, continued from the next bar line for four bars.
    let sig = TimeSignature::default();
    let notes = (0..32)
        .map(|i| GridNote {
            onset: GridTicks(i * 6),
            duration: GridTicks(5),
            key: 60 + (i % 12) as u8,
            velocity: 80,
        })
        .collect();
    let request = ContinueRequest {
        prime: GridPrime {
            time_signature: sig,
            bars: 4,
            notes,
        },
        start: GridTicks(4 * sig.grid_ticks_per_bar().0),
        length: GridTicks(4 * sig.grid_ticks_per_bar().0),
        temperature: 1.0,
        top_p: 0.95,
        seed: 0,
        steering: engine::steering::Steering::default(),
        memory: Vec::new(),
        variations: 1,
    };
    for warm in [false, true] {
        let mut firsts = Vec::new();
        for seed in 0..20 {
            let request = ContinueRequest {
                seed,
                ..request.clone()
            };
            if warm {
                continuer.listening(&request.prime);
            }
            let started = Instant::now();
            let mut first = None;
            continuer
                .continue_phrase(&request, &mut |_, _| {
                    first = Some(started.elapsed());
                    ControlFlow::Break(())
                })
                .unwrap();
            firsts.push(first.unwrap_or(Duration::MAX));
        }
        firsts.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mode = if warm {
            "with incremental prefill"
        } else {
            "cold"
        };
        println!("takeover (trigger → first note ready), {which}, {mode}, 20 runs:");
        println!(
            "  median {:.1} ms, worst {:.1} ms",
            ms(firsts[firsts.len() / 2]),
            ms(firsts[firsts.len() - 1])
        );
    }
}
