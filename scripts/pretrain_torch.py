"""Pretrain the engine's decoder with PyTorch: x-transformers 2.31 `TransformerWrapper` +
`Decoder`, DistributedDataParallel under `torchrun`, on the id cache `cargo xtask train decoder`
writes. The result is a model directory (`config.json`, `decoder.safetensors`, `tokenizer.json`)
that `cargo xtask continue --model DIR` and `cargo xtask score --model DIR FILE.mid` load as is.

When to use which trainer
-------------------------
* `cargo xtask train decoder` (candle, Rust): a laptop or one machine, the `tiny`/`small`
  presets, style adapters, exactly resumable runs, no Python. It is also what tokenizes a MIDI
  folder into the id cache this script reads.
* this script: a bigger decoder (`seed`, 12 x 768, or larger), a large corpus, several GPUs or
  several machines. Same model, tokens, split, windows and schedule; PyTorch kernels, bf16 and
  NCCL where the hardware has them.

Usage
-----
    pip install torch x-transformers==2.31.0 safetensors numpy
    # 1. tokenize once with the engine (a 1-step run is enough to write runs/NAME/data)
    cargo xtask train decoder --data MIDI_DIR --preset seed --out runs/NAME --steps 1
    # 2. train: one process ...
    python3 scripts/pretrain_torch.py --cache runs/NAME/data --out models/NAME --preset seed
    # ... or one process per GPU (or CPU process, with gloo) ...
    torchrun --standalone --nproc_per_node 8 scripts/pretrain_torch.py \
        --cache runs/NAME/data --out models/NAME --preset seed --bf16
    # ... or several machines (run on each, NODE_RANK 0..N-1, same cache on each)
    torchrun --nnodes 2 --node_rank $NODE_RANK --nproc_per_node 8 \
        --rdzv_backend c10d --rdzv_endpoint HOST0:29500 --rdzv_id NAME \
        scripts/pretrain_torch.py --cache runs/NAME/data --out models/NAME --preset seed --bf16
    # 3. use it
    cargo xtask score --model models/NAME some.mid

Data: the id cache is `ids.bin` (every document's ids back to back, little-endian u16) and
`index.json` (per document: name, offset, len). A document is `BOS ids... EOS`. Training
windows are `seq + 1` ids starting at a bar (or the document's BOS), padded with PAD past the
document's end (PAD targets are ignored by the loss), transposed at random by up to a fifth
within the pitch range. The split is the engine's: a document is in validation when the
FNV-1a 64-bit hash of its name % 10000 < val_fraction * 10000, and validation uses the
engine's fixed window placement, so the validation losses are comparable with the Rust
trainer's. Unlike the Rust trainer, which draws each window independently, every bar-aligned
training window is visited once per epoch, in a per-epoch shuffled order sharded across ranks
like `DistributedSampler` (the order depends on `--seed` and the number of processes).

`--batch` is per process: one optimiser step sees `batch x world size` windows.
Schedule: AdamW (beta 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices only), linear warm-up
then cosine decay to 0.1 x peak, global gradient-norm clip 1.0; matrices start N(0, 0.02),
biases and norm gains (stored as gain - 1) at zero, as in the engine.

Checkpoints (`OUT/checkpoint.pt`: weights, AdamW moments, step, settings) are written atomically
every `--checkpoint-every` steps and at the end; `--resume` continues from it with its saved
settings (`--steps` may extend the run). `--init MODEL_DIR` starts from a model directory
instead of random weights (e.g. `cargo xtask train export` of a Rust run). Rank 0 writes `OUT/metrics.jsonl` in the engine's
format (`cargo xtask plot OUT` draws it) and the model directory at the end.
"""

import argparse
import datetime
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CACHE_VERSION = 1
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"

# name: (dim, depth, heads, attn_dim_head, ff_mult, seq, batch, lr), the engine's presets
# (engine/src/models/decoder.rs, xtask/src/train.rs).
PRESETS = {
    "tiny": (32, 2, 4, 8, 4, 64, 4, 1e-3),
    "small": (256, 6, 4, 64, 4, 512, 8, 1e-3),
    "seed": (768, 12, 12, 64, 4, 1024, 8, 3e-4),
}


class DataError(Exception):
    """A problem with an input file; the message names the file."""


def fail(message):
    if os.environ.get("RANK", "0") == "0":  # one message, not one per process
        print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def fnv1a64(text):
    """The engine's `stable_hash`: 64-bit FNV-1a of the UTF-8 bytes."""
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


# ---------------------------------------------------------------------------------------------
# Tokenizer: the ids the data pipeline needs, from MidiTok's tokenizer.json


class Vocab:
    """PAD/BOS/EOS, bar and pitch ids, in MidiTok's REMI order: special tokens, Bar, pitches."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            cfg = json.loads(self.path.read_text())["config"]
            special = list(cfg["special_tokens"])
            lo, hi = cfg["pitch_range"]
        except FileNotFoundError:
            raise DataError(f"{self.path}: no such file (pass --tokenizer)") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{self.path}: not a MidiTok tokenizer.json ({e!r})") from None
        ids = {name: i for i, name in enumerate(special)}
        try:
            self.pad, self.bos, self.eos = (ids[n] for n in ("PAD_None", "BOS_None", "EOS_None"))
        except KeyError:
            raise DataError(f"{self.path}: special_tokens must hold PAD_None, BOS_None and EOS_None") from None
        self.bar = len(special)
        self.pitch_lo = self.bar + 1
        self.pitch_hi = self.bar + 1 + int(hi) - int(lo)


# ---------------------------------------------------------------------------------------------
# The id cache


class Corpus:
    """The memory-mapped id cache, split as the engine splits it."""

    def __init__(self, cache_dir, vocab, seq, val_fraction):
        cache_dir = Path(cache_dir)
        index_path, ids_path = cache_dir / "index.json", cache_dir / "ids.bin"
        if not cache_dir.is_dir():
            raise DataError(f"{cache_dir}: no such folder (the id cache is RUN/data, written by "
                            "`cargo xtask train decoder --out RUN`)")
        for p in (index_path, ids_path):
            if not p.is_file():
                raise DataError(f"{p}: missing (the id cache needs ids.bin and index.json)")
        try:
            index = json.loads(index_path.read_text())
            version = index["version"]
            self.vocab_size = int(index["vocab_size"])
            docs = [(str(d["name"]), int(d["offset"]), int(d["len"])) for d in index["docs"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{index_path}: corrupt id-cache index ({e!r})") from None
        if version != CACHE_VERSION:
            raise DataError(f"{index_path}: cache version {version}, this script reads {CACHE_VERSION}")
        if not docs:
            raise DataError(f"{index_path}: no documents")
        if not 0 < self.vocab_size <= 65536:
            raise DataError(f"{index_path}: vocab_size {self.vocab_size} does not fit u16 ids")
        total = sum(n for _, _, n in docs)
        size = ids_path.stat().st_size
        if size != 2 * total:
            raise DataError(f"{ids_path}: holds {size} bytes, {index_path.name} describes {total} ids")
        self.ids = np.memmap(ids_path, dtype="<u2", mode="r")
        offset = 0
        for name, off, n in docs:
            if off != offset or n < 2:
                raise DataError(f"{index_path}: document {name!r} has offset {off} and len {n}, "
                                f"expected offset {offset} and len >= 2")
            offset += n
        self.names = [d[0] for d in docs]
        self.offsets = np.array([d[1] for d in docs], dtype=np.int64)
        self.lens = np.array([d[2] for d in docs], dtype=np.int64)
        self.vocab = vocab
        self.seq = seq

        # Window starts (global positions of every Bar and BOS), in chunks to bound memory.
        starts, hi, chunk = [], 0, 1 << 26
        for a in range(0, total, chunk):
            block = np.asarray(self.ids[a:a + chunk])
            hi = max(hi, int(block.max()))
            starts.append(np.flatnonzero((block == vocab.bar) | (block == vocab.bos)) + a)
        if hi >= self.vocab_size:
            raise DataError(f"{ids_path}: holds id {hi}, the vocabulary has {self.vocab_size}")
        self.starts = np.concatenate(starts).astype(np.int64)
        self.doc_starts = np.searchsorted(self.starts, self.offsets)  # first start of each doc
        self.doc_starts_end = np.searchsorted(self.starts, self.offsets + self.lens)

        self.train, self.val = split(self.names, val_fraction)
        if not self.train:
            raise DataError(f"{index_path}: no training document left after the split")

        # Every bar-aligned training window that fits (a short document: its BOS only).
        win_start, win_end = [], []
        for d in self.train:
            s = self.doc_local_starts(d)
            fits = max(int(np.searchsorted(s + seq, self.lens[d], side="left")), 1)
            win_start.append(s[:fits] + self.offsets[d])
            win_end.append(np.full(fits, self.offsets[d] + self.lens[d], dtype=np.int64))
        self.win_start = np.concatenate(win_start)
        self.win_end = np.concatenate(win_end)

    def doc_local_starts(self, d):
        """Window starts of document `d`, relative to its first id."""
        s = self.starts[self.doc_starts[d]:self.doc_starts_end[d]] - self.offsets[d]
        if len(s) == 0 or s[0] != 0:  # the engine always allows the document's first id
            s = np.concatenate([[0], s])
        return s

    def window(self, start, end, length):
        w = np.full(length, self.vocab.pad, dtype=np.int64)
        part = np.asarray(self.ids[start:min(start + length, end)], dtype=np.int64)
        w[:len(part)] = part
        return w

    def transpose(self, w, rng):
        """The engine's transposition: one shift of up to a fifth either way, kept in range."""
        lo, hi = self.vocab.pitch_lo, self.vocab.pitch_hi
        is_pitch = (w >= lo) & (w <= hi)
        if not is_pitch.any():
            return
        p = w[is_pitch]
        down, up = min(int(p.min()) - lo, 7), min(hi - int(p.max()), 7)
        shift = int(rng.integers(-down, up + 1))
        w[is_pitch] += shift

    def val_windows(self, max_windows):
        """The engine's fixed validation windows (`Corpus::val_windows`), as an array."""
        seq, n = self.seq, len(self.val)
        docs = self.val if max_windows >= n else [self.val[k * n // max_windows] for k in range(max_windows)]
        per_doc = max(max_windows // max(len(docs), 1), 1)
        out = []
        for d in docs:
            s = self.doc_local_starts(d)
            fits = max(int(np.searchsorted(s + seq, self.lens[d], side="left")), 1)
            offset = (fnv1a64(self.names[d]) % 1000) / 1000.0
            for j in range(per_doc):
                if len(out) == max_windows:
                    break
                frac = math.modf(offset + j / per_doc)[0]
                start = int(s[min(int(frac * fits), fits - 1)])
                base = int(self.offsets[d])
                out.append(self.window(base + start, base + int(self.lens[d]), seq + 1))
        return np.stack(out) if out else np.zeros((0, seq + 1), dtype=np.int64)


def split(names, fraction):
    """The engine's `split`: (train, val) document indices."""
    threshold = int(min(max(fraction, 0.0), 1.0) * 10000.0)
    hashes = [fnv1a64(n) for n in names]
    val = [i for i, h in enumerate(hashes) if h % 10000 < threshold]
    train = [i for i, h in enumerate(hashes) if h % 10000 >= threshold]
    if len(names) >= 2 and fraction > 0.0:
        if not val:
            k = min(range(len(train)), key=lambda k: hashes[train[k]] % 10000)
            val.append(train.pop(k))
        elif not train:
            train.append(val.pop())
    return train, val


class ShardedWindows:
    """DistributedSampler-style order: a fresh permutation of all windows every epoch (seeded
    by seed and epoch), padded to a multiple of the world size, rank r taking r, r + W, ...
    The position is a pure function of the step, so resuming is exact."""

    def __init__(self, count, seed, rank, world):
        self.count, self.seed, self.rank, self.world = count, seed, rank, world
        self.per_rank = -(-count // world)
        self._epoch, self._perm = None, None

    def __getitem__(self, i):
        epoch, k = divmod(i, self.per_rank)
        if epoch != self._epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.count)
            pad = self.per_rank * self.world - self.count
            if pad:
                perm = np.concatenate([perm, np.resize(perm, pad)])
            self._epoch, self._perm = epoch, perm[self.rank::self.world]
        return int(self._perm[k]), epoch


# ---------------------------------------------------------------------------------------------
# Model and schedule


def model_config(a, num_tokens):
    return {
        "num_tokens": num_tokens,
        "max_seq_len": a.seq,
        "decoder": {
            "dim": a.dim, "depth": a.depth, "heads": a.heads, "attn_dim_head": a.attn_dim_head,
            "ff_mult": a.ff_mult, "ff_glu": True, "rotary_pos_emb": True,
        },
    }


def build_model(cfg):
    from x_transformers import Decoder, TransformerWrapper

    return TransformerWrapper(
        num_tokens=cfg["num_tokens"], max_seq_len=cfg["max_seq_len"],
        attn_layers=Decoder(**cfg["decoder"]),
    )


def engine_init(model, torch):
    """The engine's initialisation: matrices N(0, 0.02); biases and gains (gamma) zero."""
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
            else:
                p.zero_()


def lr_at(step, peak, warmup, total, min_ratio=0.1):
    """The engine's `Schedule::lr`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return peak * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def read_model_dir(path, torch):
    """config.json and decoder.safetensors of a model directory (for --init)."""
    from safetensors.torch import load_file

    cfg_path, dec_path = path / "config.json", path / "decoder.safetensors"
    try:
        cfg = json.loads(cfg_path.read_text())
        cfg = {"num_tokens": int(cfg["num_tokens"]), "max_seq_len": int(cfg["max_seq_len"]),
               "decoder": dict(cfg["decoder"])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        fail(f"{cfg_path}: not a model config ({e!r})")
    try:
        state = {k: v.float() for k, v in load_file(str(dec_path)).items()}
    except Exception as e:  # noqa: BLE001 - any unreadable file is one message
        fail(f"{dec_path}: cannot read ({e!r})")
    return cfg, state


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True, type=Path,
                   help="the id cache: RUN/data of `cargo xtask train decoder --out RUN`")
    p.add_argument("--out", required=True, type=Path, help="the model directory to write")
    p.add_argument("--preset", choices=PRESETS, default="small")
    p.add_argument("--dim", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--attn-dim-head", type=int)
    p.add_argument("--ff-mult", type=int)
    p.add_argument("--seq", type=int, help="window length (the model's max_seq_len)")
    p.add_argument("--batch", type=int, help="windows per process per step")
    p.add_argument("--steps", type=int,
                   help="optimiser steps for the whole run (default 20000; with --resume, the "
                        "run's own, or extends or shortens it)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup", type=int, help="warm-up steps (default 5%% of the run, at most 500)")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--val-every", type=int, default=200)
    p.add_argument("--val-windows", type=int, default=48)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-transpose", action="store_true")
    p.add_argument("--tokenizer", type=Path, default=REPO / "assets/model/tokenizer.json")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--init", type=Path, metavar="MODEL_DIR",
                   help="start from a model directory's weights and shapes (e.g. one exported by "
                        "`cargo xtask train export`); the optimiser and schedule start fresh")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--f16", action="store_true", help="store decoder.safetensors in f16")
    p.add_argument("--threads", type=int, help="torch CPU threads per process")
    p.add_argument("--stop-at", type=int, help=argparse.SUPPRESS)  # checkpoint and stop here
    a = p.parse_args(argv)
    dim, depth, heads, dh, ff, seq, batch, lr = PRESETS[a.preset]
    a.dim = a.dim or dim
    a.depth = a.depth or depth
    a.heads = a.heads or heads
    a.attn_dim_head = a.attn_dim_head or dh
    a.ff_mult = a.ff_mult or ff
    a.seq = a.seq or seq
    a.batch = a.batch or batch
    a.lr = a.lr or lr
    if a.warmup is None:
        a.warmup = min(max((a.steps or 20000) // 20, 1), 500)
    if a.seq < 2 or a.batch < 1 or (a.steps or 1) < 1 or not a.lr > 0:
        p.error("--seq must be at least 2, --batch and --steps at least 1, --lr positive")
    return a


# Settings a resumed run keeps from its checkpoint.
KEPT = ("preset", "dim", "depth", "heads", "attn_dim_head", "ff_mult", "seq", "batch", "lr",
        "warmup", "val_fraction", "val_every", "val_windows", "seed", "no_transpose")


def main(argv=None):
    a = parse_args(argv)
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from safetensors.torch import save_file

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if a.threads:
        torch.set_num_threads(a.threads)
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(minutes=30))
    main_rank = rank == 0

    def log(msg):
        if main_rank:
            print(msg, flush=True)

    ck_path = a.out / CHECKPOINT
    ck = None
    if a.resume:
        if not ck_path.is_file():
            fail(f"{ck_path}: no checkpoint to resume")
        try:
            ck = torch.load(ck_path, map_location="cpu", weights_only=False)
            saved = ck["args"]
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is one message
            fail(f"{ck_path}: not a checkpoint of this script ({e!r})")
        for k in KEPT:
            setattr(a, k, saved[k])
        a.steps = a.steps or ck["steps"]
        if ck["world"] != world:
            log(f"note: the run was started with {ck['world']} processes, now {world}: "
                "the data order changes from here")
    elif ck_path.exists():
        fail(f"{ck_path}: {a.out} already holds a run: pass --resume, or choose another --out")
    else:
        a.steps = a.steps or 20000

    try:
        vocab = Vocab(a.tokenizer)
        corpus = Corpus(a.cache, vocab, a.seq, a.val_fraction)
    except DataError as e:
        fail(str(e))
    if ck is not None:
        cfg = ck["config"]
    elif a.init is not None:
        cfg, init_state = read_model_dir(a.init, torch)
        if cfg["num_tokens"] != corpus.vocab_size:
            fail(f"{a.init / 'config.json'}: num_tokens {cfg['num_tokens']}, the id cache's "
                 f"vocabulary has {corpus.vocab_size}")
        cfg["max_seq_len"] = a.seq
    else:
        cfg = model_config(a, corpus.vocab_size)
    windows = ShardedWindows(len(corpus.win_start), a.seed, rank, world)
    val = torch.from_numpy(corpus.val_windows(a.val_windows)) if main_rank else None
    log(f"{len(corpus.names)} documents: {len(corpus.train)} train "
        f"({len(corpus.win_start)} windows of {a.seq + 1}), {len(corpus.val)} validation; "
        f"{world} process(es) on {device.type}, {a.batch} windows each per step")

    torch.manual_seed(a.seed)
    model = build_model(cfg)
    engine_init(model, torch)
    if ck is None and a.init is not None:
        try:
            missing, unexpected = model.load_state_dict(init_state, strict=False)
        except RuntimeError as e:  # wrong shapes
            fail(f"{a.init / 'decoder.safetensors'}: does not fit config.json ({e})")
        missing = [k for k in missing if not k.endswith("inv_freq")]  # an optional buffer
        if missing or unexpected:
            fail(f"{a.init / 'decoder.safetensors'}: does not fit config.json "
                 f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        log(f"starting from the weights of {a.init}")
    model.to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=a.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    step, tokens_seen = 0, 0
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, tokens_seen = ck["step"], ck["tokens_seen"]
        log(f"resuming {a.out} at step {step}/{a.steps}")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model {json.dumps(cfg['decoder'])}: {n_params} parameters")
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[local_rank] if use_cuda else None) if world > 1 else model
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=a.bf16 and use_cuda)

    if main_rank:
        a.out.mkdir(parents=True, exist_ok=True)
        metrics = a.out / METRICS
        if ck is None:
            metrics.unlink(missing_ok=True)
        else:  # drop lines written after the checkpoint
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            kept = [l for l in lines if json.loads(l).get("step", 0) <= step]
            metrics.write_text("".join(l + "\n" for l in kept))

    def metric(line):
        if main_rank:
            with open(a.out / METRICS, "a") as f:
                f.write(json.dumps(line) + "\n")

    def validate():
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad(), amp:
            for chunk in val.split(a.batch):
                chunk = chunk.to(device)
                logits = model(chunk[:, :-1]).float()
                target = chunk[:, 1:]
                total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                         ignore_index=vocab.pad, reduction="sum").item()
                count += int((target != vocab.pad).sum())
        model.train()
        return total / max(count, 1), count

    def save_checkpoint():
        if not main_rank:
            return
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                 "tokens_seen": tokens_seen, "world": world, "steps": a.steps,
                 "config": cfg,
                 "args": {k: getattr(a, k) for k in KEPT}}
        tmp = ck_path.with_name(f".{CHECKPOINT}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, ck_path)

    model.train()
    val_loss = None
    stop = min(a.steps, a.stop_at) if a.stop_at else a.steps
    while step < stop:
        started = time.perf_counter()
        lr = lr_at(step, a.lr, a.warmup, a.steps)
        for g in opt.param_groups:
            g["lr"] = lr
        rng = np.random.default_rng([a.seed, step, rank])
        rows = []
        for j in range(a.batch):
            w, _ = windows[step * a.batch + j]
            row = corpus.window(int(corpus.win_start[w]), int(corpus.win_end[w]), a.seq + 1)
            if not a.no_transpose:
                corpus.transpose(row, rng)
            rows.append(row)
        batch = torch.from_numpy(np.stack(rows)).to(device)
        target = batch[:, 1:]
        with amp:
            logits = ddp(batch[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                               ignore_index=vocab.pad)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        tokens = int((target != vocab.pad).sum())
        if world > 1:
            stats = torch.tensor([loss.item(), float(tokens)], dtype=torch.float64, device=device)
            dist.all_reduce(stats)
            loss_value, tokens = stats[0].item() / world, int(stats[1].item())
        else:
            loss_value = loss.item()
        if not math.isfinite(loss_value):
            fail(f"the loss diverged at step {step} ({loss_value}); lower --lr")
        step += 1
        tokens_seen += tokens
        seconds = time.perf_counter() - started
        metric({"kind": "train", "step": step, "steps": a.steps, "lr": lr, "loss": loss_value,
                "grad_norm": grad_norm, "tokens": tokens, "tokens_seen": tokens_seen,
                "seconds": seconds, "tokens_per_s": tokens / max(seconds, 1e-9)})
        if main_rank and (step % 10 == 0 or step == 1):
            log(f"step {step}/{a.steps} lr {lr:.2e} loss {loss_value:.4f} |g| {grad_norm:.2f} "
                f"{tokens / max(seconds, 1e-9):.0f} tok/s, {tokens_seen} tokens seen")
        if main_rank and len(val) and (step % a.val_every == 0 or step == a.steps):
            val_loss, val_tokens = validate()
            metric({"kind": "val", "step": step, "val_loss": val_loss, "val_tokens": val_tokens})
            log(f"step {step}: validation {val_loss:.4f} nats/token over {val_tokens} tokens")
        if step % a.checkpoint_every == 0 or step == stop:
            save_checkpoint()

    if main_rank and step < a.steps:
        log(f"stopped at step {step}/{a.steps} (continue with --resume)")
    elif main_rank:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        dtype = torch.float16 if a.f16 else torch.float32
        params = {n for n, _ in model.named_parameters()}  # buffers (rotary inv_freq) stay f32
        state = {k: v.detach().to("cpu", dtype if k in params else v.dtype).contiguous()
                 for k, v in model.state_dict().items()}
        tmp = a.out / ".decoder.safetensors.tmp"
        save_file(state, str(tmp))
        os.replace(tmp, a.out / "decoder.safetensors")
        if a.tokenizer.resolve() != (a.out / "tokenizer.json").resolve():
            shutil.copyfile(a.tokenizer, a.out / "tokenizer.json")
        shown = "not measured" if val_loss is None else f"{val_loss:.4f}"
        log(f"finished at step {step}/{a.steps}: {tokens_seen} tokens seen, validation {shown} "
            f"nats/token; model directory {a.out} (checkpoint {ck_path.name})")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
