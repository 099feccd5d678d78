"""bench/synth_speed.py runs end to end on a tiny set and writes its JSON (the real numbers come from the bench)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "synth_speed.py"


def test_synth_speed_bench_writes_json(tmp_path):
    spec = importlib.util.spec_from_file_location("synth_speed", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--groups", "2", "--classic-groups", "1", "--size", "64", "--workers", "1",
                          "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "synth_speed.json").read_text())
    assert saved == json.loads(json.dumps(result))
    diverse, classic = saved["runs"]
    assert (diverse["recipe"], diverse["groups"], diverse["samples"]) == ("diverse", 2, 16)
    assert classic["recipe"] == "classic" and classic["groups_per_s"] > 0
    assert saved["cpu_per_group_ratio_diverse_over_classic"] > 0
    assert isinstance(saved["machine"]["shared"], bool)
