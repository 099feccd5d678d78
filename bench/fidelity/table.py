"""Side-by-side markdown table of generalisation reports (`spatialreward eval --report generalisation` JSONs), so
the README's comparison tables are printed from the committed files, not typed.

    python bench/fidelity/table.py docs/results/generalisation_diverse_q2.json \
        docs/results/generalisation_diverse_q2_pre15min.json --names scratch pretrained
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def by_subscore_cell(split: dict) -> str:
    """Correct vs each kind, ordered by the one sub-score that kind should lower (reports from 2026-12-07 on)."""
    table = split.get("per_kind_by_subscore", {})
    return " / ".join(f"{table[k]['accuracy']:.2f}" if table.get(k, {}).get("accuracy") is not None else "–"
                      for k in BY_SUBSCORE_KINDS)


BY_SUBSCORE_KINDS = ("artifacts", "over_edit", "wrong_attribute", "partial")


def by_gap_cell(split: dict) -> str:
    """Pairwise accuracy in each bin of the teacher's reward gap (reports from 2026-12-07 on; – if a bin is empty)."""
    table = split.get("pairwise_by_teacher_gap", {})
    return " / ".join("–" if row.get("accuracy") is None else f"{row['accuracy']:.2f}" for row in table.values())


def cell(split: dict) -> str:
    kinds = split.get("per_kind", {})
    art = kinds.get("artifacts", {}).get("accuracy", float("nan"))
    over = kinds.get("over_edit", {}).get("accuracy", float("nan"))
    return (f"{split['pairwise_accuracy']:.3f} / {split['hard_pairs']:.3f} / {art:.2f} / {over:.2f} / "
            f"{split['mask_iou_edited_only']:.3f}")


def operation_cell(split: dict, operation: str) -> str:
    """Pairwise / hard pairs / groups over the split's groups of one edit operation (reports from 2026-12-07 on)."""
    row = split.get("per_operation", {}).get(operation)
    if not row:
        return "–"
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    return f"{fmt(row['pairwise_accuracy'])} / {fmt(row['hard_pairs'])} / {row['groups']}"


def pooled_operation(splits: dict, operation: str) -> str:
    """The operation's pairs pooled over every split (accuracies weighted by their pair counts)."""
    rows = [s["per_operation"][operation] for s in splits.values() if operation in s.get("per_operation", {})]
    pairs, hard = sum(r["pairs"] for r in rows), sum(r["hard_pair_count"] for r in rows)
    if not pairs:
        return "–"
    pw = sum(r["pairwise_accuracy"] * r["pairs"] for r in rows if r["pairs"]) / pairs
    hp = sum(r["hard_pairs"] * r["hard_pair_count"] for r in rows if r["hard_pair_count"]) / hard if hard else None
    return f"{pw:.3f} / {'–' if hp is None else f'{hp:.3f}'} / {sum(r['groups'] for r in rows)}"


def print_uncertainty(reports: list[dict], names: list[str]) -> None:
    """Per operation: mean predicted std / mean |error| pooled over the splits (weighted by edits); last rows: ±1 sd
    and ±2 sd coverage and the std–error rank correlation, edit-weighted means of the splits' values."""
    def pooled_op(splits: dict, op: str) -> str:
        rows = [s["uncertainty"]["per_operation"][op] for s in splits.values()
                if op in (s.get("uncertainty") or {}).get("per_operation", {})]
        n = sum(r["edits"] for r in rows)
        if not n:
            return "–"
        std = sum(r["mean_std"] * r["edits"] for r in rows) / n
        err = sum(r["mean_abs_error"] * r["edits"] for r in rows) / n
        return f"{std:.2f} / {err:.2f}"

    def overall(splits: dict, key: str) -> str:
        blocks = [(s["uncertainty"], s["edits"]) for s in splits.values() if s.get("uncertainty")]
        n = sum(e for _, e in blocks)
        return "–" if not n else f"{sum(b[key] * e for b, e in blocks) / n:.2f}"

    operations = sorted({op for r in reports for s in r.values()
                         for op in (s.get("uncertainty") or {}).get("per_operation", {})})
    print("| operation | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for op in operations:
        print(f"| {op} | " + " | ".join(pooled_op(r, op) for r in reports) + " |")
    for key, label in (("coverage_1sd", "all: within ±1 sd (0.68 if calibrated)"),
                       ("coverage_2sd", "all: within ±2 sd (0.95 if calibrated)"),
                       ("error_spearman", "all: rank correlation of std with error")):
        print(f"| {label} | " + " | ".join(overall(r, key) for r in reports) + " |")
    print("\ncells (operation rows): mean predicted std / mean absolute error of the sub-scores, points, all splits")


def print_novelty(full: list[dict], names: list[str]) -> None:
    """The report's novelty block (students with a novelty fit): how well it finds the unseen operation, what the
    teacher fallback recovers against routing the same share at random, and the flagged share per operation."""
    def get(report: dict, *keys, fmt="{:.3f}") -> str:
        node = report.get("novelty") or {}
        for k in keys:
            node = (node or {}).get(k) if isinstance(node, dict) else None
        return "–" if node is None else fmt.format(node)

    rows = [("flagged, trained operations", ("flagged_trained",)), ("flagged, unseen operations", ("flagged_unseen",))]
    rows += [(f"AUROC unseen vs trained: {k}", ("auroc_unseen_vs_trained", k))
             for k in ("novelty", "instruction", "evidence", "pixels", "predicted_std")]
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for label, keys in rows:
        print(f"| {label} | " + " | ".join(get(r, *keys) for r in full) + " |")
    shares = [k for k in (full[0].get("novelty") or {}).get("teacher_fallback", {}) if k != "none"]
    for what, key, rand in (("pairwise", "pairwise", "random_pairwise"),
                            ("unseen-operation pairwise", "unseen_pairwise", "random_unseen_pairwise")):
        print(f"| {what}, student alone | " + " | ".join(get(r, "teacher_fallback", "none", key) for r in full)
              + " |")
        for share in shares:
            cells = [f"{get(r, 'teacher_fallback', share, key)} ({get(r, 'teacher_fallback', share, rand)})"
                     for r in full]
            print(f"| {what}, {float(share):.0%} most novel to the teacher (at random) | " + " | ".join(cells) + " |")
    operations = sorted({op for r in full for s in r["splits"].values()
                         for op in (s.get("novelty") or {}).get("per_operation", {})})
    for op in operations:
        cells = []
        for r in full:
            blocks = [s["novelty"]["per_operation"][op] for s in r["splits"].values()
                      if op in (s.get("novelty") or {}).get("per_operation", {})]
            n = sum(b["edits"] for b in blocks)
            cells.append("–" if not n else f"{sum(b['flagged'] * b['edits'] for b in blocks) / n:.3f}")
        print(f"| flagged, {op} | " + " | ".join(cells) + " |")
    print("\nflagged: share of edits with novelty > 1; routing is simulated over all edits of the set pooled")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", type=Path)
    p.add_argument("--names", nargs="*", default=None, help="column names (default: file stems)")
    p.add_argument("--by-subscore", action="store_true",
                   help="cells: correct vs artifacts / over-edit / wrong attribute / partial, each ordered by the "
                        "sub-score it should lower (artifacts, consistency, instruction following x2)")
    p.add_argument("--by-gap", action="store_true",
                   help="cells: pairwise accuracy by the teacher's reward gap of the pair (narrowest bin first)")
    p.add_argument("--operation", default=None,
                   help="cells: pairwise / hard pairs / groups over one edit operation's groups, plus a pooled row")
    p.add_argument("--per-operation", action="store_true",
                   help="rows: edit operations, each pooled over every split (pairwise / hard pairs / groups)")
    p.add_argument("--uncertainty", action="store_true",
                   help="rows: edit operations, each pooled over every split (mean predicted std / mean absolute "
                        "sub-score error, points), then the calibration over all edits")
    p.add_argument("--novelty", action="store_true",
                   help="rows: the novelty check (flagged shares, AUROC for the unseen operation, the simulated "
                        "teacher fallback, flagged share per operation)")
    args = p.parse_args(argv)
    names = args.names or [r.stem for r in args.reports]
    full = [json.loads(r.read_text()) for r in args.reports]
    reports = [r["splits"] for r in full]
    if args.novelty:
        print_novelty(full, names)
        return 0
    if args.uncertainty:
        print_uncertainty(reports, names)
        return 0
    if args.per_operation:
        operations = sorted({op for r in reports for s in r.values() for op in s.get("per_operation", {})})
        print("| operation | " + " | ".join(names) + " |")
        print("|---|" + "---:|" * len(names))
        for op in operations:
            print(f"| {op} | " + " | ".join(pooled_operation(r, op) for r in reports) + " |")
        print("\ncells: pairwise / hard pairs / groups of each operation, pooled over every split")
        return 0
    print("| split | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    fmt = by_gap_cell if args.by_gap else by_subscore_cell if args.by_subscore else cell
    if args.operation:
        fmt = lambda split: operation_cell(split, args.operation)  # noqa: E731
    for split in reports[0]:
        print(f"| {split.replace('_', ' ')} | " + " | ".join(fmt(r[split]) for r in reports) + " |")
    if args.operation:
        print("| all splits pooled | " + " | ".join(pooled_operation(r, args.operation) for r in reports) + " |")
        print(f"\ncells: pairwise / hard pairs / groups over the {args.operation} groups")
    elif args.by_gap:
        first = next(iter(reports[0].values())).get("pairwise_by_teacher_gap", {})
        print("\ncells: pairwise accuracy for teacher reward gaps " + " / ".join(first))
    elif args.by_subscore:
        print("\ncells: correct vs " + " / ".join(BY_SUBSCORE_KINDS) + ", each by the sub-score it should lower")
    else:
        print("\ncells: pairwise / hard pairs / artifacts vs correct / over-edit vs correct / edited-only mask IoU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
