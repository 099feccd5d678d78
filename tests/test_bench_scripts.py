"""The benchmark scripts run end to end on the CPU (tiny settings): a broken bench is found here, not on a GPU box.

Their numbers are not checked (timings are not tests); their output files are.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(script: str, *args: str, tmp_path: Path) -> list[dict]:
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCH / script), *args, "--out", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())["rows"]


def test_kernels_bench_dry_run(tmp_path):
    rows = _run("kernels.py", "--dry-run", "--no-flex", "--ops", "roi_align", tmp_path=tmp_path)
    assert {r["mode"] for r in rows} == {"fwd", "fwd_bwd"}
    assert all(r["triton"]["ms"] > 0 and "ms" in r["torchvision"] for r in rows)
    assert all("ms" in r["triton_custom_op"] and r["speedup_vs_triton_custom_op"] > 0 for r in rows)


def test_student_latency_bench_runs(tmp_path):
    rows = _run("student_latency.py", "--presets", "nano", "--batches", "2", "--repeats", "1", "--warmup", "0",
                "--no-text", "--threads", "1", "--quality-scale", "0", "2", tmp_path=tmp_path)
    row, quality = rows
    assert row["preset"] == "nano" and row["batch"] == 2 and row["student_ms_per_edit"] > 0
    assert row["cuda_graph"] is False
    assert quality["preset"] == "nano+q2" and quality["input_size"] == 2 * row["input_size"] == 224


def test_dispatch_overhead_bench_runs(tmp_path):
    (row,) = _run("dispatch_overhead.py", "--repeats", "100", tmp_path=tmp_path)
    for route in ("custom_op", "function"):
        assert row[f"{route}_fwd_us"] > row["body_only_fwd_us"] > 0
        assert row[f"{route}_fwd_bwd_us"] > row[f"{route}_fwd_us"]
    assert row["ratio_fwd"] == row["custom_op_fwd_us"] / row["function_fwd_us"]


def _table_rows(report: Path, *args: str) -> tuple[dict, list[str]]:
    """(the report's splits, the body rows `bench/fidelity/table.py` prints for it with ``args``)."""
    done = subprocess.run([sys.executable, str(BENCH / "fidelity" / "table.py"), str(report), *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    return json.loads(report.read_text())["splits"], rows


def test_fidelity_scripts_parse_and_the_table_prints_the_committed_numbers():
    for script in sorted((BENCH / "fidelity").glob("*.sh")):
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, f"{script.name}: {done.stderr}"
    report = BENCH.parent / "docs" / "results" / "generalisation_diverse_30min.json"
    splits, rows = _table_rows(report, "--names", "30 min")
    assert len(rows) == len(splits)
    first = splits[next(iter(splits))]
    assert f"{first['pairwise_accuracy']:.3f} / {first['hard_pairs']:.3f}" in rows[0]


def test_table_pools_one_operation_over_the_splits():
    """`table.py --operation texture` on a committed report: one row per split and a pooled row whose group count is
    the sum of the splits' (the held-out-operation numbers in the README)."""
    report = BENCH.parent / "docs" / "results" / "generalisation_diverse_30min_16k_no_texture_cmp_gen_1200.json"
    splits, rows = _table_rows(report, "--operation", "texture")
    assert len(rows) == len(splits) + 1 and rows[-1].startswith("| all splits pooled")
    groups = sum(s["per_operation"]["texture"]["groups"] for s in splits.values())
    assert rows[-1].rstrip(" |").endswith(f"/ {groups}")


def test_table_per_operation_rows_pool_every_split():
    """`table.py --per-operation`: one row per edit operation, each the same pooled cell `--operation` prints."""
    report = BENCH.parent / "docs" / "results" / "generalisation_v3_4k_no_texture_cmp_gen_v3.json"
    splits, rows = _table_rows(report, "--per-operation")
    operations = sorted({op for s in splits.values() for op in s["per_operation"]})
    assert {"move", "resize", "texture"} <= set(operations)
    assert [r.split("|")[1].strip() for r in rows] == operations
    _, texture_rows = _table_rows(report, "--operation", "texture")
    assert rows[operations.index("texture")].split("|")[2] == texture_rows[-1].split("|")[2]


def test_table_novelty_prints_the_committed_check():
    """`table.py --novelty` on the committed held-out-texture report: the AUROC row and the 25 % fallback row are
    the report's own numbers, and the texture row is the edit-weighted flagged share over its splits."""
    report = BENCH.parent / "docs" / "results" / "novelty_v3_4k_no_texture_cmp_gen_v3.json"
    full = json.loads(report.read_text())
    splits, rows = _table_rows(report, "--novelty")
    novelty = full["novelty"]
    assert novelty["unseen_operations"] == ["texture"]
    auroc = next(r for r in rows if r.startswith("| AUROC unseen vs trained: novelty |"))
    assert f"{novelty['auroc_unseen_vs_trained']['novelty']:.3f}" in auroc
    routed = novelty["teacher_fallback"]["0.25"]
    row = next(r for r in rows if r.startswith("| unseen-operation pairwise, 25%"))
    assert f"{routed['unseen_pairwise']:.3f} ({routed['random_unseen_pairwise']:.3f})" in row
    blocks = [s["novelty"]["per_operation"]["texture"] for s in splits.values()]
    share = sum(b["flagged"] * b["edits"] for b in blocks) / sum(b["edits"] for b in blocks)
    assert next(r for r in rows if r.startswith("| flagged, texture |")).split("|")[2].strip() == f"{share:.3f}"


def test_table_uncertainty_pools_std_and_error_per_operation():
    report = BENCH.parent / "docs" / "results" / "generalisation_v3_4k_no_texture_cmp_gen_v3.json"
    splits, rows = _table_rows(report, "--uncertainty")
    per_op = [s["uncertainty"]["per_operation"]["texture"] for s in splits.values()]
    n = sum(r["edits"] for r in per_op)
    std = sum(r["mean_std"] * r["edits"] for r in per_op) / n
    texture = next(r for r in rows if r.startswith("| texture |"))
    assert texture.split("|")[2].strip().startswith(f"{std:.2f} / ")
    assert rows[-3].startswith("| all: within ±1 sd")


def _load_script(name: str, folder: Path = BENCH / "fidelity"):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_novelty_views_ppca_is_the_mahalanobis_distance_of_its_model():
    """On data whose covariance is exactly diagonal with K large and D − K equal variances, probabilistic PCA with
    K directions is the exact Gaussian: its distance equals the full Mahalanobis distance."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20000, 6)) * np.array([5.0, 3.0, 1.0, 1.0, 1.0, 1.0])
    ppca = _load_script("novelty_views").PPCA(x, 2)
    probe = rng.standard_normal((5, 6))
    cov = np.cov(x, rowvar=False)
    full = np.einsum("ij,jk,ik->i", probe - x.mean(0), np.linalg.inv(cov), probe - x.mean(0))
    assert np.allclose(ppca.mahalanobis(probe), full, rtol=0.05)


def test_backends_bench_reads_score_variants():
    bench = _load_script("backends", BENCH)
    parser = argparse.ArgumentParser()
    assert bench.parse_variant("fusion_depth=0,cross_mlp=tokens,region_floor=0.1,pixel_detail=false", parser) == {
        "fusion_depth": 0, "cross_mlp": "tokens", "region_floor": 0.1, "pixel_detail": False}
    with pytest.raises(SystemExit):
        bench.parse_variant("fusion_depth", parser)


def test_ood_probe_auroc_is_the_mann_whitney_statistic():
    probe = _load_script("ood_probe")
    assert probe.auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert probe.auroc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert probe.auroc(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 0.5  # one above both, one below both
    assert probe.auroc(np.array([2.0]), np.array([2.0])) == 0.5  # a tie counts half


def test_backends_bench_times_both_stages_and_predicts_the_group_ratio(tmp_path):
    """Eager and ONNX Runtime, one tiny batch and a group of 2: plain/group rows, each stage alone, its S / E."""
    rows = _run("backends.py", "--batches", "2", "--group", "2", "--repeats", "1", "--warmup", "0",
                "--backends", "eager", "onnxruntime", "--score-variants", "fusion_depth=0", tmp_path=tmp_path)
    cases = {(r["case"], r["backend"]) for r in rows}
    variant = "onnxruntime cpu, fusion_depth=0"
    assert {(c, b) for c in ("plain", "group", "encode", "score") for b in ("torch eager", "onnxruntime cpu")} <= cases
    assert {(c, variant) for c in ("plain", "group", "encode", "score")} <= cases  # a variant: the group's rows only
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert set(result["stages"]) == {"torch eager", "onnxruntime cpu", variant}
    for stage in result["stages"].values():
        r = stage["score_over_encode"]
        assert r > 0 and abs(stage["predicted_group_vs_plain"] - (2 + r) / (1.5 + r)) < 1e-12
    assert result["config"]["score_variants"] == [{"fusion_depth": 0}]
    checks = result["checks"]
    assert f"group_vs_plain_per_edit ({variant})" in checks
    for prefix in ("torch eager", "onnxruntime", variant):  # the per-repeat estimate of the same ratio
        assert checks[f"group_vs_plain_per_edit ({prefix})"]["paired"] > 0
    assert (tmp_path / "backends_cpu_score_variants.png").stat().st_size > 0  # a variants run keeps its own file


def test_train_step_bench_times_both_trainers(tmp_path):
    from tests.fixtures.students import make_fake_dataset

    data = make_fake_dataset(tmp_path / "data", groups=12, size=64)
    out = tmp_path / "out"
    out.mkdir()
    rows = _run("train_step.py", "--data", str(data), "--steps", "1", "--repeats", "1", "--warmup", "0",
                "--threads", "1", tmp_path=out)
    assert set(rows) == {"per step", "prepared once"} and all(r["p50_ms"] > 0 for r in rows.values())
    # the prepared store: int16 at half the side (2 bytes × ¼) plus 7 fp32 statistics per 8×8 cell
    assert rows["prepared once"]["image_store_bytes"] < rows["per step"]["image_store_bytes"]
