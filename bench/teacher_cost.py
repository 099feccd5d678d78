"""What one teacher label costs with the transformers backend: latency per edit, tokens/s, prompt tokens per edit.

Runs `VLMTeacher.judge_batch` (image loading + SC call + PQ call + parsing: exactly what labeling pays) on
synthetic edits at batch sizes 1 and 8, one greedy pass per call (``parse_retries=0``: re-asks are policy, not
cost). Reports per batch size:

* ``latency_per_edit_s`` — wall time / edits (both calls); ``batch_latency_s`` p50 / max per ``judge_batch``;
* ``generated_tokens_per_s`` — generated tokens (to the first end-of-turn) / wall time;
* ``prompt_tokens_per_edit`` / ``generated_tokens_per_edit`` — SC + PQ, text and image tokens;
* status counts (a random fake model's answers are gibberish: all ``parse_error``; the cost is what matters).

The fake checkpoint comes from ``tests/fixtures/fake_vlm.py`` (test fakes are not shipped in the package), so
``--model fake`` needs a source checkout; a real model folder or hub id does not.

With the student's latency on the same machine this gives the student-vs-teacher cost ratio.

    python bench/teacher_cost.py                                   # a fake (tiny random) Qwen2.5-VL on this CPU
    python bench/teacher_cost.py --model SpatialReward/SpatialReward-8B --edits 32    # the real teacher, GPU

Results go to ``<out>/<date>-<device>-teacher_cost.json`` with the machine, versions and settings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import sys
import time
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"  # the fake VLM and noise dataset builders live in tests/fixtures


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="fake",
                   help="model folder or hub id; 'fake' builds a tiny random checkpoint (see --family)")
    p.add_argument("--family", choices=["qwen2_5_vl", "qwen3_vl"], default="qwen2_5_vl", help="family of 'fake'")
    p.add_argument("--batch-sizes", default="1,8", help="comma list of generate() batch sizes")
    p.add_argument("--edits", type=int, default=16, help="edits timed per batch size (after one warm-up batch)")
    p.add_argument("--image-size", type=int, default=512, help="synthetic image side in pixels (training size 512)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer cap per call (default 512; 64 for 'fake', whose answers never end on their own)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | bfloat16 | float16 | float32")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); 1 is steadier on a shared machine")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for the JSON")
    return p.parse_args(argv)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine() -> dict:
    import torch
    import transformers

    info = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_batch_size(model: str, data: Path, samples: list, batch_size: int, args) -> dict:
    from spatialreward.teacher.config import TeacherConfig
    from spatialreward.teacher.vlm import VLMTeacher

    config = TeacherConfig(batch_size=batch_size, max_new_tokens=args.max_new_tokens, parse_retries=0,
                           device=args.device, dtype=args.dtype)
    teacher = VLMTeacher.from_pretrained(model, config)
    teacher.judge_batch(samples[:batch_size], data)  # warm-up: allocator, kernels, lazy inits

    batch_times, judgements = [], []
    timed = samples[: args.edits]
    start = time.perf_counter()
    for i in range(0, len(timed), batch_size):
        t0 = time.perf_counter()
        judgements.extend(teacher.judge_batch(timed[i : i + batch_size], data))
        batch_times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start

    n = len(judgements)
    prompt = sum(j.model_extra["prompt_tokens"] for j in judgements)
    generated = sum(j.model_extra["completion_tokens"] for j in judgements)
    return {
        "batch_size": batch_size, "edits": n, "wall_s": round(wall, 4),
        "latency_per_edit_s": round(wall / n, 4),
        # p50 is the number to quote on a shared machine: one stall of another process moves the mean.
        "latency_per_edit_p50_s": round(statistics.median(batch_times) / batch_size, 4),
        "batch_latency_s": {"p50": round(statistics.median(batch_times), 4), "max": round(max(batch_times), 4)},
        "generated_tokens_per_s": round(generated / wall, 2),
        "prompt_tokens_per_edit": round(prompt / n, 1),
        "generated_tokens_per_edit": round(generated / n, 1),
        "status_counts": dict(Counter(j.status for j in judgements)),
        "device": str(teacher.backend.device), "dtype": str(teacher.backend.model.dtype),
        "parameters": sum(p.numel() for p in teacher.backend.model.parameters()),
    }


def main(argv=None) -> Path:
    args = parse_args(argv)
    sys.path.insert(0, str(TESTS))
    from fixtures.fake_vlm import build_fake_vlm, write_noise_dataset

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.max_new_tokens is None:
        args.max_new_tokens = 64 if args.model == "fake" else 512
    with tempfile.TemporaryDirectory(prefix="teacher_cost_") as tmp:
        model = args.model
        if model == "fake":
            model = str(build_fake_vlm(Path(tmp) / f"fake-{args.family}", args.family))
        data = Path(tmp) / "data"
        needed = args.edits + max(batch_sizes)
        groups = -(-needed // 4)
        samples = write_noise_dataset(data, groups=groups, edits_per_group=4, size=(args.image_size, args.image_size))
        rows = []
        for b in batch_sizes:
            row = run_batch_size(model, data, samples, b, args)
            rows.append(row)
            print(f"batch {b:>2}: {row['latency_per_edit_s'] * 1000:8.1f} ms/edit "
                  f"(p50 {row['latency_per_edit_p50_s'] * 1000:.1f}), "
                  f"{row['generated_tokens_per_s']:8.1f} generated tok/s, "
                  f"{row['prompt_tokens_per_edit']:7.1f} prompt tok/edit, {row['status_counts']}")
    result = {
        "benchmark": "teacher_cost", "date": dt.datetime.now().isoformat(timespec="seconds"),
        "model": args.model if args.model != "fake" else f"fake-{args.family} (tiny, random weights)",
        "image_size": args.image_size, "max_new_tokens": args.max_new_tokens, "machine": machine(), "rows": rows,
    }
    device = result["machine"].get("gpu", "cpu").replace(" ", "-")
    out = Path(args.out) / f"{dt.date.today().isoformat()}-{device}-teacher_cost.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
