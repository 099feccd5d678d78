"""Gather generalisation reports of runs that differ only in their number of training sources into one learning
curve: held-out Spearman (and pairwise accuracy, hard pairs) per split against distinct training sources, JSON + PNG.

    python bench/fidelity/learning_curve.py docs/results/generalisation_curve_1000steps_{100,400}.json \
        --sources 100 400 --steps 1000 --out docs/results/learning_curve_sources.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

METRICS = ("spearman", "pairwise_accuracy", "hard_pairs")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", type=Path, help="generalisation report JSONs, one per run")
    p.add_argument("--sources", nargs="+", type=int, required=True, help="distinct training sources of each run")
    p.add_argument("--steps", type=int, required=True, help="training steps every run made")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if len(args.sources) != len(args.reports):
        raise SystemExit(f"{len(args.reports)} reports but {len(args.sources)} --sources values")
    points = []
    for path, n in sorted(zip(args.reports, args.sources), key=lambda r: r[1]):
        summary = json.loads(path.read_text())["summary"]
        points.append({"sources": n, "report": str(path),
                       "splits": {split: {m: block.get(m) for m in METRICS} for split, block in summary.items()}})
    result = {"what": "nano, same seed and schedule, first N train groups of data/cmp_diverse_4k (one source image "
                      "each), evaluated on data/cmp_gen", "steps": args.steps,
              "command": "python bench/fidelity/learning_curve.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "points": points}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")
    return 0


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p["sources"] for p in result["points"]]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.4))
    for ax, metric in zip(axes, METRICS):
        for split in result["points"][0]["splits"]:
            ax.plot(xs, [p["splits"][split][metric] for p in result["points"]], marker="o", label=split)
        ax.set_xscale("log")
        ax.set_xlabel("distinct training sources")
        ax.set_title(metric.replace("_", " "), fontsize=10)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"nano, {result['steps']} steps each: held-out quality vs training sources", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
