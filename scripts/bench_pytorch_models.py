"""PyTorch (eager) side of the model benchmark: the same decoder shapes as
`engine/benches/models.rs`, x-transformers 2.31, 2 threads, f32, random weights.

Measures batch-1 decoding with x-transformers' KV cache (tokens/s, 16 steps after a 128-token
prefix, as the Rust bench does) and the time to prefill 512 tokens.

    pip install torch x-transformers==2.31.0
    python3 scripts/bench_pytorch_models.py [--threads 2] [--repeats 5]
"""

import argparse
import statistics
import time

import torch
from x_transformers import Decoder, TransformerWrapper

SHAPES = {
    # name: (dim, depth, heads), attn_dim_head 64, ff_mult 4, GLU, rotary (engine presets)
    "small": (256, 6, 4),
    "seed": (768, 12, 12),
}
VOCAB = 373
PREFIX = 128
STEPS = 16


def build(dim, depth, heads):
    model = TransformerWrapper(
        num_tokens=VOCAB,
        max_seq_len=2048,
        attn_layers=Decoder(dim=dim, depth=depth, heads=heads, rotary_pos_emb=True, ff_glu=True),
    )
    return model.eval()


def tokens(n):
    return torch.tensor([[4 + (i * 37) % 360 for i in range(n)]])


@torch.no_grad()
def decode_tps(model, repeats):
    prefix = tokens(PREFIX)
    _, cache = model(prefix, return_intermediates=True)
    times = []
    for _ in range(repeats):
        seq, c = prefix, cache
        start = time.perf_counter()
        for _ in range(STEPS):
            seq = torch.cat((seq, tokens(1)), dim=1)
            logits, c = model(seq, return_intermediates=True, cache=c)
            logits = logits[:, -1]
        times.append(time.perf_counter() - start)
    return STEPS / statistics.median(times)


@torch.no_grad()
def prefill_ms(model, repeats):
    x = tokens(512)
    model(x, return_intermediates=True)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x, return_intermediates=True)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, f32, eager")
    for name, shape in SHAPES.items():
        model = build(*shape)
        decode_tps(model, 1)  # warm-up
        tps = decode_tps(model, args.repeats)
        ms = prefill_ms(model, args.repeats)
        print(f"{name:6s} decode {tps:8.1f} tokens/s   prefill 512: {ms:8.1f} ms")


if __name__ == "__main__":
    main()
