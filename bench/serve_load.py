"""Load test of the reward server on loopback: many concurrent clients, mixed request sizes, 0 lost, 0 misrouted.

The server runs as its own process (``spatialreward serve``), as a trainer would meet it. ``--clients`` asyncio
clients share ``--requests`` requests; each request carries 1..``--max-edits`` edits drawn at random from a pool of
distinct edits (mixed image sizes), and every answer is checked against a direct in-process `RewardModel.score` of
the same edit: reward within 1e-4 and all four sub-scores within 1e-3 points, so an answer routed to the wrong item
is caught (the JSON records the smallest distance between two pool items, i.e. how far apart a swap would look).
Mixed in, every ``--fault-every``-th request is a fault: a malformed body (must get a 4xx) or a client that
disconnects mid-request (must not hurt anyone else). Counts: lost (no answer, transport error, 5xx), misrouted,
failed items, fault outcomes; latency p50 / p99 per request; the server's own counters from ``/metrics``.

    python bench/serve_load.py                       # 20,000 requests, 32 clients → bench/results/serve_load_cpu.json
    python bench/serve_load.py --requests 2000 --clients 8 --out /tmp/load.json

The student is ``nano`` with random weights (routing and loss do not depend on the weights).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import grpo_batch, machine_info, percentile, random_student, versions, write_json  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=20_000, help="requests in all (faults included)")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients")
    p.add_argument("--max-edits", type=int, default=4, help="edits per request: uniform in 1..this")
    p.add_argument("--sizes", type=int, nargs="*", default=[48, 96, 160], help="image sides of the pool, pixels")
    p.add_argument("--pool-groups", type=int, default=8, help="groups per image size in the pool (8 edits each)")
    p.add_argument("--fault-every", type=int, default=200, help="every N-th request is a fault (0: none)")
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--port", type=int, default=23599)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-format", default="bmp", choices=["png", "bmp", "raw"],
                   help="how clients send images (raw: the binary frames body, resized to the model side)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve_load_cpu.json")
    return p.parse_args(argv)


def build_pool(rm, sizes, groups):
    """Distinct edits of several sizes and their direct in-process results (the ground truth of routing)."""
    pool = []
    for side in sizes:
        src, edt, ins = grpo_batch(groups, 8, side, seed=side)
        out = rm.score(src, edt, ins, on_error="raise")
        for i in range(len(edt)):
            pool.append({"source": src[i], "edited": edt[i], "instruction": ins[i],
                         "reward": float(out.reward[i]), "subscores": out.subscores[i].tolist()})
    signature = np.array([[p["reward"] * 100, *p["subscores"]] for p in pool])
    gaps = np.abs(signature[:, None] - signature[None]).max(-1) + np.eye(len(pool)) * 1e9
    return pool, float(gaps.min())


def start_server(folder: Path, args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "spatialreward", "serve", "--model", str(folder), "--port", str(args.port),
           "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--max-queue", "8192"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{args.port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not become healthy within 180 s")


async def run_load(url: str, pool, args) -> dict:
    import httpx

    from spatialreward.serving import RewardClient
    from spatialreward.serving.client import image_value, serialise

    rng = random.Random(args.seed)
    plan = []  # (kind, item indices) per request
    for n in range(args.requests):
        if args.fault_every and n % args.fault_every == args.fault_every - 1:
            plan.append(("malformed" if (n // args.fault_every) % 2 == 0 else "disconnect", []))
        else:
            plan.append(("score", [rng.randrange(len(pool)) for _ in range(rng.randint(1, args.max_edits))]))
    client = RewardClient(url, image_format=args.image_format, retries=0, timeout_s=300, deadline_s=600)
    side = client.model_side()  # raw only: the server's input side, asked once
    encoded = [{"source": image_value(p["source"], args.image_format, side),
                "edited": image_value(p["edited"], args.image_format, side),
                "instruction": p["instruction"]} for p in pool]
    stats = {"requests": 0, "answered": 0, "lost": 0, "misrouted": 0, "failed_items": 0, "edits_checked": 0,
             "malformed_4xx": 0, "malformed_other": 0, "disconnects": 0, "lost_examples": [], "misrouted_examples": []}
    latencies: list[float] = []
    queue: asyncio.Queue = asyncio.Queue()
    for entry in plan:
        queue.put_nowait(entry)

    async def one_client(http: httpx.AsyncClient):
        while True:
            try:
                kind, idx = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            stats["requests"] += 1
            if kind == "malformed":
                r = await http.post(f"{url}/v1/score", content=b'{"items": [{"source": 3', timeout=60,
                                    headers={"content-type": "application/json"})
                stats["malformed_4xx" if 400 <= r.status_code < 500 else "malformed_other"] += 1
                continue
            if kind == "disconnect":  # send a real request, then hang up before the answer
                try:
                    body, content_type = serialise({"items": [encoded[0]] * 8})
                    await http.post(f"{url}/v1/score", content=body, headers={"content-type": content_type},
                                    timeout=0.002)
                except httpx.TimeoutException:
                    pass
                stats["disconnects"] += 1
                continue
            t0 = time.perf_counter()
            try:
                results = await client.apost({"items": [encoded[i] for i in idx]}, http)
            except Exception as exc:  # lost: the client saw no answer
                stats["lost"] += 1
                if len(stats["lost_examples"]) < 5:
                    stats["lost_examples"].append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            latencies.append(time.perf_counter() - t0)
            stats["answered"] += 1
            if len(results) != len(idx):
                stats["misrouted"] += 1
                continue
            for i, res in zip(idx, results):
                if not res["ok"]:
                    stats["failed_items"] += 1
                    continue
                stats["edits_checked"] += 1
                want = pool[i]
                if (abs(res["reward"] - want["reward"]) > 1e-4
                        or max(abs(a - b) for a, b in zip(res["subscores"].values(), want["subscores"])) > 1e-3):
                    stats["misrouted"] += 1
                    if len(stats["misrouted_examples"]) < 5:
                        stats["misrouted_examples"].append({"item": i, "got": res["reward"], "want": want["reward"]})

    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        from rich.progress import Progress

        with Progress(transient=True) as progress:
            task = progress.add_task("requests", total=len(plan))

            async def tick():
                while not queue.empty():
                    progress.update(task, completed=stats["requests"])
                    await asyncio.sleep(0.5)

            ticker = asyncio.create_task(tick())
            await asyncio.gather(*(one_client(http) for _ in range(args.clients)))
            ticker.cancel()
        metrics = (await http.get(f"{url}/metrics", timeout=30)).text
    wall = time.perf_counter() - t0
    stats.update({"wall_s": round(wall, 2), "requests_per_s": round(stats["requests"] / wall, 1),
                  "edits_per_s": round(stats["edits_checked"] / wall, 1),
                  "latency_p50_ms": round(percentile(latencies, 50) * 1e3, 2),
                  "latency_p99_ms": round(percentile(latencies, 99) * 1e3, 2),
                  "server_metrics": {line.split(" ")[0]: float(line.split(" ")[-1]) for line in metrics.splitlines()
                                     if line and not line.startswith("#") and line.startswith("spatialreward_")
                                     and "_bucket" not in line and "_created" not in line}})
    return stats


def main(argv=None) -> int:
    args = parse_args(argv)
    rm, folder = random_student("nano", "cpu")
    pool, min_gap = build_pool(rm, args.sizes, args.pool_groups)
    print(f"pool: {len(pool)} distinct edits, sizes {args.sizes}; smallest signature distance {min_gap:.3g}")
    proc = start_server(folder, args)
    try:
        stats = asyncio.run(run_load(f"http://127.0.0.1:{args.port}", pool, args))
        alive = proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    faults = stats["malformed_4xx"] + stats["malformed_other"] + stats["disconnects"]
    ok = (stats["lost"] == 0 and stats["misrouted"] == 0 and stats["failed_items"] == 0
          and stats["malformed_other"] == 0 and alive)
    result = {"benchmark": "serve_load", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": "python bench/serve_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine_info("cpu"), "versions": versions(), "load_average": os.getloadavg(),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "pool_edits": len(pool), "pool_min_signature_distance": min_gap, "server_alive_at_end": alive,
              "faults_sent": faults, "passed": ok, **stats}
    write_json(args.out, result)
    print(f"{stats['requests']} requests ({faults} faults) from {args.clients} clients in {stats['wall_s']} s: "
          f"lost {stats['lost']}, misrouted {stats['misrouted']}, failed items {stats['failed_items']}, "
          f"malformed→4xx {stats['malformed_4xx']}/{stats['malformed_4xx'] + stats['malformed_other']}; "
          f"p50 {stats['latency_p50_ms']} ms, p99 {stats['latency_p99_ms']} ms; {stats['edits_per_s']} edits/s")
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
