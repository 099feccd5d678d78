"""The reward cost of one GRPO step: ``prompts`` × ``candidates`` edits at ``size`` px, in-process vs the server.

Every mode starts from the trainer's decoded PIL images and ends with one reward per edit, so each counts what it
really costs: resizing to the model side (all), PNG/BMP encoding + base64 + JSON + server decoding (HTTP), pickling
and restricted unpickling (protocol). Modes, interleaved per repeat (the one-request PNG / BMP / protocol modes only
when named: see DEFAULT_MODES):

  inproc          `RewardModel.score` on the whole step (a group's source object repeats: encoded once per group)
  inproc_tensors  `RewardModel.score_tensors` on tensors already at the model side (the model's share alone)
  inproc_ort      `inproc` with ``backend="onnxruntime"`` (the same weights, exported once before timing; skipped
                  with the reason where ONNX Runtime cannot run on ``--device``)
  v1_png          one ``POST /v1/score`` holding the step, PNG images
  v1_bmp          the same, BMP images (lossless, uncompressed)
  v1_bmp_groups   one request per group, all groups at once (asyncio), batched together by the server
  v1_raw          one ``POST /v1/score`` holding the step as a binary body of raw RGB frames (no codec, no base64)
  v1_raw_groups   one raw request per group, all groups at once (asyncio)
  protocol        one SpatialReward-protocol ``POST /`` holding the step

The student is ``nano`` with **random weights** (cost does not depend on them); the instruction encoder is the
real MiniLM. Ratios are p50 / in-process p50 of the same run.

    python bench/grpo_step.py                           # 48 prompts × 12 = 576 edits at 512 px → grpo_step_cpu.json
    python bench/grpo_step.py --prompts 48 --candidates 12 --device cuda --out bench/results/grpo_step_gpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import serve as serve_bench  # noqa: E402  (bench/serve.py: shared set-up)


# The one-request base64 and pickle modes put the whole step in one body (at the default step: ~0.65 GB of base64
# JSON, ~0.5 GB of pickle) and take many minutes through the in-process server here; a real client splits at 256
# items (RewardClient's default). Name them (or 'all') to time them anyway.
DEFAULT_MODES = ["inproc", "inproc_tensors", "inproc_ort", "v1_bmp_groups", "v1_raw", "v1_raw_groups"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prompts", type=int, default=48, help="groups (prompts) in the step")
    p.add_argument("--candidates", type=int, default=12, help="edits per prompt")
    p.add_argument("--size", type=int, default=512, help="side of the trainer's images, pixels")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per mode first")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="the server's batching window")
    p.add_argument("--modes", nargs="*", default=DEFAULT_MODES,
                   help="modes to time (inproc is always timed: the ratios' base); 'all' for every mode")
    p.add_argument("--preset", default="nano", help="student preset (random init)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "grpo_step_cpu.json")
    p.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON at --out")
    return p.parse_args(argv)


def plot(result: dict, path: Path) -> None:
    rows, st = result["rows"], result["settings"]
    serve_bench.bar_plot(path, [f"{st['edits']} edits at {st['size']} px"],
                         {r["mode"]: [r["step_ms_p50"]] for r in rows},
                         {r["mode"]: [r["ratio_over_inproc"]] for r in rows}, "p50 ms per GRPO step (lower is better)",
                         f"one GRPO step of rewards ({st['prompts']} x {st['candidates']}), {st['preset']}, "
                         f"{result['machine']['device']} ({result['date'][:10]})")


def ort_model(folder: Path, device: str):
    """The benchmark's student on ONNX Runtime (exported into ``folder/export-onnx``), or None with the reason."""
    from spatialreward import RewardModel
    from spatialreward.export.backends import BackendUnavailable

    try:
        return RewardModel.from_pretrained(folder, backend="onnxruntime", device=device)
    except BackendUnavailable as exc:
        print(f"skip inproc_ort: {exc}", flush=True)
        return None


def make_modes(rm, url: str, batch, candidates: int, rm_ort=None):
    import httpx
    import torch

    from spatialreward.serving import RewardClient

    sources, editeds, instructions = batch
    n = len(editeds)
    png, bmp, raw = (RewardClient(url, image_format=f, max_items_per_request=n) for f in ("png", "bmp", "raw"))

    def check(results):
        bad = [r for r in results if not r["ok"]]
        if bad:
            raise RuntimeError(f"{len(bad)} edits failed in the benchmark, e.g. {bad[0]['error']}")
        return [r["reward"] for r in results]

    # the model's share alone: inputs already at the model side, one source per group
    src_t, _ = rm.preprocess(sources[::candidates], ["source"] * (n // candidates))
    edt_t, _ = rm.preprocess(editeds, ["edited"] * n)
    index = torch.arange(n) // candidates

    def tensors():
        text = rm.text_encoder.encode(instructions)
        out = rm.score_tensors(src_t, edt_t, text, source_index=index)
        if rm.device.type == "cuda":
            torch.cuda.synchronize()
        return out.reward.float().cpu().tolist()

    async def groups_at_once(client_of_format):
        async with httpx.AsyncClient(timeout=600) as client:
            parts = await asyncio.gather(*[
                client_of_format.ascore(sources[i:i + candidates], editeds[i:i + candidates], instructions[i:i + candidates],
                           client=client)
                for i in range(0, n, candidates)])
        return check([r for part in parts for r in part])

    return {
        "inproc": lambda: rm.score(sources, editeds, instructions, batch_size=n, on_error="raise").reward.tolist(),
        "inproc_tensors": tensors,
        **({"inproc_ort": lambda: rm_ort.score(sources, editeds, instructions, batch_size=n,
                                              on_error="raise").reward.tolist()} if rm_ort is not None else {}),
        "v1_png": lambda: check(png.score(sources, editeds, instructions)),
        "v1_bmp": lambda: check(bmp.score(sources, editeds, instructions)),
        "v1_bmp_groups": lambda: asyncio.run(groups_at_once(bmp)),
        "v1_raw": lambda: check(raw.score(sources, editeds, instructions)),
        "v1_raw_groups": lambda: asyncio.run(groups_at_once(raw)),
        "protocol": lambda: serve_bench.protocol_call(url, sources, editeds, instructions),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.replot:
        plot(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.prompts * args.candidates
    load_before = os.getloadavg()
    print(f"one GRPO step: {args.prompts} prompts x {args.candidates} = {n} edits at {args.size} px; "
          f"{os.cpu_count()} cores, load average {load_before[0]:.2f}", flush=True)
    rm, folder = serve_bench.random_student(args.preset, args.device)
    rm_ort = ort_model(folder, args.device) if "inproc_ort" in args.modes or "all" in args.modes else None
    batch = serve_bench.grpo_batch(args.prompts, args.candidates, args.size, seed=1)
    srv = serve_bench.start_server(rm, max_batch=max(n, 256), max_wait_ms=args.max_wait_ms)
    try:
        fns = make_modes(rm, srv.url, batch, args.candidates, rm_ort)
        if "all" not in args.modes:
            unknown = set(args.modes) - set(fns) - ({"inproc_ort"} if rm_ort is None else set())  # skipped, said why
            if unknown:
                raise SystemExit(f"unknown mode(s) {sorted(unknown)}; choose from {list(fns)} or 'all'")
            fns = {k: v for k, v in fns.items() if k in args.modes or k == "inproc"}
        reference = np.asarray(fns["inproc"]())
        for name, fn in fns.items():
            for _ in range(args.warmup):
                got = np.asarray(fn())
            if not np.allclose(got, reference, atol=1e-4):
                raise RuntimeError(f"{name} rewards differ from in-process by {np.abs(got - reference).max():.2g}")
        times = {name: [] for name in fns}
        for _ in range(args.repeats):
            for name, fn in fns.items():
                time.sleep(0.05)  # untimed, as in bench/serve.py: the last call's OpenMP workers go idle first
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    finally:
        srv.stop()
    base = statistics.median(times["inproc"])
    rows = []
    for name, ts in times.items():
        p50 = statistics.median(ts)
        rows.append({"mode": name, "edits": n, "size": args.size, "step_ms_p50": round(p50 * 1e3, 1),
                     "step_ms_min": round(min(ts) * 1e3, 1), "step_ms_max": round(max(ts) * 1e3, 1),
                     "ms_per_edit": round(p50 * 1e3 / n, 3), "edits_per_s": round(n / p50, 1),
                     "ratio_over_inproc": round(p50 / base, 3), "all_ms": [round(t * 1e3, 1) for t in ts]})
        print(f"{name:15s} {p50 * 1e3:9.1f} ms per step  {p50 * 1e3 / n:7.3f} ms/edit  ×{p50 / base:.2f}", flush=True)
    result = {
        "benchmark": "grpo_step",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python bench/grpo_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {**serve_bench.machine_info(args.device), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "versions": serve_bench.versions(),
        "settings": {"prompts": args.prompts, "candidates": args.candidates, "edits": n, "size": args.size,
                     "preset": args.preset, "weights": "random init (cost does not depend on them)",
                     "text_encoder": rm.student.cfg.text_encoder, "repeats": args.repeats, "warmup": args.warmup,
                     "max_wait_ms": args.max_wait_ms, "device": args.device},
        "rows": rows,
    }
    serve_bench.write_json(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
