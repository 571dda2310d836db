"""Builds the `tiny_xt` model directory: a tiny random x-transformers 2.31 decoder saved the way
a PyTorch trainer saves one, plus the logits PyTorch computes for fixed inputs.

The Rust tests load `tiny_xt/` with the engine and must reproduce `expected.safetensors`:
that pins the engine's decoder to x-transformers' exact math and tensor names.

    pip install torch x-transformers==2.31.0 safetensors
    python3 engine/tests/data/models/make_fixture.py
"""

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from x_transformers import Decoder, TransformerWrapper

HERE = Path(__file__).resolve().parent
OUT = HERE / "tiny_xt"
TOKENIZER = HERE.parents[3] / ".." / "shared" / "tokenizer" / "tokenizer.json"

CONFIG = {
    "num_tokens": 373,
    "max_seq_len": 64,
    "decoder": {
        "dim": 32,
        "depth": 2,
        "heads": 4,
        "attn_dim_head": 8,
        "ff_mult": 4,
        "ff_glu": True,
        "rotary_pos_emb": True,
    },
}


def main():
    torch.manual_seed(1234)
    model = TransformerWrapper(
        num_tokens=CONFIG["num_tokens"],
        max_seq_len=CONFIG["max_seq_len"],
        attn_layers=Decoder(**CONFIG["decoder"]),
    )
    # Fresh norms have gamma = 0 (the gain is gamma + 1) and would hide a mix-up of norm
    # tensors; randomise them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(0.2 * torch.randn_like(p))
    model.eval()

    OUT.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, OUT / "decoder.safetensors")
    (OUT / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    shutil.copy(TOKENIZER, OUT / "tokenizer.json")

    # Two sequences (batch of 2), BOS first, 40 tokens: well inside max_seq_len.
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(4, CONFIG["num_tokens"], (2, 40), generator=g)
    tokens[:, 0] = 1
    with torch.no_grad():
        logits = model(tokens)
    save_file(
        {"tokens": tokens.to(torch.int64).contiguous(), "logits": logits.float().contiguous()},
        OUT / "expected.safetensors",
    )
    print("wrote", OUT, "logits", tuple(logits.shape))


if __name__ == "__main__":
    main()
