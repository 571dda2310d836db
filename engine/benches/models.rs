//! Model inference speed: batch-1 decoding with a KV cache (tokens/s) and 512-token prefill,
//! for the `small` and `seed` decoders, f32 and 8-bit. Weights are random: speed does not
//! depend on their values. Compare with `scripts/bench_pytorch_models.py` (same shapes, 2
//! threads) on the same machine:
//!
//! ```text
//! cargo bench -p continuator-engine --bench models
//! python3 scripts/bench_pytorch_models.py
//! ```

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::models::{Decoder, DecoderConfig};

const VOCAB: usize = 373;
/// Prefix already in the cache when decoding is timed.
const PREFIX: usize = 128;
/// Tokens decoded per timed iteration.
const STEPS: usize = 16;

fn build(cfg: &DecoderConfig, q8: bool) -> Decoder {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let d = Decoder::new(VOCAB, cfg, vb).unwrap();
    if q8 {
        d.quantize().unwrap()
    } else {
        d
    }
}

fn ids(n: usize) -> Tensor {
    let v: Vec<u32> = (0..n as u32).map(|i| 4 + (i * 37) % 360).collect();
    Tensor::from_vec(v, (1, n), &Device::Cpu).unwrap()
}

fn bench(c: &mut Criterion) {
    for (name, cfg) in [
        ("small", DecoderConfig::small()),
        ("seed", DecoderConfig::seed()),
    ] {
        for q8 in [false, true] {
            let d = build(&cfg, q8);
            let label = format!("{name}/{}", if q8 { "q8" } else { "f32" });

            let mut g = c.benchmark_group("decode");
            g.sample_size(10);
            g.throughput(Throughput::Elements(STEPS as u64));
            let mut prefilled = d.new_cache(PREFIX + STEPS + 1);
            d.forward(&ids(PREFIX), Some(&mut prefilled)).unwrap();
            let step = ids(1);
            g.bench_function(BenchmarkId::from_parameter(&label), |b| {
                b.iter(|| {
                    let mut cache = prefilled.clone();
                    for _ in 0..STEPS {
                        let logits = d.forward(&step, Some(&mut cache)).unwrap();
                        std::hint::black_box(logits);
                    }
                })
            });
            g.finish();

            let mut g = c.benchmark_group("prefill512");
            g.sample_size(10);
            g.throughput(Throughput::Elements(512));
            let prime = ids(512);
            g.bench_function(BenchmarkId::from_parameter(&label), |b| {
                b.iter(|| {
                    let mut cache = d.new_cache(512);
                    std::hint::black_box(d.forward(&prime, Some(&mut cache)).unwrap());
                })
            });
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
