"""One distillation step of a preset, with and without prepared images, timed side by side in one run.

`DistillConfig.prepare_images` computes the weight-free part of every training image once at start-up (the 2×
pooling to the ViT's input and the pixel statistics, `Student.prepare_images`) instead of at every step. A
time-boxed run (`make demo`: 30 minutes) turns a cheaper step into more steps, and more steps into accuracy
(README, issue 16). Both trainers take the same batches; repeats interleave them, so both see the same machine load.

    python bench/train_step.py                        # nano, 64 synthetic groups built in a temp folder
    python bench/train_step.py --data data/cmp_v3_4k --max-train-groups 400

Results: ``bench/results/train_step_cpu.json`` (per-step p50 / p90, edits/s, the ratio, the image store's bytes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="nano")
    p.add_argument("--data", type=Path, default=None,
                   help="a labelled dataset folder (default: 64 synthetic groups built and labelled in a temp folder)")
    p.add_argument("--max-train-groups", type=int, default=None)
    p.add_argument("--steps", type=int, default=10, help="timed steps per trainer per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per trainer")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="folder for the JSON")
    return p.parse_args(argv)


def synthetic_data(folder: Path) -> Path:
    """64 oracle-labelled synthetic groups (the CLI's own commands, ~20 s)."""
    sr = [sys.executable, "-m", "spatialreward"]
    subprocess.run(sr + ["synth", "--out", str(folder), "--groups", "64", "--seed", "5", "--workers", "2",
                         "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(sr + ["label", "--teacher", "oracle", "--data", str(folder)], check=True,
                   stdout=subprocess.DEVNULL)
    return folder


def store_bytes(data) -> int:
    """Bytes of a training split's per-image store: uint8 images, or the prepared int16 + fp32 rows."""
    if data.prepared is None:
        return data.images.numel() * data.images.element_size()
    _, backbone, pixels, _ = data.prepared
    return backbone.numel() * backbone.element_size() + pixels.numel() * pixels.element_size()


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    from spatialreward.student.distill import DistillConfig, Distiller

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or synthetic_data(Path(tmp) / "data")
        trainers = {}
        for name, prepare in (("per step", False), ("prepared once", True)):
            cfg = DistillConfig(data=str(data), out=str(Path(tmp) / f"run_{prepare}"), preset=args.preset,
                                max_steps=10**9, max_train_groups=args.max_train_groups, eval_split="",
                                prepare_images=prepare, num_threads=args.threads, progress=False,
                                tensorboard=False, save_every_minutes=1e9)
            t0 = time.perf_counter()
            trainers[name] = Distiller(cfg)
            trainers[name].setup_s = time.perf_counter() - t0
        for t in trainers.values():
            for _ in range(args.warmup):
                t.train_step()
        times = {name: [] for name in trainers}
        edits = {name: 0 for name in trainers}
        for _ in range(args.repeats):  # interleaved: both trainers see the same load
            for name, t in trainers.items():
                for _ in range(args.steps):
                    s = time.perf_counter()
                    edits[name] += t.train_step()["batch_edits"]
                    times[name].append(time.perf_counter() - s)

    rows = {}
    for name, ts in times.items():
        ts = sorted(ts)
        rows[name] = {
            "p50_ms": 1000 * statistics.median(ts), "p90_ms": 1000 * ts[int(0.9 * (len(ts) - 1))],
            "edits_per_s": edits[name] / sum(ts), "steps": len(ts),
            "image_store_bytes": store_bytes(trainers[name].train_data), "setup_s": trainers[name].setup_s,
        }
    ratio = rows["per step"]["p50_ms"] / rows["prepared once"]["p50_ms"]
    result = {
        "command": "python bench/train_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "threads": args.threads, "load_average": os.getloadavg()},
        "preset": args.preset, "data": str(args.data or "64 synthetic groups (seed 5)"),
        "edits_per_step": edits["per step"] / len(times["per step"]),
        "rows": rows, "step_speedup_prepared": ratio,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "train_step_cpu.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    for name, r in rows.items():
        print(f"{name:>14}: {r['p50_ms']:7.1f} ms/step p50 ({r['p90_ms']:.1f} p90), {r['edits_per_s']:6.1f} edits/s, "
              f"image store {r['image_store_bytes'] / 2**20:.0f} MiB")
    print(f"prepared once: {ratio:.2f}× per step → {path}")
    return result


if __name__ == "__main__":
    main()
