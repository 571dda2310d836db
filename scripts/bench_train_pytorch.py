"""PyTorch side of the training benchmark: `cargo xtask bench train` with PyTorch eager +
x-transformers 2.31, the same decoder shapes, batch, window, thread count, f32, AdamW and
global-norm clipping. Prints one JSON line shaped like the Rust command's, then (with --rust)
runs the Rust side with the same settings and prints the ratio.

    pip install torch x-transformers==2.31.0
    python3 scripts/bench_train_pytorch.py [--preset small] [--batch 8] [--seq 512] \
        [--threads 1] [--steps 5] [--rust target/release/xtask]
"""

import argparse
import json
import os
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F
from x_transformers import Decoder, TransformerWrapper

SHAPES = {
    # name: (dim, depth, heads), attn_dim_head 64, ff_mult 4, GLU, rotary (engine presets)
    "small": (256, 6, 4),
    "seed": (768, 12, 12),
}
VOCAB = 373


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="small", choices=SHAPES)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rust", help="path of the xtask binary to compare with")
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dim, depth, heads = SHAPES[a.preset]
    model = TransformerWrapper(
        num_tokens=VOCAB,
        max_seq_len=a.seq,
        attn_layers=Decoder(dim=dim, depth=depth, heads=heads, rotary_pos_emb=True, ff_glu=True),
    ).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    times = []
    for i in range(a.steps + 1):
        ids = torch.randint(1, VOCAB, (a.batch, a.seq + 1))
        start = time.perf_counter()
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i > 0:
            times.append(time.perf_counter() - start)
    med = statistics.median(times)
    torch_result = {
        "impl": "pytorch",
        "torch": torch.__version__,
        "preset": a.preset,
        "batch": a.batch,
        "seq": a.seq,
        "threads": a.threads,
        "step_seconds": times,
        "median_step_seconds": med,
        "tokens_per_second": a.batch * a.seq / med,
    }
    print(json.dumps(torch_result), flush=True)
    if a.rust:
        env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
        out = subprocess.run(
            [a.rust, "bench", "train", "--preset", a.preset, "--batch", str(a.batch),
             "--seq", str(a.seq), "--steps", str(a.steps)],
            env=env, check=True, capture_output=True, text=True,
        ).stdout
        rust = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(rust))
        ratio = rust["tokens_per_second"] / torch_result["tokens_per_second"]
        print(json.dumps({"ratio_candle_over_pytorch": ratio}))


if __name__ == "__main__":
    main()
