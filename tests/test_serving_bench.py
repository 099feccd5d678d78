"""The serving benchmarks run end to end on a toy workload and write their JSON (numbers are not checked here:
performance is measured by the scripts themselves, side by side, in one run). Slow: each loads MiniLM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run(script: str, out: Path, *args: str) -> dict:
    subprocess.run([sys.executable, str(BENCH / script), "--out", str(out), *args], check=True, timeout=300,
                   capture_output=True)
    return json.loads(out.read_text())


@pytest.mark.slow
def test_serve_bench_writes_every_mode(tmp_path):
    result = run("serve.py", tmp_path / "s.json", "--workloads", "2x2", "--repeats", "1", "--warmup", "1",
                 "--size", "48", "--concurrency", "1", "2", "--sweep-wait-ms", "0", "5")
    modes = [r["mode"] for r in result["rows"]]
    assert modes == ["inproc", "v1_raw", "v1_bmp", "v1_png", "protocol"] + ["v1_raw"] * 4
    single = result["rows"][:5]  # each mode timed in its own paired pass: as many in-process calls as modes' calls
    assert single[0]["n_calls"] == 4 * single[1]["n_calls"] and all(r["ratio_paired_median"] > 0 for r in single)
    assert [(r["max_wait_ms"], r["concurrency"]) for r in result["rows"][5:]] == [(0, 1), (0, 2), (5, 1), (5, 2)]
    assert (tmp_path / "s_concurrency.png").stat().st_size > 0
    assert result["rows"][0]["ratio_p50_over_inproc"] == 1.0 and result["settings"]["weights"].startswith("random")
    assert (tmp_path / "s.png").stat().st_size > 0


@pytest.mark.slow
def test_grpo_step_bench_writes_every_mode(tmp_path):
    result = run("grpo_step.py", tmp_path / "g.json", "--prompts", "2", "--candidates", "2", "--size", "48",
                 "--repeats", "1", "--modes", "all")
    assert [r["mode"] for r in result["rows"]] == ["inproc", "inproc_tensors", "inproc_ort", "v1_png", "v1_bmp",
                                                    "v1_bmp_groups", "v1_raw", "v1_raw_groups", "protocol"]
    assert result["settings"]["edits"] == 4 and (tmp_path / "g.png").stat().st_size > 0


@pytest.mark.slow
def test_serve_load_bench_with_the_raw_body_loses_and_misroutes_nothing(tmp_path):
    result = run("serve_load.py", tmp_path / "l.json", "--requests", "60", "--clients", "4", "--fault-every", "20",
                 "--pool-groups", "2", "--image-format", "raw", "--port", "23611")
    assert result["passed"] and result["lost"] == 0 and result["misrouted"] == 0 and result["edits_checked"] > 0
    assert result["settings"]["image_format"] == "raw" and result["malformed_4xx"] + result["disconnects"] == 3
