"""Benchmark the kernels at the student's shapes against the vendor paths, side by side in one run.

* RoIAlign on 14x14 ViT tokens: our Triton `roi_align_tokens` vs `torchvision.ops.roi_align` on CUDA, timing the
  tokens -> NCHW copy torchvision needs (its output permute back is a free view).
* Region attention: our Triton `region_attention` vs SDPA with a dense boolean key mask, and vs FlexAttention with
  a block mask (building the block mask is timed too: the region changes every batch).

Ours is timed twice: as user code calls it (the eager route, a plain autograd.Function) and through its
`torch.library` custom op (`triton_custom_op`, the route torch.compile / export trace) — same kernels, so their
ratio is the host time the eager route saves. Forward and forward+backward, median of `triton.testing.do_bench`. Each row also reports the op's useful FLOPs and
the least bytes it must move (definitions in `kernels/roi_align.py` / `kernels/region_attention.py`, numbers in
bench/KERNELS.md), and the achieved bandwidth as a fraction of a measured device-to-device copy. Before timing,
every provider's output is checked against the reference, so a fast wrong kernel cannot "win".

    python bench/kernels.py                      # GPU: full sweep, JSON into bench/results/
    python bench/kernels.py --out $OUT --quick   # fewer shapes, JSON into $OUT
    python bench/kernels.py --dry-run            # tiny shapes on CPU (Triton interpreter): proves the script runs

Results go to ``<out>/<date>-<device>-kernels.json`` with the device name, torch/triton versions and all rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

from cuda_graph import graphed  # bench/cuda_graph.py (the script's folder is on sys.path)

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dry-run", "--interpret", dest="dry_run", action="store_true",
                   help="tiny shapes on the CPU with Triton's interpreter; checks the script, times nothing real")
    p.add_argument("--out", default=None, help="folder for the JSON (default bench/results; $OUT on the GPU box)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16",
                   help="activation dtype (fp16 default: torchvision's CUDA roi_align has no bf16 kernel in some "
                        "versions; bf16 rows then record the error)")
    p.add_argument("--ops", default="roi_align,attention", help="comma list of: roi_align, attention")
    p.add_argument("--quick", action="store_true", help="B in {64, 256} and C=384 only (about a third of the rows)")
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compiles take a while)")
    p.add_argument("--with-reference", action="store_true", help="also time the plain-PyTorch references")
    p.add_argument("--graph", action="store_true",
                   help="time CUDA-graph replays (device time without Python/launch overhead) instead of eager calls")
    p.add_argument("--check", action="store_true",
                   help="only check the compiled Triton kernels against the reference on the GPU (fp32/fp16/bf16, "
                        "forward and backward, edge cases); needs no pytest or torchvision")
    return p.parse_args(argv)


# %%
# Timing and bandwidth
# --------------------


# --graph: time CUDA-graph replays of each call, i.e. device time without Python/launch overhead (set in main)
GRAPH = False


def time_ms(fn: Callable[[], object], cuda: bool) -> float:
    """Median milliseconds: triton.testing.do_bench on CUDA (of graph replays with --graph); a few perf_counter
    runs on CPU (dry run only)."""
    if cuda:
        import triton.testing

        return float(triton.testing.do_bench(graphed(fn) if GRAPH else fn, warmup=25, rep=100,
                                             return_mode="median"))
    fn()  # warm-up (interpreter rewrite, autograd graph)
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(runs)


def copy_bandwidth_gbps(torch, device: str, cuda: bool) -> float:
    """Device-to-device copy bandwidth (read + write bytes / time): the roofline for memory-bound kernels."""
    n = (256 << 20) if cuda else (16 << 20)  # bytes
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), cuda)
    return 2 * n / (ms * 1e-3) / 1e9


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# %%
# RoIAlign
# --------


def bench_roi_align(torch, args, device: str, dtype, shapes, copy_bw: float, cuda: bool) -> list[dict]:
    try:
        import torchvision
    except ImportError:  # the GPU box may have torch + triton only; rows then record the missing baseline
        torchvision = None

    from spatialreward.kernels import roi_align_tokens, use_backend

    ra = importlib.import_module("spatialreward.kernels.roi_align")  # the module (the package's `roi_align` is the op)

    gh, gw = ra.BENCH_GRID
    oh, ow = ra.BENCH_OUTPUT
    elem = torch.finfo(dtype).bits // 8
    rows = []
    for shape in shapes:
        B, C, kps, region = shape["B"], shape["C"], shape["boxes_per_sample"], shape["region"]
        tokens = torch.randn(B, gh * gw, C, device=device, dtype=dtype)
        # the same box values for everyone: torchvision wants boxes in the input dtype, ours reads them as fp32
        vendor_boxes = ra.bench_boxes(B, kps, region, device=device).to(dtype)
        boxes = vendor_boxes.float()
        K = boxes.shape[0]
        grad = torch.randn(K, oh, ow, C, device=device, dtype=dtype)

        def ours(t):
            with use_backend("triton"):
                return roi_align_tokens(t, boxes, (gh, gw), (oh, ow), 1.0, -1, False)

        def ours_custom_op(t):  # the same kernels through the custom op: what torch.compile/export trace
            with use_backend("triton"):
                return torch.ops.spatialreward.roi_align_tokens(t, boxes, gh, gw, oh, ow, 1.0, -1, False, 0)

        def reference(t):
            with use_backend("reference"):
                return roi_align_tokens(t, boxes, (gh, gw), (oh, ow), 1.0, -1, False)

        def vendor(t):
            if torchvision is None:
                raise ImportError("torchvision is not installed; no baseline")
            maps = t.transpose(1, 2).reshape(B, C, gh, gw)  # [B, C, gh, gw]: the copy torchvision needs
            return torchvision.ops.roi_align(maps, vendor_boxes, (oh, ow), 1.0, -1, False).permute(0, 2, 3, 1)

        providers = {"triton": ours, "triton_custom_op": ours_custom_op, "torchvision": vendor}
        if args.with_reference:
            providers["reference"] = reference
        want = reference(tokens).float()
        for mode in ("fwd", "fwd_bwd"):
            result = dict(op="roi_align_tokens", mode=mode, B=B, C=C, K=K, boxes_per_sample=kps, region=region,
                          grid=[gh, gw], output=[oh, ow], dtype=str(dtype).replace("torch.", ""))
            result["flops"] = ra.bench_flops(K, C, boxes, (oh, ow)) * (1 if mode == "fwd" else 2)
            result["min_bytes"] = ra.bench_min_bytes(C, boxes, (gh, gw), (oh, ow), elem) + (
                0 if mode == "fwd" else ra.bench_min_bytes(C, boxes, (gh, gw), (oh, ow), elem, backward=True)
            )
            for name, fn in providers.items():
                try:
                    if mode == "fwd":
                        err = (fn(tokens).float() - want).abs().max().item() if K else 0.0
                        _gate(err, dtype, name)
                        ms = time_ms(lambda fn=fn: fn(tokens), cuda)
                    else:
                        t = tokens.detach().requires_grad_()
                        err = None
                        ms = time_ms(lambda fn=fn, t=t: torch.autograd.grad(fn(t), t, grad), cuda)
                    result[name] = _row(ms, result, copy_bw, err)
                except Exception as exc:  # noqa: BLE001 - record and keep going (e.g. no bf16 kernel)
                    result[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            _speedups(result, "triton", ("torchvision", "reference", "triton_custom_op"))
            rows.append(result)
            _print_row(result, ("triton", "triton_custom_op", "torchvision", "reference"))
    return rows


# %%
# Region attention
# ----------------


def bench_attention(torch, args, device: str, dtype, shapes, copy_bw: float, cuda: bool) -> list[dict]:
    import torch.nn.functional as F

    from spatialreward.kernels import region_attention, use_backend
    from spatialreward.kernels.region_attention import (
        BENCH_GRID,
        BENCH_HEAD_DIM,
        bench_flops,
        bench_key_mask,
        bench_min_bytes,
    )

    flex = None
    if not args.no_flex:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        flex_fn = torch.compile(flex_attention, dynamic=False) if cuda else flex_attention

        def flex(q, k, v, key_mask):
            def mask_mod(b, h, q_idx, kv_idx):
                return key_mask[b, kv_idx]

            kw = {"_compile": True} if cuda else {}
            block_mask = create_block_mask(mask_mod, q.shape[0], None, q.shape[2], k.shape[2], device=device, **kw)
            return flex_fn(q, k, v, block_mask=block_mask)

    head_dim = BENCH_HEAD_DIM if cuda else 16
    elem = torch.finfo(dtype).bits // 8
    rows = []
    for shape in shapes:
        B, H, Lq, region = shape["B"], shape["heads"], shape["Lq"], shape["region"]
        Lk = BENCH_GRID[0] * BENCH_GRID[1]
        q, k, v = (torch.randn(B, H, L, head_dim, device=device, dtype=dtype) for L in (Lq, Lk, Lk))
        key_mask = bench_key_mask(B, region, device=device)  # [B, Lk] bool
        region_keys = key_mask.sum(1).float().mean().item()
        grad = torch.randn(B, H, Lq, head_dim, device=device, dtype=dtype)

        def ours(q, k, v):
            with use_backend("triton"):
                return region_attention(q, k, v, key_mask)

        def ours_custom_op(q, k, v):  # the same kernels through the custom op: what torch.compile/export trace
            with use_backend("triton"):
                return torch.ops.spatialreward.region_attention(q, k, v, key_mask, q.shape[-1] ** -0.5)[0]

        def reference(q, k, v):
            with use_backend("reference"):
                return region_attention(q, k, v, key_mask)

        def sdpa(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])

        providers = {"triton": ours, "triton_custom_op": ours_custom_op, "sdpa_dense_mask": sdpa}
        if flex is not None:
            providers["flex_block_mask"] = lambda q, k, v: flex(q, k, v, key_mask)
        if args.with_reference:
            providers["reference"] = reference
        want = reference(q, k, v).float()
        for mode in ("fwd", "fwd_bwd"):
            result = dict(op="region_attention", mode=mode, B=B, heads=H, Lq=Lq, Lk=Lk, head_dim=head_dim,
                          region=region, region_keys=region_keys, dtype=str(dtype).replace("torch.", ""))
            result["flops"] = bench_flops(B, H, Lq, region_keys, head_dim, with_backward=(mode == "fwd_bwd"))
            result["min_bytes"] = bench_min_bytes(B, H, Lq, region_keys, Lk, head_dim, elem,
                                                  with_backward=(mode == "fwd_bwd"))
            for name, fn in providers.items():
                try:
                    if mode == "fwd":
                        err = (fn(q, k, v).float() - want).abs().max().item()
                        _gate(err, dtype, name)
                        ms = time_ms(lambda fn=fn: fn(q, k, v), cuda)
                    else:
                        if name == "flex_block_mask" and not cuda:
                            raise NotImplementedError("FlexAttention has no CPU backward")
                        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
                        err = None
                        ms = time_ms(lambda fn=fn, lv=leaves: torch.autograd.grad(fn(*lv), lv, grad), cuda)
                    result[name] = _row(ms, result, copy_bw, err)
                except Exception as exc:  # noqa: BLE001 - record and keep going
                    result[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            _speedups(result, "triton", ("sdpa_dense_mask", "flex_block_mask", "reference", "triton_custom_op"))
            rows.append(result)
            _print_row(result, ("triton", "triton_custom_op", "sdpa_dense_mask", "flex_block_mask", "reference"))
    return rows


# %%
# Correctness on the GPU (no pytest / torchvision needed)
# ---------------------------------------------------------

CHECK_TOL = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 4e-2}


def run_checks(torch, dry_run: bool = False) -> int:
    """Compiled Triton vs reference for every dtype, layout and edge case; prints one line per check.

    `dry_run` runs the same checks with tiny sizes on the CPU interpreter (fp32/fp16: numpy has no bf16).
    """
    from spatialreward.kernels import region_attention, roi_align, roi_align_tokens, use_backend

    ra = importlib.import_module("spatialreward.kernels.roi_align")
    am = importlib.import_module("spatialreward.kernels.region_attention")
    dev = "cpu" if dry_run else "cuda"
    B, C, H, L, D = (2, 16, 1, 20, 16) if dry_run else (64, 384, 6, 196, 64)
    dtypes = (torch.float32, torch.float16) if dry_run else (torch.float32, torch.float16, torch.bfloat16)
    failures = 0

    def compare(name, fn, inputs, grad, dtype):
        nonlocal failures
        res = {}
        for backend in ("reference", "triton"):
            leaves = [t.detach().clone().requires_grad_() if t.is_floating_point() else t for t in inputs]
            with use_backend(backend):  # the backward too: it dispatches on the backend when it runs
                out = fn(*leaves)
                grads = torch.autograd.grad(out, [t for t in leaves if t.requires_grad], grad)
            res[backend] = [out.detach().float()] + [g.float() for g in grads]
        tol = CHECK_TOL[str(dtype).replace("torch.", "")]
        worst = 0.0
        ok = True
        for got, want in zip(res["triton"], res["reference"]):
            err = (got - want).abs()
            bound = tol + tol * want.abs()
            ok &= bool(torch.isfinite(got).all()) and bool((err <= bound).all())
            worst = max(worst, float(err.max()) if err.numel() else 0.0)
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name:<60} max|err| {worst:.3g} (tol {tol} + {tol}*|ref|)", flush=True)

    edge = torch.tensor([[0, 1.3, 2.1, 7.7, 8.2], [1, -3.0, -2.0, 4.0, 5.0], [1, 8.0, 7.0, 30.0, 20.0],
                         [0, 3.0, 3.0, 3.0, 3.0], [1, -10.0, -10.0, -5.0, -5.0], [0, 0.2, 0.3, 13.9, 13.9]],
                        device=dev)
    for dtype in dtypes:
        tag = str(dtype).replace("torch.", "")
        boxes = torch.cat([ra.bench_boxes(B, 2, r, device=dev, seed=i) for i, r in enumerate((0.05, 0.25, 1.0))]
                          + [edge])
        tokens = torch.randn(B, 1 + 196, C, device=dev, dtype=dtype)
        for aligned in (False, True):
            for sr in ((-1,) if dry_run else (-1, 2)):
                compare(f"roi_align_tokens {tag} aligned={aligned} sr={sr} K={boxes.shape[0]}",
                        lambda t, a=aligned, s=sr: roi_align_tokens(t, boxes, (14, 14), 7, 1.0, s, a, 1),
                        [tokens], torch.randn(boxes.shape[0], 7, 7, C, device=dev, dtype=dtype), dtype)
        maps = torch.randn(4, 37, 20, 24, device=dev, dtype=dtype).permute(0, 1, 3, 2)  # non-contiguous NCHW
        compare(f"roi_align NCHW {tag} C=37 non-contiguous scale=0.5",
                lambda x: roi_align(x, edge, (5, 6), 0.5, -1, True),
                [maps], torch.randn(edge.shape[0], 37, 5, 6, device=dev, dtype=dtype), dtype)
        compare(f"roi_align K=0 {tag}", lambda x: roi_align(x, edge[:0], 3),
                [maps], torch.randn(0, 37, 3, 3, device=dev, dtype=dtype), dtype)

        for region in (0.05, 0.25, 1.0):
            q = torch.randn(B, H, L, D, device=dev, dtype=dtype)
            k, v = (torch.randn(B, H, 196, D, device=dev, dtype=dtype) for _ in range(2))
            mask = am.bench_key_mask(B, region, device=dev)
            mask[-1] = False  # an empty region: zeros, never NaN
            compare(f"region_attention {tag} B={B} H={H} Lq={L} Lk=196 region={region}",
                    lambda a, b, c, m=mask: region_attention(a, b, c, m), [q, k, v], torch.randn_like(q), dtype)
        # the custom-op route (what torch.compile / torch.export trace) runs the same kernels: check it too
        mask = am.bench_key_mask(B, 0.25, device=dev)
        compare(f"region_attention {tag} through the custom op, region=0.25",
                lambda a, b, c: torch.ops.spatialreward.region_attention(a, b, c, mask, D**-0.5)[0],
                [q, k, v], torch.randn_like(q), dtype)
        compare(f"roi_align_tokens {tag} through the custom op",
                lambda t: torch.ops.spatialreward.roi_align_tokens(t, boxes, 14, 14, 7, 7, 1.0, -1, True, 1),
                [tokens], torch.randn(boxes.shape[0], 7, 7, C, device=dev, dtype=dtype), dtype)
        q = torch.randn(3, 2, 77, 40, device=dev, dtype=dtype)
        k = torch.randn(3, 2, 150, 40, device=dev, dtype=dtype)
        v = torch.randn(3, 2, 150, 24, device=dev, dtype=dtype)
        w = torch.rand(3, 150, device=dev) * (torch.rand(3, 150, device=dev) < 0.3)
        w[-1] = 0.0  # an empty region
        compare(f"region_attention {tag} ragged Lq=77 Lk=150 D=40 Dv=24 soft weights + their grad",
                lambda a, b, c, m: region_attention(a, b, c, m), [q, k, v, w],
                torch.randn(3, 2, 77, 24, device=dev, dtype=dtype), dtype)
    try:
        import torchvision

        x = torch.randn(2 if dry_run else 4, 37, 20, 24, device=dev)
        for aligned in (False, True):
            with use_backend("triton"):
                ours = roi_align(x, edge, (5, 6), 0.5, -1, aligned)
            err = float((ours - torchvision.ops.roi_align(x, edge, (5, 6), 0.5, -1, aligned)).abs().max())
            ok = err <= 1e-5
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {'roi_align vs torchvision fp32 aligned=' + str(aligned):<60} "
                  f"max|err| {err:.3g} (tol 1e-05)")
    except ImportError:
        print("skip torchvision parity: torchvision is not installed on this machine")
    print(f"{'all checks passed' if not failures else f'{failures} checks FAILED'}")
    return 1 if failures else 0


# %%
# Rows, speedups, report
# ----------------------


# Forward outputs are O(1); a provider further than this from the reference is wrong, not fast.
FWD_TOL = {"float32": 1e-3, "float16": 2e-2, "bfloat16": 8e-2}


def _gate(err: float, dtype, provider: str) -> None:
    """Ours must match the reference to be timed; a vendor baseline is timed anyway (its error is in the row:
    torchvision's fp16 CUDA RoIAlign, for one, rounds in fp16 and lands ~4e-2 away)."""
    tol = FWD_TOL[str(dtype).replace("torch.", "")]
    ours = ("triton", "triton_custom_op", "reference")
    if provider not in ours and err == err:  # finite but imprecise: still a fair timing
        return
    if not err <= tol:  # also catches NaN
        raise AssertionError(f"output differs from the reference by {err:.3g} (> {tol}); not timed")


def _row(ms: float, result: dict, copy_bw: float, max_abs_err: float | None) -> dict:
    gbps = result["min_bytes"] / (ms * 1e-3) / 1e9
    row = {"ms": ms, "tflops": result["flops"] / (ms * 1e-3) / 1e12, "gbps": gbps, "pct_copy_bw": 100 * gbps / copy_bw}
    if max_abs_err is not None:
        row["max_abs_err_vs_reference"] = max_abs_err
    return row


def _speedups(result: dict, ours: str, others) -> None:
    """speedup_vs_X = X's time / our time, from the same run."""
    if "ms" not in result.get(ours, {}):
        return
    for other in others:
        if "ms" in result.get(other, {}):
            result[f"speedup_vs_{other}"] = result[other]["ms"] / result[ours]["ms"]


def _print_row(result: dict, providers) -> None:
    keys = ("B", "C", "heads", "K", "region", "mode")
    head = " ".join(f"{k}={result[k]}" for k in keys if k in result)
    cells = []
    for p in providers:
        if p in result:
            cells.append(f"{p}={result[p]['ms']:.4f}ms" if "ms" in result[p] else f"{p}=ERR")
    speed = " ".join(f"{k[len('speedup_vs_'):]}:{v:.2f}x" for k, v in result.items() if k.startswith("speedup_vs_"))
    ours = result.get("triton", {})
    bw = f"{ours['gbps']:.0f}GB/s({ours['pct_copy_bw']:.0f}%copy)" if "gbps" in ours else ""
    print(f"{result['op']:<17} {head:<52} {' '.join(cells):<80} {speed} {bw}", flush=True)


def _select_shapes(shapes: list[dict], args, kind: str) -> list[dict]:
    if args.dry_run:  # a handful of tiny cases: the interpreter runs every Triton program in Python
        if kind == "roi_align":
            return [dict(B=2, C=16, boxes_per_sample=k, region=r) for k, r in ((1, 0.25), (2, 1.0))]
        return [dict(B=2, heads=1, Lq=20, region=r) for r in (0.05, 1.0)]
    if args.quick:
        c_key = "C" if kind == "roi_align" else "heads"
        c_max = max(s[c_key] for s in shapes)
        return [s for s in shapes if s["B"] in (64, 256) and s[c_key] == c_max]
    return shapes


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("bench/kernels.py needs a CUDA GPU (found none). Run it on the GPU box (bench/gpu_session.sh), "
              "or pass --dry-run to check the script on the CPU with tiny shapes.", file=sys.stderr)
        return 2
    try:
        import triton
    except ImportError:
        print("bench/kernels.py needs triton (pip install triton); the kernels' Triton path is what it times.",
              file=sys.stderr)
        return 2

    if args.check:
        if cuda and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
            print("--check tests the compiled kernels; unset TRITON_INTERPRET (or set it to 0)", file=sys.stderr)
            return 2
        return run_checks(torch, dry_run=not cuda)

    # the modules, for their benchmark declarations (the package's `roi_align` / `region_attention` are the ops)
    roi_decl = importlib.import_module("spatialreward.kernels.roi_align")
    attn_decl = importlib.import_module("spatialreward.kernels.region_attention")

    global GRAPH
    GRAPH = bool(args.graph and cuda)
    device = "cuda" if cuda else "cpu"
    dtype = getattr(torch, DTYPES[args.dtype]) if cuda else torch.float32  # interpreter: fp32 (no bf16 numpy)
    device_name = torch.cuda.get_device_name() if cuda else f"cpu-dryrun-{platform.machine()}"
    torch.manual_seed(0)
    copy_bw = copy_bandwidth_gbps(torch, device, cuda)
    print(f"device: {device_name}  torch {torch.__version__}  triton {triton.__version__}  dtype {dtype}  "
          f"copy bandwidth {copy_bw:.0f} GB/s", flush=True)

    ops = {o.strip() for o in args.ops.split(",") if o.strip()}
    unknown = ops - {"roi_align", "attention"}
    if unknown:
        print(f"--ops has unknown entries {sorted(unknown)}; use roi_align and/or attention", file=sys.stderr)
        return 2
    rows: list[dict] = []
    if "roi_align" in ops:
        rows += bench_roi_align(torch, args, device, dtype, _select_shapes(roi_decl.BENCH_SHAPES, args, "roi_align"),
                                copy_bw, cuda)
    if "attention" in ops:
        rows += bench_attention(torch, args, device, dtype,
                                _select_shapes(attn_decl.BENCH_SHAPES, args, "attention"), copy_bw, cuda)

    summary = _summary(rows)
    for line in summary["lines"]:
        print(line)
    stamp = dt.datetime.now().isoformat(timespec="seconds")
    out_dir = Path(args.out) if args.out else Path(__file__).resolve().parent / "results"
    if args.dry_run and not args.out:
        out_dir = Path(os.environ.get("TMPDIR", "/tmp"))  # dry runs are not results
    out_dir.mkdir(parents=True, exist_ok=True)
    # named like bench/teacher_cost.py's results: <date>-<device>-<benchmark>.json
    suffix = "-graph" if GRAPH else ""
    path = out_dir / f"{dt.date.today().isoformat()}-{device_slug(device_name)}-kernels{suffix}.json"
    timing = ("triton.testing.do_bench median (ms)" + (" of CUDA-graph replays" if GRAPH else ", eager calls")
              if cuda
              else "perf_counter median of 3 (CPU dry run, interpreter: not a performance number)")
    payload = dict(
        benchmark="kernels", device=device_name, cuda_graph=GRAPH, ops=sorted(ops), date=stamp, dry_run=args.dry_run,
        torch=torch.__version__, triton=triton.__version__, dtype=str(dtype), copy_bandwidth_gbps=copy_bw,
        timing=timing,
        goals={"roi_align_vs_torchvision": 3.0, "attention_vs_sdpa_dense_mask": 1.5, "attention_vs_flex": 1.0},
        summary=summary["numbers"], rows=rows,
    )
    path.write_text(json.dumps(payload, indent=1))
    print(f"wrote {path}")
    errors = [(r["op"], p) for r in rows for p, v in r.items() if isinstance(v, dict) and "error" in v]
    triton_errors = [e for e in errors if e[1] in ("triton", "triton_custom_op")]
    if triton_errors:
        print(f"our Triton provider failed in {len(triton_errors)} rows; see 'error' in the JSON", file=sys.stderr)
        return 1
    return 0


def _summary(rows: list[dict]) -> dict:
    """Geometric-mean speedups per (op, mode, baseline), the numbers the goals are stated in."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        for key, val in r.items():
            if key.startswith("speedup_vs_"):
                groups.setdefault((r["op"], r["mode"], key[len("speedup_vs_"):]), []).append(val)
    numbers, lines = {}, ["", "geometric-mean speedup of ours (x = baseline time / our time):"]
    for (op, mode, base), vals in sorted(groups.items()):
        g = statistics.geometric_mean(vals)
        numbers[f"{op}/{mode}/vs_{base}"] = {"geomean": g, "min": min(vals), "max": max(vals), "n": len(vals)}
        lines.append(f"  {op:<17} {mode:<8} vs {base:<16} {g:6.2f}x  (min {min(vals):.2f}, max {max(vals):.2f}, "
                     f"n={len(vals)})")
    return {"numbers": numbers, "lines": lines}


if __name__ == "__main__":
    sys.exit(main())
