"""Reward-server cost on loopback: latency (p50 / p99) and throughput, in-process vs HTTP, side by side.

One workload is a GRPO batch: ``groups`` prompts × ``candidates`` edits (one source photo-like image and one
instruction per group). Each mode runs in its own paired pass against in-process scoring (the pairs alternate
which call goes first), so every ratio compares calls made seconds apart under the same machine load:

  inproc     `RewardModel.score` on the PIL images (resize + model + post-processing)
  v1_png     `RewardClient.score` → ``POST /v1/score`` (PNG encode + base64 + JSON + server decode + the same model call)
  v1_bmp     the same with ``image_format="bmp"`` (lossless, uncompressed: far cheaper to encode on loopback)
  v1_raw     the same with ``image_format="raw"``: a binary body of raw RGB frames, no codec and no base64
  protocol   ``POST /`` with the SpatialReward pickled-dict body (client pickling + restricted unpickling)

then a concurrency row: ``concurrency`` clients each sending one group at a time (``v1_raw``), so the server's
dynamic batching merges them. Ratios are HTTP p50 / in-process p50 of the same pass (and the median of the pairs' own ratios). The student is ``nano``
with **random weights** (the cost does not depend on the weights); the instruction encoder is the real MiniLM.

    python bench/serve.py                                    # ~5 min on a 2-core CPU → bench/results/serve_cpu.json
    python bench/serve.py --workloads 4x8 8x8 --repeats 15 --size 256
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pickle
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workloads", nargs="*", default=["4x8", "8x8"], help="GROUPSxCANDIDATES per call")
    p.add_argument("--size", type=int, default=256, help="side of the source / edited images, pixels")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per mode and workload")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per mode first")
    p.add_argument("--concurrency", type=int, nargs="*", default=[1, 4, 16],
                   help="clients in the concurrency rows (none: skip them)")
    p.add_argument("--sweep-wait-ms", type=float, nargs="*", default=[0.0, 5.0, 20.0],
                   help="batching windows the concurrency rows run under (one server each)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="the server's batching window")
    p.add_argument("--pause-ms", type=float, default=50.0,
                   help="untimed pause before each timed call. Why: the server's model thread and the in-process "
                        "caller each own an OpenMP team; right after one runs, its workers spin for a while and bill "
                        "whatever runs next on the other team (measured: x1.2 back to back, x1.01-1.06 with 50 ms)")
    p.add_argument("--preset", default="nano", help="student preset (random init)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve_cpu.json")
    p.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON at --out")
    return p.parse_args(argv)


# -- set-up shared with bench/grpo_step.py -------------------------------------------------------------------------

def random_student(preset: str, device: str):
    """A randomly initialised student saved and loaded the way a trained one is; returns (RewardModel, folder)."""
    import torch

    from spatialreward import RewardModel
    from spatialreward.student.model import Student
    from spatialreward.student.presets import preset_config

    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="sr-bench-"))
    Student(preset_config(preset)).save_pretrained(folder)
    return RewardModel.from_pretrained(folder, device=device), folder


def grpo_batch(groups: int, candidates: int, size: int, seed: int = 0):
    """``groups`` smooth random sources, ``candidates`` edits of each (a recoloured patch + noise), instructions."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources, editeds, instructions = [], [], []
    for g in range(groups):
        low = rng.uniform(30, 220, (6, 6, 3)).astype(np.uint8)
        src = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC)).astype(np.int16)
        src_img = Image.fromarray(src.astype(np.uint8))
        for k in range(candidates):
            edt = src.copy()
            x, y = (int(v) for v in rng.integers(0, size // 2, 2))
            side = size // 8
            edt[y:y + side, x:x + side] = rng.integers(0, 255, 3)
            edt = np.clip(edt + rng.normal(0, 2 + k, edt.shape), 0, 255).astype(np.uint8)
            sources.append(src_img)  # one object per group, as a trainer that keeps its prompt's image passes it
            editeds.append(Image.fromarray(edt))
            instructions.append(f"paint the square {['red', 'green', 'blue', 'yellow'][g % 4]}")
    return sources, editeds, instructions


def start_server(rm, *, max_batch: int, max_wait_ms: float):
    from spatialreward.serving import ServeConfig
    from spatialreward.serving.server import BackgroundServer

    cfg = ServeConfig(model="bench", port=0, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=8192,
                      max_items=2048, max_body_bytes=2 * 1024**3)
    return BackgroundServer(cfg, rm).start()


def protocol_call(url: str, sources, editeds, instructions) -> list[float]:
    """One SpatialReward-protocol request as upstream clients send it; returns the rewards."""
    import httpx

    from spatialreward.serving.protocol import restricted_loads

    body = pickle.dumps({"input_images": [[s] for s in sources], "output_image": list(editeds),
                         "meta_datas": [{"instruction": t} for t in instructions], "server_type": "spatialreward"})
    r = httpx.post(url + "/", content=body, timeout=600)
    r.raise_for_status()
    return restricted_loads(r.content, max_pixels=1)["rewards"]


def machine_info(device: str) -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
            "torch_threads": torch.get_num_threads()}


def versions() -> dict:
    import fastapi
    import torch
    import uvicorn

    return {"python": sys.version.split()[0], "torch": torch.__version__, "fastapi": fastapi.__version__,
            "uvicorn": uvicorn.__version__}


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    print(f"\nwrote {path}")


def bar_plot(path: Path, groups: list[str], series: dict[str, list[float]], ratios: dict[str, list[float]],
             ylabel: str, title: str) -> None:
    """Grouped bars (one group per workload, one bar per mode) labelled with their ratio to in-process."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) * len(series) / 2), 4))
    width = 0.8 / len(series)
    for i, (name, ys) in enumerate(series.items()):
        xs = [j + i * width for j in range(len(groups))]
        bars = ax.bar(xs, ys, width, label=name)
        ax.bar_label(bars, labels=[f"×{r:.2f}" for r in ratios[name]], fontsize=7)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
    ax.set_xticklabels(groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def plot(result: dict, path: Path) -> None:
    rows = [r for r in result["rows"] if "max_wait_ms" not in r]  # the single-client side-by-side rows
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    pick = {(r["workload"], r["mode"]): r for r in rows}
    series = {m: [pick[w, m]["p50_ms"] for w in workloads] for m in modes}
    ratios = {m: [pick[w, m]["ratio_p50_over_inproc"] for w in workloads] for m in modes}
    bar_plot(path, [f"{w} ({pick[w, 'inproc']['edits']} edits)" for w in workloads], series, ratios,
             "p50 ms per call (lower is better)",
             f"reward server vs in-process, {result['settings']['preset']}, {result['settings']['size']} px, "
             f"{result['machine']['device']} ({result['date'][:10]})")


def plot_sweep(result: dict, path: Path) -> None:
    """Throughput and p50 latency against the number of clients, one line per batching window."""
    rows = [r for r in result["rows"] if "max_wait_ms" in r]
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for wait in sorted({r["max_wait_ms"] for r in rows}):
        line = sorted((r for r in rows if r["max_wait_ms"] == wait), key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in line]
        left.plot(xs, [r["edits_per_s"] for r in line], marker="o", label=f"window {wait:g} ms")
        right.plot(xs, [r["p50_ms"] for r in line], marker="o", label=f"window {wait:g} ms")
    for ax, label in ((left, "edits / s (higher is better)"), (right, "p50 ms per request")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients (one group of 8 per request)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"reward server under load, raw body, {result['machine']['device']} ({result['date'][:10]})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# -- the benchmark -------------------------------------------------------------------------------------------------

def modes(rm, url: str):
    from spatialreward.serving import RewardClient

    png, bmp, raw = (RewardClient(url, image_format=f) for f in ("png", "bmp", "raw"))

    def check(results):
        if not all(r["ok"] for r in results):
            raise RuntimeError(f"an edit failed in the benchmark: {next(r for r in results if not r['ok'])}")
        return [r["reward"] for r in results]

    return {
        "inproc": lambda s, e, t: rm.score(s, e, t, batch_size=len(e), on_error="raise").reward.tolist(),
        "v1_raw": lambda s, e, t: check(raw.score(s, e, t)),  # next to inproc: the pair the target is about
        "v1_bmp": lambda s, e, t: check(bmp.score(s, e, t)),
        "v1_png": lambda s, e, t: check(png.score(s, e, t)),
        "protocol": lambda s, e, t: protocol_call(url, s, e, t),
    }


def bench_workload(rm, url, groups, candidates, args) -> list[dict]:
    batch = grpo_batch(groups, candidates, args.size, seed=groups * 100 + candidates)
    n = groups * candidates
    fns = modes(rm, url)
    reference = np.asarray(fns["inproc"](*batch))
    for name, fn in fns.items():  # warm up and check that every path gives the same rewards
        for _ in range(args.warmup):
            got = np.asarray(fn(*batch))
        if not np.allclose(got, reference, atol=1e-4):
            raise RuntimeError(f"{name} rewards differ from in-process by {np.abs(got - reference).max():.2g}")
    # One paired pass per mode: `repeats` (in-process, mode) pairs, alternating which goes first (ABBA), so each
    # ratio compares calls made seconds apart under the same load, and a heavy mode (PNG) never runs between the
    # two calls of another mode's pair.
    times: dict[str, list[float]] = {"inproc": []}
    paired: dict[str, list[float]] = {}  # mode -> the in-process times of its own pass
    for name, fn in fns.items():
        if name == "inproc":
            continue
        times[name], paired[name] = [], []
        for r in range(args.repeats):
            order = [("inproc", fns["inproc"]), (name, fn)]
            for who, call in order if r % 2 == 0 else order[::-1]:
                time.sleep(args.pause_ms / 1000)  # untimed: the previous call's spinning OpenMP workers go idle
                t0 = time.perf_counter()
                call(*batch)
                (paired[name] if who == "inproc" else times[name]).append(time.perf_counter() - t0)
        times["inproc"] += paired[name]
    rows = []
    for name, ts in times.items():
        p50 = statistics.median(ts)
        base_ts = paired.get(name, ts)
        base = statistics.median(base_ts)
        rows.append({"workload": f"{groups}x{candidates}", "edits": n, "size": args.size, "mode": name,
                     "concurrency": 1, "p50_ms": round(p50 * 1e3, 2), "p99_ms": round(percentile(ts, 99) * 1e3, 2),
                     "edits_per_s": round(n / p50, 1),
                     # against the in-process calls of this mode's own pass
                     "inproc_p50_ms_same_pass": round(base * 1e3, 2), "ratio_p50_over_inproc": round(p50 / base, 3),
                     # the median of each pair's own ratio: a load swing that hits one pair cancels
                     "ratio_paired_median": round(statistics.median(t / b for t, b in zip(ts, base_ts)), 3),
                     "overhead_pct": round(100 * (p50 / base - 1), 1), "n_calls": len(ts),
                     "all_ms": [round(t * 1e3, 2) for t in ts]})
        print(f"{groups}x{candidates} {name:9s} p50 {p50 * 1e3:8.1f} ms  p99 {percentile(ts, 99) * 1e3:8.1f} ms  "
              f"{n / p50:7.1f} edits/s  ×{p50 / base:.2f} (paired ×{rows[-1]['ratio_paired_median']:.2f})",
              flush=True)
    return rows


def bench_concurrency(rm, url, args, groups: int, candidates: int, worker, clients: int, wait_ms: float) -> dict:
    """``clients`` clients, each sending one group per request; the server batches across them."""
    from spatialreward.serving import RewardClient

    batch = grpo_batch(groups, candidates, args.size, seed=7)
    per_client = max(2, args.repeats // 2)
    latencies: list[float] = []
    lock = threading.Lock()
    calls_before = worker.batches

    def client(c: int):
        rc = RewardClient(url, image_format="raw")
        g = c % groups
        sl = slice(g * candidates, (g + 1) * candidates)
        for _ in range(per_client):
            t0 = time.perf_counter()
            rc.score(batch[0][sl], batch[1][sl], batch[2][sl])
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - t0
    edits = clients * per_client * candidates
    model_calls = worker.batches - calls_before
    row = {"workload": f"{clients} clients x 1 group of {candidates}", "edits": edits, "size": args.size,
           "mode": "v1_raw", "concurrency": clients, "max_wait_ms": wait_ms,
           "p50_ms": round(statistics.median(latencies) * 1e3, 2),
           "p99_ms": round(percentile(latencies, 99) * 1e3, 2), "edits_per_s": round(edits / wall, 1),
           "n_calls": len(latencies), "model_calls": model_calls,
           "mean_edits_per_model_call": round(edits / max(model_calls, 1), 1)}
    print(f"{clients:3d} clients, window {wait_ms:4.0f} ms: p50 {row['p50_ms']} ms  {row['edits_per_s']} edits/s  "
          f"{row['mean_edits_per_model_call']} edits per model call", flush=True)
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.replot:
        result = json.loads(args.out.read_text())
        plot(result, args.out.with_suffix(".png"))
        plot_sweep(result, args.out.with_name(args.out.stem + "_concurrency.png"))
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    workloads = [tuple(int(v) for v in w.split("x")) for w in args.workloads]
    load_before = os.getloadavg()
    print(f"reward server on loopback, {os.cpu_count()} cores, load average {load_before[0]:.2f}", flush=True)
    rm, folder = random_student(args.preset, args.device)
    max_batch = max(g * c for g, c in workloads)
    srv = start_server(rm, max_batch=max(max_batch, 64), max_wait_ms=args.max_wait_ms)
    try:
        rows = []
        for groups, candidates in workloads:
            rows += bench_workload(rm, srv.url, groups, candidates, args)
    finally:
        srv.stop()
    groups, candidates = workloads[0]
    for wait_ms in args.sweep_wait_ms if args.concurrency else []:  # the batch policy x concurrency grid
        srv = start_server(rm, max_batch=max(max_batch, 64), max_wait_ms=wait_ms)
        try:
            for clients in args.concurrency:
                rows.append(bench_concurrency(rm, srv.url, args, groups, candidates, srv.service.worker, clients,
                                              wait_ms))
        finally:
            srv.stop()
    result = {
        "benchmark": "serve",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python bench/serve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {**machine_info(args.device), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "versions": versions(),
        "settings": {"preset": args.preset, "weights": "random init (cost does not depend on them)",
                     "text_encoder": rm.student.cfg.text_encoder, "size": args.size, "repeats": args.repeats,
                     "warmup": args.warmup, "max_wait_ms": args.max_wait_ms, "pause_ms": args.pause_ms,
                     "device": args.device},
        "rows": rows,
    }
    write_json(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    plot_sweep(result, args.out.with_name(args.out.stem + "_concurrency.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
