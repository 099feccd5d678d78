"""Host time of the two routes into our kernels, with the kernel taken out: `torch.library.custom_op` vs a plain
`torch.autograd.Function`, each wrapping the same trivial body (a clone), forward and forward+backward.

Why: eager calls of `spatialreward.kernels` ops take the Function route (see `kernels/_backend.eager_fast_path`);
`torch.compile` / export take the custom op. On a GPU the difference is host time added to every call, which is what
made RoIAlign slower than torchvision in eager mode on small batches (bench/KERNELS.md). Runs on any CPU.

    python bench/dispatch_overhead.py [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
from pathlib import Path

import torch


@torch.library.custom_op("spatialreward_bench::clone_pair", mutates_args=())
def _clone_pair(x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return x.clone(), x.clone()  # (out, a non-differentiable side output), like region_attention's (out, lse)


@_clone_pair.register_fake
def _(x, scale):
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.custom_op("spatialreward_bench::clone_backward", mutates_args=())
def _clone_backward(grad: torch.Tensor, x: torch.Tensor, scale: float) -> torch.Tensor:
    return grad.clone()


@_clone_backward.register_fake
def _(grad, x, scale):
    return torch.empty_like(grad)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.scale = inputs[1]
    ctx.mark_non_differentiable(output[1])


def _grad(ctx, grad, _grad_side):
    (x,) = ctx.saved_tensors
    return torch.ops.spatialreward_bench.clone_backward(grad.contiguous(), x, ctx.scale), None


_clone_pair.register_autograd(_grad, setup_context=_setup)


class _ClonePair(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.save_for_backward(x)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad.clone(), None


def _median_us(fn, repeats: int, rounds: int = 5) -> float:
    for _ in range(repeats // 10):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        times.append((time.perf_counter() - t0) / repeats * 1e6)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="folder for the JSON (default: bench/results)")
    parser.add_argument("--repeats", type=int, default=5000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    x = torch.randn(4)
    xg = x.clone().requires_grad_()

    def op_fwd_bwd():
        out, _ = torch.ops.spatialreward_bench.clone_pair(xg, 1.0)
        torch.autograd.grad(out, xg, out)

    def fn_fwd_bwd():
        out = _ClonePair.apply(xg, 1.0)
        torch.autograd.grad(out, xg, out)

    rows = {
        "body_only_fwd_us": _median_us(lambda: x.clone(), args.repeats),
        "custom_op_fwd_us": _median_us(lambda: torch.ops.spatialreward_bench.clone_pair(x, 1.0), args.repeats),
        "function_fwd_us": _median_us(lambda: _ClonePair.apply(x, 1.0), args.repeats),
        "custom_op_fwd_bwd_us": _median_us(op_fwd_bwd, args.repeats // 5),
        "function_fwd_bwd_us": _median_us(fn_fwd_bwd, args.repeats // 5),
    }
    rows["ratio_fwd"] = rows["custom_op_fwd_us"] / rows["function_fwd_us"]
    rows["ratio_fwd_bwd"] = rows["custom_op_fwd_bwd_us"] / rows["function_fwd_bwd_us"]
    for key, val in rows.items():
        print(f"{key:<24} {val:8.2f}")
    cpu = platform.processor() or platform.machine()
    payload = dict(benchmark="dispatch_overhead", date=dt.datetime.now().isoformat(timespec="seconds"),
                   cpu=cpu, threads=1, torch=torch.__version__, timing="perf_counter, median of 5 rounds",
                   rows=[rows])
    out_dir = Path(args.out) if args.out else Path(__file__).resolve().parent / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{dt.date.today().isoformat()}-cpu-dispatch-overhead.json"
    path.write_text(json.dumps(payload, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
