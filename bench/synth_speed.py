"""How fast `spatialreward synth` builds a set: wall time, groups/s and CPU-seconds per group, diverse vs classic.

Builds ``--groups`` groups of the diverse recipe (the default) and ``--classic-groups`` of the classic one
(``synth-v1``) into temporary folders, with the same workers and image size, one after the other in this run, and
reports both and their per-group CPU ratio (CPU time is less sensitive than wall time to other load on a shared
machine). The load average before and after is recorded: on a machine other jobs share, wall time is an upper bound.

    python bench/synth_speed.py                          # 1,000 diverse groups + 200 classic, all cores, 224 px
    python bench/synth_speed.py --groups 40 --classic-groups 20 --size 96 --out /tmp/r   # a quick look

Writes ``<out>/synth_speed.json`` (default ``bench/results``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--groups", type=int, default=1000, help="diverse-recipe groups to build")
    p.add_argument("--classic-groups", type=int, default=200, help="classic-recipe groups (0 to skip)")
    p.add_argument("--size", type=int, default=224, help="image side in pixels")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-seconds", type=float, default=120.0, help="the budget for --groups diverse groups")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    return p.parse_args(argv)


def _build(recipe: str, groups: int, args) -> dict:
    from spatialreward.synth import generate_dataset

    with tempfile.TemporaryDirectory(prefix=f"synth-speed-{recipe}-") as tmp:
        start = time.perf_counter()
        report = generate_dataset(Path(tmp) / "set", groups, args.seed, size=args.size, workers=args.workers,
                                  progress=False, recipe=recipe)
        wall = time.perf_counter() - start
    return {"recipe": recipe, "groups": groups, "samples": report.samples, "workers": report.workers,
            "wall_s": round(wall, 2), "groups_per_s": round(groups / wall, 3),
            "cpu_s": report.cpu_seconds, "cpu_s_per_group": round(report.cpu_seconds / groups, 4),
            "mib_on_disk": round(report.bytes_on_disk / 2**20, 1)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    load_before = os.getloadavg()
    runs = [_build("diverse", args.groups, args)]
    if args.classic_groups:
        runs.append(_build("classic", args.classic_groups, args))
    load_after = os.getloadavg()
    diverse = runs[0]
    result = {
        "bench": "synth_speed", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_before": [round(v, 2) for v in load_before],
                    "load_average_after": [round(v, 2) for v in load_after],
                    "shared": load_before[0] > 0.5 or load_after[0] > (diverse["workers"] + 0.5)},
        "size": args.size, "runs": runs,
        "target_seconds": args.target_seconds,
        "projected_wall_s_for_target_groups": round(diverse["wall_s"] * 1000 / args.groups, 1),
        "within_target": diverse["wall_s"] * 1000 / args.groups <= args.target_seconds,
    }
    if len(runs) == 2:
        result["cpu_per_group_ratio_diverse_over_classic"] = round(
            diverse["cpu_s_per_group"] / max(runs[1]["cpu_s_per_group"], 1e-9), 3)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "synth_speed.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)
    for r in runs:
        print(f"{r['recipe']:8s} {r['groups']:5d} groups  {r['wall_s']:7.1f} s wall  {r['groups_per_s']:.2f} "
              f"groups/s  {r['cpu_s_per_group']:.3f} CPU-s/group  ({r['workers']} workers)")
    print(f"load average {load_before[0]:.2f} → {load_after[0]:.2f}; wrote {path}")
    return result


if __name__ == "__main__":
    main()
