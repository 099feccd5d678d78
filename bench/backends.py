"""Per-edit latency of the scoring backends side by side: torch eager, torch.compile, ONNX Runtime (CPU; CUDA and
TensorRT on a GPU box), timed in one run through the same encode / score protocol `RewardModel` uses.

For each batch ``b`` one call is ``encode([sources; edits])`` (2b images) + ``score`` (b edits): what `RewardModel`
pays after preprocessing (image decode / resize and the cached instruction embedding are the same for every
backend and left out). The group row is a GRPO group: one source + 8 candidates, the source encoded once (9
images) — compared with plain scoring of 8 edits (16 images). Repeats interleave everything (each repeat runs every
row of every case once), so all rows see the same machine load; p50 / p99 are over the repeats, per edit = per call
/ b; ratios are torch-eager time / backend time (> 1: faster than eager).

    python bench/backends.py                        # nano, batches 1 8 32, CPU: eager, compile, onnxruntime
    python bench/backends.py --quick                # fewer repeats (the committed CPU run)
    python bench/backends.py --device cuda --batches 1 8 64 256   # + ORT CUDA / TensorRT where installed
    python bench/backends.py --score-variants fusion_depth=0 cross_heads=2   # what a lighter decoder would buy

Results: ``bench/results/backends_<device>.json`` (machine, versions, load, rows, ratios, targets) and a PNG beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {  # issue 10, CPU, 2 cores, nano, fp32
    "ort_vs_eager_batch1": 1.5, "ort_vs_eager_batch32": 1.2, "group_vs_plain_per_edit": 1.6,
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="nano", help="student preset (random weights; speed does not depend on them)")
    p.add_argument("--model", default=None, help="a trained student folder instead of --preset")
    p.add_argument("--batches", nargs="*", type=int, default=[1, 8, 32], help="edits per call")
    p.add_argument("--group", type=int, default=8, help="candidates per GRPO group (0 = no group rows)")
    p.add_argument("--repeats", type=int, default=15, help="timed repeats per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per row (torch.compile compiles here)")
    p.add_argument("--quick", action="store_true", help="7 repeats, 2 warm-up calls")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch and ORT (the issue's box: 2 cores)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--backends", nargs="*", default=None,
                   help="subset of: eager compile onnxruntime tensorrt (default: all that run here)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="folder for JSON + PNG")
    p.add_argument("--fp16-parity", action="store_true",
                   help="also export fp16 and record its max deviation from fp32 (ONNX Runtime on --device)")
    p.add_argument("--score-variants", nargs="*", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                   help="decoder variants of --preset (StudentConfig overrides, e.g. fusion_depth=0): each is exported "
                        "with random weights and its ONNX Runtime stages and group rows are timed in the same "
                        "interleaved loop, so its S / E and group ratio sit next to the preset's")
    args = p.parse_args(argv)
    args.score_variants = [parse_variant(v, p) for v in args.score_variants]
    if args.quick:
        args.repeats, args.warmup = 7, 2
    return args


def parse_variant(text: str, parser: argparse.ArgumentParser) -> dict:
    """``"fusion_depth=0,cross_heads=2"`` → StudentConfig overrides with int / float / bool / str values."""
    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--score-variants {text!r}: {item!r} is not KEY=VALUE")
        for cast in (int, float):
            try:
                out[key.strip()] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = {"true": True, "false": False}.get(value.lower(), value)
    if not out:
        parser.error(f"--score-variants {text!r}: give at least one KEY=VALUE")
    return out


def variant_name(overrides: dict) -> str:
    return "onnxruntime cpu, " + ",".join(f"{k}={v}" for k, v in overrides.items())


def make_variant_backends(args, work: Path, log=print) -> dict:
    """ONNX Runtime backends of random-weight --preset students with each of --score-variants' overrides."""
    import torch

    from spatialreward.export.backends import OnnxRuntimeBackend
    from spatialreward.export.onnx_export import ExportConfig, export_onnx
    from spatialreward.student.model import Student
    from spatialreward.student.presets import preset_config

    found = {}
    for i, overrides in enumerate(args.score_variants):
        torch.manual_seed(0)
        run = work / f"variant_{i}"
        Student(preset_config(args.preset, **overrides)).save_pretrained(run)
        onnx_dir = export_onnx(ExportConfig(model=str(run), out=str(work / f"variant_{i}_onnx"), max_batch=512),
                               log=log)
        found[variant_name(overrides)] = OnnxRuntimeBackend(onnx_dir, device=args.device,
                                                            intra_op_threads=args.threads)
    return found


def make_backends(args, work: Path, log=print) -> dict:
    import torch

    from spatialreward.export.backends import OnnxRuntimeBackend, TorchBackend
    from spatialreward.export.onnx_export import ExportConfig, export_onnx
    from spatialreward.student.model import Student
    from spatialreward.student.presets import preset_config

    if args.model:
        run = Path(args.model)
    else:
        torch.manual_seed(0)
        run = work / "run"
        Student(preset_config(args.preset)).save_pretrained(run)
    wanted = set(args.backends or ["eager", "compile", "onnxruntime", "tensorrt"])
    found: dict = {}
    if "eager" in wanted:
        found["torch eager"] = TorchBackend.from_pretrained(run, device=args.device)
    if "compile" in wanted:
        found["torch.compile"] = TorchBackend.from_pretrained(run, device=args.device, compile=True,
                                                              compile_dynamic=True)  # one compile for all batches
    needs_onnx = wanted & {"onnxruntime", "tensorrt"}
    onnx_dir = export_onnx(ExportConfig(model=str(run), out=str(work / "onnx"), max_batch=max(512, *args.batches)),
                           log=log) if needs_onnx else None
    if "onnxruntime" in wanted:
        name = "onnxruntime " + ("cuda" if args.device.startswith("cuda") else "cpu")
        try:
            found[name] = OnnxRuntimeBackend(onnx_dir, device=args.device, intra_op_threads=args.threads)
        except Exception as exc:  # noqa: BLE001 - a missing provider is a row we report, not a crash
            log(f"skip {name}: {exc}")
    if "tensorrt" in wanted and args.device.startswith("cuda"):
        from spatialreward.export.tensorrt import TensorRTBackend, build_engines, tensorrt_available

        if tensorrt_available():
            engines = build_engines(onnx_dir, work / "engines", precision="fp16",
                                    batch=(1, max(args.batches) // 2 or 1, max(args.batches)),
                                    timing_cache=work / "timing.cache", log=log)
            found["tensorrt fp16"] = TensorRTBackend(engines, device=args.device)
            found["tensorrt fp16 + cuda graphs"] = TensorRTBackend(engines, device=args.device, cuda_graphs=True)
        else:
            log("skip tensorrt: not installed")
    return found


def make_calls(backend, b: int, side: int, text_dim: int, device: str, group: bool):
    """A closure that scores ``b`` edits once (plain: b sources + b edits; group: 1 source + b candidates)."""
    import torch

    g = torch.Generator().manual_seed(b)
    n_src = 1 if group else b
    images = torch.randint(0, 256, (n_src + b, side, side, 3), dtype=torch.uint8, generator=g).to(device)
    text = torch.nn.functional.normalize(torch.randn(b, text_dim, generator=g), dim=1).to(device)
    index = torch.zeros(b, dtype=torch.long, device=device) if group else torch.arange(b, device=device)

    def call():
        enc = backend.encode(images)
        src = tuple(t[:n_src][index] for t in enc)
        return backend.score(src, tuple(t[n_src:] for t in enc), text)

    return call


def make_stage_call(backend, stage: str, b: int, side: int, text_dim: int, device: str):
    """A closure that runs one stage alone on ``b`` rows: ``encode`` (b images) or ``score`` (b edits on encodings
    made once, untimed). Their ratio S / E sets what group scoring can save: (2E + S) / (1.125E + S) at 8."""
    import torch

    g = torch.Generator().manual_seed(1000 + b)
    images = torch.randint(0, 256, (2 * b, side, side, 3), dtype=torch.uint8, generator=g).to(device)
    text = torch.nn.functional.normalize(torch.randn(b, text_dim, generator=g), dim=1).to(device)
    if stage == "encode":
        return lambda: backend.encode(images[:b])
    with torch.inference_mode():
        enc = backend.encode(images)
    source, edited = tuple(t[:b] for t in enc), tuple(t[b:] for t in enc)
    return lambda: backend.score(source, edited, text)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))
    return xs[k]


def run(args, log=print) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        backends = make_backends(args, Path(tmp), log=log)
        variants = make_variant_backends(args, Path(tmp), log=log) if args.score_variants else {}
        any_backend = next(iter(backends.values()))
        side = any_backend.image_size
        text_dim = (any_backend.student.cfg.text_dim if hasattr(any_backend, "student")
                    else int(any_backend.meta["text_encoder"]["dim"]))
        cases = [("plain", b) for b in args.batches] + ([("group", args.group)] if args.group else [])
        rows = []
        calls = {(kind, b, name): make_calls(be, b, side, text_dim, args.device, kind == "group")
                 for kind, b in cases for name, be in backends.items()}
        if args.group:  # variants: the group's plain and group rows only
            calls.update({(kind, args.group, name): make_calls(be, args.group, side, text_dim, args.device,
                                                               kind == "group")
                          for kind in ("plain", "group") for name, be in variants.items()})
        backends = {**backends, **variants}
        if args.group:  # each stage alone at the group's batch, for every backend that runs the two graphs
            calls.update({(stage, args.group, name): make_stage_call(be, stage, args.group, side, text_dim,
                                                                     args.device)
                          for stage in ("encode", "score") for name, be in backends.items()})
        for key, call in calls.items():
            t0 = time.perf_counter()
            with torch.inference_mode():
                for _ in range(args.warmup):
                    call()
            _sync(args.device)
            log(f"{key[0]} b={key[1]} {key[2]}: warm-up {time.perf_counter() - t0:.1f}s")
        times = {key: [] for key in calls}
        for _ in range(args.repeats):  # every row of every case in each repeat: all see the same machine load
            for key, call in calls.items():
                _sync(args.device)
                t0 = time.perf_counter()
                with torch.inference_mode():
                    call()
                _sync(args.device)
                times[key].append(time.perf_counter() - t0)
        for (kind, b, name), ts in times.items():
            eager_ts = times.get((kind, b, "torch eager"))
            eager = statistics.median(eager_ts) if eager_ts else None
            p50, p99 = statistics.median(ts), _percentile(ts, 0.99)
            rows.append({
                "backend": name, "case": kind, "batch": b, "repeats": len(ts),
                "p50_ms_per_call": 1e3 * p50, "p50_ms_per_edit": 1e3 * p50 / b, "p99_ms_per_edit": 1e3 * p99 / b,
                "edits_per_s": b / p50, "speedup_vs_torch_eager": (eager / p50) if eager else None,
            })
            log(f"{kind:5s} b={b:<4d} {name:28s} {1e3 * p50 / b:8.3f} ms/edit  p99 {1e3 * p99 / b:8.3f}  "
                f"{b / p50:9.1f} edits/s  x{(eager / p50) if eager else float('nan'):.2f} vs eager")
        describe = {name: be.describe() for name, be in backends.items()}
    return {"rows": rows, "stages": _stages(rows, args), "backends": describe,
            "checks": _checks(rows, args, _paired_group_ratios(times, args.group))}


def _paired_group_ratios(times: dict, group: int) -> dict:
    """Per backend, the median over repeats of plain / group time *within one repeat* (the two rows run moments
    apart), a second estimate of the group ratio that a slow drift of the machine's speed moves less than the
    ratio of two medians."""
    out = {}
    for (kind, b, name), plain in times.items():
        grouped = times.get(("group", b, name))
        if kind == "plain" and b == group and grouped:
            out[name] = statistics.median(p / g for p, g in zip(plain, grouped))
    return out


def _stages(rows: list[dict], args) -> dict:
    """Per backend: encode ms per image, score ms per edit, S / E, and the group ratio they predict at --group."""
    out = {}
    for name in dict.fromkeys(r["backend"] for r in rows):
        e = next((r for r in rows if r["backend"] == name and r["case"] == "encode"), None)
        sc = next((r for r in rows if r["backend"] == name and r["case"] == "score"), None)
        if e and sc:
            ratio = sc["p50_ms_per_edit"] / e["p50_ms_per_edit"]
            out[name] = {"encode_ms_per_image": e["p50_ms_per_edit"], "score_ms_per_edit": sc["p50_ms_per_edit"],
                         "score_over_encode": ratio,
                         "predicted_group_vs_plain": (2 + ratio) / (1 + 1 / args.group + ratio)}
    return out


def fp16_parity(args, log=print) -> dict:
    """Max |fp16 − fp32| of reward / sub-scores / mask agreement, both exports run by ONNX Runtime on --device."""
    import torch

    from spatialreward.export.backends import OnnxRuntimeBackend
    from spatialreward.export.onnx_export import ExportConfig, export_onnx
    from spatialreward.student.model import Student
    from spatialreward.student.presets import preset_config

    with tempfile.TemporaryDirectory(prefix="bench-fp16-") as tmp:
        torch.manual_seed(0)
        run = Path(args.model) if args.model else Student(preset_config(args.preset)).save_pretrained(Path(tmp) / "r")
        out = {}
        for precision in ("fp32", "fp16"):
            d = export_onnx(ExportConfig(model=str(run), out=f"{tmp}/{precision}", precision=precision), log=log)
            be = OnnxRuntimeBackend(d, device=args.device)
            out[precision] = make_calls(be, 32, be.image_size, int(be.meta["text_encoder"]["dim"]), args.device,
                                        False)()
        a, b = out["fp32"], out["fp16"]
        return {"device": args.device, "batch": 32,
                "reward_max_abs": (a.reward - b.reward).abs().max().item(),
                "subscores_max_abs_points": (a.subscores - b.subscores).abs().max().item(),
                "mask_agreement": ((a.mask_logits > 0) == (b.mask_logits > 0)).float().mean().item()}


def _checks(rows: list[dict], args, paired: dict | None = None) -> dict:
    """The issue's CPU targets, computed from this run's rows (None where the row was not measured). The group
    checks also carry ``paired``: the same ratio as the median of per-repeat ratios (`_paired_group_ratios`)."""
    def row(backend, case, b):  # by full name, or the preset's own by prefix ("onnxruntime" → "onnxruntime cpu")
        return next((r for r in rows if r["case"] == case and r["batch"] == b and (
            r["backend"] == backend or r["backend"].startswith(backend + " ") and "=" not in r["backend"])), None)

    out = {}
    for b, key in ((1, "ort_vs_eager_batch1"), (32, "ort_vs_eager_batch32")):
        r = row("onnxruntime", "plain", b)
        out[key] = {"measured": r["speedup_vs_torch_eager"] if r else None, "target": TARGETS[key]}
    for prefix in ("torch eager", "onnxruntime", *map(variant_name, args.score_variants)):
        plain, group = row(prefix, "plain", args.group), row(prefix, "group", args.group)
        value = plain["p50_ms_per_edit"] / group["p50_ms_per_edit"] if plain and group else None
        out[f"group_vs_plain_per_edit ({prefix})"] = {
            "measured": value, "target": TARGETS["group_vs_plain_per_edit"],
            "paired": (paired or {}).get(plain["backend"]) if plain else None,
        }
    for v in out.values():
        v["met"] = None if v["measured"] is None else bool(v["measured"] >= v["target"])
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["case"] in ("plain", "group")]  # the stage rows are in the JSON
    cases = sorted({(r["case"], r["batch"]) for r in rows}, key=lambda c: (c[0] != "plain", c[1]))
    names = list(dict.fromkeys(r["backend"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ys = [next((r["p50_ms_per_edit"] for r in rows if r["backend"] == name and (r["case"], r["batch"]) == c),
                   0.0) for c in cases]
        ax.bar([j + i * width for j in range(len(cases))], ys, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
    ax.set_xticklabels([f"{c} b={b}" for c, b in cases])
    ax.set_ylabel("p50 ms per edit (lower is better)")
    ax.set_title(f"{result['config']['preset']} scoring backends on {result['machine']['device']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    # Idle OpenMP threads sleep instead of spinning: on a shared 2-core box, spinning torch threads stall each other
    # (nano eager measured ~100x slower at load 5); ORT's own threads are set not to spin (OnnxRuntimeBackend).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    import spatialreward

    t0 = time.time()
    result = run(args)
    if args.fp16_parity:
        result["fp16_parity"] = fp16_parity(args)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    result = {
        "benchmark": "backends", "command": "python bench/backends.py " + " ".join(argv or sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"device": device, "platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        "versions": {"spatialreward": spatialreward.__version__, "torch": torch.__version__, "python":
                     platform.python_version()},
        "config": {"preset": args.model or args.preset, "batches": args.batches, "group": args.group,
                   "repeats": args.repeats, "warmup": args.warmup, "device": args.device,
                   "score_variants": args.score_variants},
        "seconds": round(time.time() - t0, 1),
        **result,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "backends_cpu" if device == "cpu" else "backends_" + device.lower().replace(" ", "-")
    stem += "_score_variants" if args.score_variants else ""  # the plain run's file stays the reference
    path = args.out / f"{stem}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    plot(result, args.out / f"{stem}.png")
    print(f"wrote {path} and {stem}.png in {result['seconds']}s")
    for key, check in result["checks"].items():
        paired = f", per-repeat median {check['paired']:.2f}" if check.get("paired") else ""
        print(f"  {key}: {check['measured'] if check['measured'] is None else round(check['measured'], 2)} "
              f"(target >= {check['target']}, met: {check['met']}{paired})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
