"""Per-edit latency and throughput of each student preset, next to a single-stream timm ViT of the same width.

For every preset and batch size (1 / 8 / 32 by default) it times the student's forward (both images through the
shared backbone in one batched pass, change features, mask head, RoIAlign, both region-attention paths, heads,
formula) and, in the same loop, a plain timm `VisionTransformer` with the preset's width, depth, heads, patch and
input side on *one* image per edit. The ratio student / baseline is the cost of the second stream and the heads
(≈ 2 is the floor for two streams). A third column times the GRPO case: one source and ``b`` candidates, the
source encoded once (``source_index``). Measurements interleave the three per repeat, so all see the same machine
load; the median of the repeats is reported. The instruction embedding is an input (a GRPO group shares
one and the runtime caches it), so the text encoder is timed separately, per instruction, on its own row.

    python bench/student_latency.py                          # all presets, batches 1 8 32, JSON into bench/results/
    python bench/student_latency.py --presets nano --batches 1 8 --repeats 5
    python bench/student_latency.py --device cuda --dtype bf16
    python bench/student_latency.py --presets nano --quality-scale 0 2   # the cost of the full-resolution quality map

Results: ``bench/results/<date>-<device>-student_latency.json`` with the machine, versions, load average and rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from cuda_graph import graphed  # bench/cuda_graph.py (the script's folder is on sys.path)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--presets", nargs="*", default=None, help="presets to time (default: all registered)")
    p.add_argument("--batches", nargs="*", type=int, default=[1, 8, 32], help="batch sizes (edits per call)")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per row (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    p.add_argument("--quality-scale", nargs="*", type=int, default=[0],
                   help="StudentConfig.quality_scale values to time per preset (0 = off; 2 = 2× input + quality map)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast dtype on CUDA")
    p.add_argument("--cuda-graph", action="store_true",
                   help="on CUDA, capture each call in a CUDA graph and time its replays (how a serving loop "
                        "removes the per-op launch cost); rows say which")
    p.add_argument("--no-text", action="store_true", help="skip the text-encoder row (it loads MiniLM)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="folder for the JSON")
    return p.parse_args(argv)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def bench_preset(name: str, batches: list[int], args, device, autocast, quality_scale: int = 0) -> list[dict]:
    import torch
    from timm.models.vision_transformer import VisionTransformer

    from spatialreward.student.model import Student
    from spatialreward.student.presets import preset_config

    cfg = preset_config(name, quality_scale=quality_scale)
    label = f"{name}+q{quality_scale}" if quality_scale else name
    student = Student(cfg).to(device).eval()
    baseline = VisionTransformer(
        img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
        num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, num_classes=0,
    ).to(device).eval()
    rows = []
    for b in batches:
        g = torch.Generator().manual_seed(b)
        side = cfg.input_size  # the student's input (larger than the ViT's with a quality map)
        src = torch.rand(b, 3, side, side, generator=g).to(device)
        edt = torch.rand(b, 3, side, side, generator=g).to(device)
        vit_in = edt if side == cfg.img_size else torch.rand(b, 3, cfg.img_size, cfg.img_size, generator=g).to(device)
        text = torch.nn.functional.normalize(torch.randn(b, cfg.text_dim, generator=g), dim=1).to(device)

        def run_student():
            with torch.inference_mode(), autocast():
                student(src, edt, text)

        shared_index = torch.zeros(b, dtype=torch.long, device=device)

        def run_group():  # a GRPO group: one source photo, b candidates (the source goes through once)
            with torch.inference_mode(), autocast():
                student(src[:1], edt, text, source_index=shared_index)

        def run_baseline():
            with torch.inference_mode(), autocast():
                baseline(vit_in)

        graph = args.cuda_graph and device.type == "cuda"
        if graph:
            run_student, run_group, run_baseline = (graphed(fn) for fn in (run_student, run_group, run_baseline))
        ts, tg, tb = [], [], []
        for fn in (run_student, run_group, run_baseline):
            time_call(fn, device, 0, args.warmup)
        for _ in range(args.repeats):  # interleaved, so all three see the same load
            ts += time_call(run_student, device, 1, 0)
            tg += time_call(run_group, device, 1, 0)
            tb += time_call(run_baseline, device, 1, 0)
        s, grp, bl = statistics.median(ts), statistics.median(tg), statistics.median(tb)
        rows.append({
            "preset": label, "batch": b, "cuda_graph": graph, "img_size": cfg.img_size,
            "input_size": cfg.input_size, "quality_scale": quality_scale, "width": cfg.embed_dim,
            "depth": cfg.depth,
            "student_params_m": round(student.num_params() / 1e6, 3),
            "baseline_params_m": round(sum(p.numel() for p in baseline.parameters()) / 1e6, 3),
            "student_ms_per_call": round(1e3 * s, 3), "student_ms_per_edit": round(1e3 * s / b, 3),
            "student_edits_per_s": round(b / s, 1), "baseline_ms_per_call": round(1e3 * bl, 3),
            "baseline_ms_per_image": round(1e3 * bl / b, 3), "baseline_images_per_s": round(b / bl, 1),
            "ratio_student_over_baseline": round(s / bl, 2),
            "group_ms_per_edit": round(1e3 * grp / b, 3), "ratio_group_over_baseline": round(grp / bl, 2),
            "student_ms_all": [round(1e3 * t, 3) for t in ts], "baseline_ms_all": [round(1e3 * t, 3) for t in tb],
        })
        print(_row_text(rows[-1]), flush=True)
    return rows


def bench_text(batches: list[int], args) -> list[dict]:
    """MiniLM encode time for ``b`` distinct, uncached instructions (the runtime caches repeats)."""
    from spatialreward.student.text import InstructionEncoder

    enc = InstructionEncoder()
    enc.encode(["warm up the encoder"])
    rows = []
    for b in batches:
        counter = iter(range(10**9))

        def run():
            enc.encode([f"make the {next(counter)}th object red in the upper-left" for _ in range(b)])

        import torch

        ts = time_call(run, torch.device("cpu"), args.repeats, 1)
        m = statistics.median(ts)
        rows.append({"preset": "text:MiniLM-L6", "batch": b, "ms_per_call": round(1e3 * m, 3),
                     "ms_per_instruction": round(1e3 * m / b, 3)})
        print(f"{'MiniLM-L6 (uncached)':>22} b={b:<3} {1e3 * m / b:9.2f} ms/instruction", flush=True)
    return rows


def _row_text(r: dict) -> str:
    return (f"{r['preset']:>22} b={r['batch']:<3} student {r['student_ms_per_edit']:9.2f} ms/edit "
            f"{r['student_edits_per_s']:8.1f} edits/s | ViT 1-stream {r['baseline_ms_per_image']:8.2f} ms/img "
            f"{r['baseline_images_per_s']:8.1f} img/s | ratio {r['ratio_student_over_baseline']:.2f} | shared source "
            f"{r['group_ms_per_edit']:8.2f} ms/edit (ratio {r['ratio_group_over_baseline']:.2f})")


def markdown_table(rows: list[dict]) -> str:
    lines = ["| preset | px | batch | student ms/edit | edits/s | 1-stream ViT ms/img | img/s | ratio "
             "| shared-source ms/edit | ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "student_ms_per_edit" in r:
            lines.append(
                f"| {r['preset']} | {r['img_size']} | {r['batch']} | {r['student_ms_per_edit']:.2f} | "
                f"{r['student_edits_per_s']:.1f} | {r['baseline_ms_per_image']:.2f} | "
                f"{r['baseline_images_per_s']:.1f} | {r['ratio_student_over_baseline']:.2f} | "
                f"{r['group_ms_per_edit']:.2f} | {r['ratio_group_over_baseline']:.2f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import contextlib

    import torch

    from spatialreward.student.presets import list_presets

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and args.dtype != "fp32":
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]

        def autocast():  # no weight-cast cache under graph capture: the casts must be part of the graph
            return torch.autocast("cuda", dtype=dtype, cache_enabled=not args.cuda_graph)
    else:
        autocast = contextlib.nullcontext
    presets = args.presets or list_presets()
    load_before = os.getloadavg()
    print(f"student latency on {platform.processor() or platform.machine()} ({os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads, device {device}); load average {load_before[0]:.2f}", flush=True)
    rows: list[dict] = []
    for name in presets:
        for scale in args.quality_scale:
            rows += bench_preset(name, args.batches, args, device, autocast, scale)
    if not args.no_text:
        rows += bench_text(args.batches, args)
    load_after = os.getloadavg()
    print()
    print(markdown_table(rows))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {
        "benchmark": "student_latency",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "device": device_name, "torch_threads": torch.get_num_threads(),
                    "load_average_before": load_before, "load_average_after": load_after},
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__},
        "settings": {"batches": args.batches, "repeats": args.repeats, "warmup": args.warmup, "dtype": args.dtype,
                     "quality_scale": args.quality_scale},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "cpu" if device.type == "cpu" else device_name.replace(" ", "_") + ("-graph" if args.cuda_graph else "")
    path = args.out / f"{dt.date.today().isoformat()}-{tag}-student_latency.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
