#!/usr/bin/env python3
"""Tokenizer benchmark and exactness check against MidiTok 3.1.0, in one run.

    python3 scripts/bench_tokenizer.py [--data ../shared/corpus] [--limit N]

Runs MidiTok's REMI `encode` (with the engine's reference configuration) over every MIDI file
under --data, then `cargo xtask bench tokenize` over the same files, and prints both throughputs
(tokens/s, load + encode, one thread each), their ratio, and how many files got identical ids.
Needs `pip install miditok==3.1.0`; without it, only the engine side runs.
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def miditok_side(files, out_path):
    import warnings
    warnings.filterwarnings("ignore")
    from miditok import REMI
    from miditok.utils import merge_tracks
    from symusic import Score

    tok = REMI(params=ROOT / "engine/data/miditok_remi.json")

    def one_track(score):
        tracks = [t for t in score.tracks if not t.is_drum]
        out = Score(score.ticks_per_quarter)
        out.time_signatures = score.time_signatures
        out.tempos = score.tempos
        if tracks:
            out.tracks.append(merge_tracks(tracks))
        return out

    total_tokens, elapsed = 0, 0.0
    with open(out_path, "w") as out:
        for f in files:
            t0 = time.perf_counter()
            try:
                score = one_track(Score(f))
                seq = tok.encode(score)
                seq = seq[0] if isinstance(seq, list) else seq
                ids = list(seq.ids)
            except Exception as e:  # noqa: BLE001 - a file MidiTok cannot read is reported, not fatal
                ids = None
                print(f"miditok failed on {f}: {e}", file=sys.stderr)
            elapsed += time.perf_counter() - t0
            total_tokens += len(ids or [])
            out.write(json.dumps({"file": str(f), "ids": ids}) + "\n")
    return total_tokens, elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared/corpus"))
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    files = sorted(str(p) for p in Path(args.data).rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    if args.limit:
        files = files[: args.limit]
    if not files:
        sys.exit(f"no MIDI files under {args.data}")
    tmp = Path(tempfile.mkdtemp())
    list_path = tmp / "files.txt"
    list_path.write_text("\n".join(files) + "\n")

    ours_ids = tmp / "engine.jsonl"
    cmd = ["cargo", "xtask", "bench", "tokenize", "--files", str(list_path), "--ids-out", str(ours_ids), "--json"]
    res = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    ours = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"engine : {ours['tokens']:>10} tokens in {ours['seconds']:.3f} s = {ours['tokens_per_second']:,.0f} tokens/s ({len(files)} files)")

    try:
        import miditok  # noqa: F401
    except ImportError:
        print("miditok not installed: skipping the MidiTok side (pip install miditok==3.1.0)")
        return
    ref_ids = tmp / "miditok.jsonl"
    tokens, seconds = miditok_side(files, ref_ids)
    print(f"miditok: {tokens:>10} tokens in {seconds:.3f} s = {tokens / seconds:,.0f} tokens/s")
    print(f"ratio  : {ours['tokens_per_second'] / (tokens / seconds):.1f}x MidiTok's tokens/s")

    ours_by_file = {}
    for line in ours_ids.read_text().splitlines():
        rec = json.loads(line)
        ours_by_file[rec["file"]] = rec["ids"]
    same, differ = 0, []
    for line in ref_ids.read_text().splitlines():
        rec = json.loads(line)
        if rec["ids"] is not None and ours_by_file.get(rec["file"]) == rec["ids"]:
            same += 1
        else:
            differ.append(rec["file"])
    print(f"exact  : {same}/{len(files)} files with identical ids")
    for f in differ[:20]:
        print(f"  differs: {f}")


if __name__ == "__main__":
    main()
