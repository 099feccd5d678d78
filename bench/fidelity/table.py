"""Side-by-side markdown table of generalisation reports (`spatialreward eval --report generalisation` JSONs), so
the README's comparison tables are printed from the committed files, not typed.

    python bench/fidelity/table.py docs/results/generalisation_diverse_q2.json \
        docs/results/generalisation_diverse_q2_pre15min.json --names scratch pretrained
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cell(split: dict) -> str:
    kinds = split.get("per_kind", {})
    art = kinds.get("artifacts", {}).get("accuracy", float("nan"))
    over = kinds.get("over_edit", {}).get("accuracy", float("nan"))
    return (f"{split['pairwise_accuracy']:.3f} / {split['hard_pairs']:.3f} / {art:.2f} / {over:.2f} / "
            f"{split['mask_iou_edited_only']:.3f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", type=Path)
    p.add_argument("--names", nargs="*", default=None, help="column names (default: file stems)")
    args = p.parse_args(argv)
    names = args.names or [r.stem for r in args.reports]
    reports = [json.loads(r.read_text())["splits"] for r in args.reports]
    print("| split | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for split in reports[0]:
        print(f"| {split.replace('_', ' ')} | " + " | ".join(cell(r[split]) for r in reports) + " |")
    print("\ncells: pairwise / hard pairs / artifacts vs correct / over-edit vs correct / edited-only mask IoU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
