"""The generalisation report: how a student does on data that differs from its training in one factor at a time.

A student that only learned its generator scores well on its own held-out split and near chance elsewhere. This
report evaluates one student on every split of a *generalisation set* (``spatialreward synth --layout
generalisation``: in-distribution, held-out photos, a held-out scene style, a held-out phrasing family, held-out
failure families, matplotlib's evaluation-only images), and on each split reports, next to the usual metrics:

* per candidate kind: pairwise accuracy of *correct vs that kind* (does the student put the correct edit above a
  partial one, a wrong-attribute one, …; a student tie is wrong, teacher ties are no pair);
* hard pairs: the same pooled over wrong attribute, over-edit and artifacts — the failures a position heuristic
  cannot see, where a generator-fitted student falls to chance;
* per failure family (artifacts and over-edits): correct vs that family's candidates;
* edited-only mask IoU (the all-edits IoU is flattered by no-ops);
* where the errors are: pairwise accuracy by the teacher's reward gap of the pair, and each sub-score's mean signed
  error per candidate kind;
* per edit operation: pairwise and hard pairs over that operation's groups (a held-out operation: train with
  ``spatialreward distill --exclude-operations texture`` and read row ``texture``);
* whether the student knows when it is wrong: its predicted sub-score uncertainty against its actual error
  (coverage of ±1 / ±2 standard deviations, their rank correlation) and per operation (does an unseen operation
  raise it?).

`generalisation_report` writes one JSON (every number, with its pair counts) and one PNG (bars per split).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from spatialreward.student.metrics import group_indices, pairwise_accuracy
from spatialreward.types import SUBSCORE_NAMES

HARD_KINDS = ("wrong_attribute", "over_edit", "artifacts")
# The sub-score a failure kind should lower (order of SUBSCORE_NAMES: instruction following, consistency,
# naturalness, artifacts). Ordering a pair by it alone tells "did not see the failure" from "saw it, but the reward
# was swamped by noise in another sub-score".
KIND_SUBSCORE = {"artifacts": 3, "over_edit": 1, "global": 1, "wrong_attribute": 0, "partial": 0,
                 "wrong_region": 0, "no_op": 0}
HEADLINE = ("pairwise_accuracy", "hard_pairs", "spearman", "group_advantage_corr", "mask_iou_edited_only")


def _ratio(correct: int, total: int) -> dict[str, Any]:
    return {"accuracy": correct / total if total else None, "pairs": total}


def correct_vs(pred: Sequence[float], target: Sequence[float], group_ids: Sequence, keys: Sequence[str],
               kinds: Sequence[str], *, teacher_tie: float = 1e-6) -> dict[str, dict[str, Any]]:
    """For each key (a candidate kind or failure family): over pairs (the group's correct edit, a candidate with
    that key) whose teacher rewards differ, the share the student orders like the teacher (student ties wrong)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for ix in group_indices(group_ids).values():
        correct = [i for i in ix if kinds[i] == "correct"]
        for c in correct:
            for i in ix:
                if i == c or not keys[i]:
                    continue
                dt = target[c] - target[i]
                if abs(dt) <= teacher_tie:
                    continue
                dp = pred[c] - pred[i]
                tally[keys[i]][1] += 1
                tally[keys[i]][0] += int(dp * dt > 0)
    return {k: _ratio(*v) for k, v in sorted(tally.items())}


def pooled(table: dict[str, dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Pairs of several keys of a `correct_vs` table pooled into one accuracy."""
    hits = sum(round(table[k]["accuracy"] * table[k]["pairs"]) for k in keys if k in table and table[k]["pairs"])
    total = sum(table[k]["pairs"] for k in keys if k in table)
    return _ratio(hits, total)


TEACHER_GAP_BINS = (0.0, 0.02, 0.05, 0.1, 0.2, 1.0)  # |teacher reward difference| of a pair


def pairwise_by_teacher_gap(pred: Sequence[float], target: Sequence[float], group_ids: Sequence,
                            bins: Sequence[float] = TEACHER_GAP_BINS, *, teacher_tie: float = 1e-6) -> dict[str, Any]:
    """Within-group pairwise accuracy split by how far apart the teacher put the pair (``"0.02-0.05"``: gaps in
    (0.02, 0.05]). Pairs the teacher nearly tied are where a ranking can fail without mattering much to a policy;
    errors on wide gaps are the ones that mislead it. Same pairs and tie rule as `metrics.pairwise_accuracy`."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    edges = np.asarray(bins, np.float64)
    hits, totals = np.zeros(len(edges) - 1, int), np.zeros(len(edges) - 1, int)
    for ix in group_indices(group_ids).values():
        p, t = pred[ix], target[ix]
        dt, dp = t[:, None] - t[None, :], p[:, None] - p[None, :]
        pairs = dt > teacher_tie
        which = np.clip(np.searchsorted(edges, dt[pairs], side="left") - 1, 0, len(edges) - 2)
        np.add.at(totals, which, 1)
        np.add.at(hits, which, (dp[pairs] > 0).astype(int))
    return {f"{lo:g}-{hi:g}": _ratio(int(h), int(n)) for lo, hi, h, n in zip(edges[:-1], edges[1:], hits, totals)}


def subscore_bias_by_kind(pred_subscores: np.ndarray, target_subscores: np.ndarray,
                          kinds: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Mean signed error (student − teacher, 0–25 points) of each sub-score per candidate kind: which judgement
    is off, and in which direction (e.g. correct edits under-rated on instruction following)."""
    kinds = np.asarray(kinds)
    out = {}
    for kind in sorted(set(kinds.tolist())):
        m = kinds == kind
        err = pred_subscores[m] - target_subscores[m]
        out[kind] = {"edits": int(m.sum()), **{name: float(v) for name, v in zip(SUBSCORE_NAMES, err.mean(0))}}
    return out


def per_operation(pred: np.ndarray, target: np.ndarray, group_ids: Sequence, kinds: Sequence[str],
                  operations: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Pairwise accuracy and hard pairs over the groups of each edit operation. A student trained with
    ``--exclude-operations X`` never saw X, so its row X here is the held-out-operation measurement."""
    operations = np.asarray(operations)
    out = {}
    for op in sorted(set(operations.tolist()) - {""}):
        ix = np.flatnonzero(operations == op)
        sub = lambda xs: [xs[i] for i in ix]  # noqa: E731
        accuracy, pairs = pairwise_accuracy(pred[ix], target[ix], sub(group_ids))
        hard = pooled(correct_vs(pred[ix], target[ix], sub(group_ids), sub(kinds), sub(kinds)), HARD_KINDS)
        out[op] = {"groups": len(set(sub(group_ids))), "pairwise_accuracy": accuracy, "pairs": pairs,
                   "hard_pairs": hard["accuracy"], "hard_pair_count": hard["pairs"]}
    return out


def uncertainty_report(pred_subscores: np.ndarray, pred_std: np.ndarray, target_subscores: np.ndarray,
                       operations: Sequence[str]) -> dict[str, Any]:
    """Is the predicted uncertainty (one std per sub-score, points) worth acting on? Coverage: the share of
    sub-scores within ±1 / ±2 std of the teacher's (0.68 / 0.95 when calibrated); ``error_spearman``: rank
    correlation of std with the absolute error over every edit × sub-score (> 0: a larger std marks a worse
    prediction); per operation, the mean std and mean absolute error (an unseen operation should raise both)."""
    from scipy import stats

    err = np.abs(pred_subscores - target_subscores)
    std = np.maximum(pred_std, 1e-9)
    operations = np.asarray(operations)
    per_op = {}
    for op in sorted(set(operations.tolist()) - {""}):
        m = operations == op
        per_op[op] = {"edits": int(m.sum()), "mean_std": float(std[m].mean()), "mean_abs_error": float(err[m].mean())}
    rho = stats.spearmanr(std.ravel(), err.ravel()).statistic if err.size > 2 else float("nan")
    return {"mean_std": float(std.mean()), "mean_abs_error": float(err.mean()),
            "coverage_1sd": float((err <= std).mean()), "coverage_2sd": float((err <= 2 * std).mean()),
            "error_spearman": float(rho), "per_operation": per_op}


def auroc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """P(a positive scores above a negative), ties half (Mann-Whitney U, normalised); None if a side is empty."""
    from scipy.stats import rankdata

    if len(positive) == 0 or len(negative) == 0:
        return None
    ranks = rankdata(np.concatenate([positive, negative]))
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


def novelty_split(novelty: np.ndarray, operations: Sequence[str], views: Sequence[str]) -> dict[str, Any]:
    """Share of edits the novelty check flags (> 1), overall, per view and per operation."""
    top = novelty.max(1)
    operations = np.asarray(operations)
    per_op = {op: {"edits": int((operations == op).sum()), "flagged": float((top[operations == op] > 1).mean()),
                   "median": float(np.median(top[operations == op]))}
              for op in sorted(set(operations.tolist()) - {""})}
    return {"flagged": float((top > 1).mean()),
            "flagged_by_view": {v: float((novelty[:, k] > 1).mean()) for k, v in enumerate(views)},
            "per_operation": per_op}


ROUTED_SHARES = (0.05, 0.1, 0.25)


def novelty_summary(pred: np.ndarray, target: np.ndarray, group_ids: Sequence, operations: Sequence[str],
                    novelty: np.ndarray, std: np.ndarray, unseen: Sequence[str], views: Sequence[str], *,
                    seeds: int = 5) -> dict[str, Any]:
    """Does the novelty check find the edits the student gets wrong, and does sending them to the teacher pay?

    With ``unseen`` operations (what the run excluded): AUROC of novelty, of each view and of the predicted std
    for "unseen vs trained operation", and the flagged shares of both. For every run: the teacher fallback
    simulated over the pooled edits — the top ``share`` by novelty get the teacher's reward — against the same
    share chosen at random (mean of ``seeds`` draws), pairwise accuracy overall and on the unseen operations.
    ``views`` names the columns of ``novelty``."""
    operations = np.asarray(operations)
    group_ids = np.asarray(group_ids)
    top = novelty.max(1)
    is_unseen = np.isin(operations, list(unseen))
    out: dict[str, Any] = {"unseen_operations": list(unseen), "edits": int(len(pred))}
    if is_unseen.any() and (~is_unseen).any():
        out["auroc_unseen_vs_trained"] = {
            "novelty": auroc(top[is_unseen], top[~is_unseen]),
            **{v: auroc(novelty[is_unseen, k], novelty[~is_unseen, k]) for k, v in enumerate(views)},
            "predicted_std": auroc(std[is_unseen], std[~is_unseen]),
        }
        out["flagged_unseen"] = float((top[is_unseen] > 1).mean())
        out["flagged_trained"] = float((top[~is_unseen] > 1).mean())

    def accuracy(reward: np.ndarray, mask: np.ndarray | None = None) -> float | None:
        ix = np.arange(len(reward)) if mask is None else np.flatnonzero(mask)
        return pairwise_accuracy(reward[ix], target[ix], group_ids[ix].tolist())[0] if len(ix) else None

    rng = np.random.default_rng(0)
    routing = {"none": {"pairwise": accuracy(pred), "unseen_pairwise": accuracy(pred, is_unseen)
                        if is_unseen.any() else None}}
    for share in ROUTED_SHARES:
        k = int(round(share * len(pred)))
        routed = pred.copy()
        chosen = np.argsort(-top, kind="stable")[:k]
        routed[chosen] = target[chosen]
        rand = [pred.copy() for _ in range(seeds)]
        for r in rand:
            pick = rng.choice(len(pred), size=k, replace=False)
            r[pick] = target[pick]
        routing[f"{share:.2f}"] = {
            "pairwise": accuracy(routed), "random_pairwise": float(np.mean([accuracy(r) for r in rand])),
            "unseen_pairwise": accuracy(routed, is_unseen) if is_unseen.any() else None,
            "random_unseen_pairwise": (float(np.mean([accuracy(r, is_unseen) for r in rand]))
                                       if is_unseen.any() else None),
            "share_of_unseen_routed": float(np.isin(chosen, np.flatnonzero(is_unseen)).sum() / max(is_unseen.sum(), 1)),
        }
    out["teacher_fallback"] = routing
    return out


def split_report(pred_reward: np.ndarray, metrics: dict[str, Any], data,
                 pred_subscores: np.ndarray | None = None, pred_std: np.ndarray | None = None,
                 pred_novelty: np.ndarray | None = None, novelty_views: Sequence[str] = ()) -> dict[str, Any]:
    """The per-split block of the report from predictions, `reward_metrics` output and the split's `EditData`."""
    target = data.reward.numpy()
    group_ids = [s.group_id for s in data.samples]
    kinds = [s.meta.get("kind", "") for s in data.samples]
    per_kind = correct_vs(pred_reward, target, group_ids, kinds, kinds)
    by_subscore = {}
    if pred_subscores is not None:  # correct vs kind, ordered by the one sub-score that kind should lower
        for kind, k in KIND_SUBSCORE.items():
            keys = [kd if kd == kind else "" for kd in kinds]
            table = correct_vs(pred_subscores[:, k], data.subscores.numpy()[:, k], group_ids, keys, kinds)
            if kind in table:
                by_subscore[kind] = dict(table[kind], subscore=SUBSCORE_NAMES[k])
    operations = [str(s.meta.get("operation", "")) for s in data.samples]
    families = [s.meta.get("failure_family", "") if s.meta.get("kind") in ("artifacts", "over_edit") else ""
                for s in data.samples]
    per_family = correct_vs(pred_reward, target, group_ids, families, kinds)
    hard = pooled(per_kind, HARD_KINDS)
    keep = ("edits", "groups", "pairwise_accuracy", "pairs", "spearman", "kendall", "group_advantage_corr",
            "reward_mae", "subscore_mae", "mask_iou", "mask_iou_edited_only", "mask_edits_with_boxes",
            "presence_accuracy")
    out = {k: metrics.get(k) for k in keep}
    out.update(hard_pairs=hard["accuracy"], hard_pair_count=hard["pairs"], per_kind=per_kind,
               per_kind_by_subscore=by_subscore, per_failure_family=per_family,
               pairwise_by_teacher_gap=pairwise_by_teacher_gap(pred_reward, target, group_ids),
               per_operation=per_operation(np.asarray(pred_reward, np.float64), target, group_ids, kinds,
                                           operations),
               subscore_bias_by_kind=(subscore_bias_by_kind(pred_subscores, data.subscores.numpy(), kinds)
                                      if pred_subscores is not None else None),
               uncertainty=(uncertainty_report(pred_subscores, pred_std, data.subscores.numpy(), operations)
                            if pred_subscores is not None and pred_std is not None else None),
               novelty=(novelty_split(pred_novelty, operations, novelty_views) if pred_novelty is not None
                        else None),
               sources=sorted({str(s.meta.get("photo", "")) for s in data.samples}),
               phrasings=sorted({str(s.meta.get("phrasing", "")) for s in data.samples}))
    return out


def generalisation_report(model_dir: str | Path, data_dir: str | Path, out_json: str | Path, *,
                          splits: Sequence[str] | None = None, teacher: str = "oracle", device: str = "cpu",
                          max_groups: int | None = None, text_encoder=None, progress: bool = True,
                          title: str | None = None, unseen_operations: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluate the student in ``model_dir`` on each split of ``data_dir`` and write ``out_json`` plus a PNG beside
    it. Default splits: the generalisation splits present, in their canonical order; in a set without any (a
    training set), its ``heldout`` split. ``unseen_operations``: what the novelty block treats as never trained
    (default: the run's ``--exclude-operations``; name operations its training set did not have, too)."""
    import json

    from spatialreward.dataset import atomic_write_bytes, read_samples
    from spatialreward.student.data import load_split, mask_target_size
    from spatialreward.student.evaluate import evaluate_data
    from spatialreward.student.model import Student
    from spatialreward.student.text import text_encoder_for
    from spatialreward.synth.generate import GENERALISATION_SPLITS

    model = Student.from_pretrained(model_dir, map_location=device).to(device)
    present = list(dict.fromkeys(str(s.split) for s in read_samples(data_dir)))
    if splits is None:
        splits = [s for s in GENERALISATION_SPLITS if s in present] or ["heldout"]
    missing = [s for s in splits if s not in present]
    if missing:
        raise ValueError(f"{data_dir}: no split {missing} (present: {present}); make a generalisation set with "
                         "`spatialreward synth --layout generalisation`")
    encoder = text_encoder_for(model.cfg, text_encoder)
    report: dict[str, Any] = {"title": title or f"{Path(model_dir).name} on {Path(data_dir).name}",
                              "model": str(model_dir), "data": str(data_dir), "teacher": teacher, "splits": {}}
    manifest = Path(data_dir) / "synth.json"
    if manifest.is_file():
        report["synth_config"] = json.loads(manifest.read_text()).get("config")
    train_config = Path(model_dir) / "train_state.json"
    if train_config.is_file():
        report["train_state"] = json.loads(train_config.read_text())
    pooled_rows: dict[str, list] = defaultdict(list)
    views = model.novelty.views if model.novelty is not None else ()
    for split in splits:
        data = load_split(data_dir, split=split, teacher=teacher, img_size=model.cfg.input_size,
                          mask_size=mask_target_size(model.cfg.grid), text_encoder=encoder, max_groups=max_groups,
                          progress=progress)
        metrics, preds = evaluate_data(model, data, device=device)
        report["splits"][split] = split_report(preds.reward, metrics, data, preds.subscores, preds.uncertainty,
                                               preds.novelty, views)
        if preds.novelty is not None:
            pooled_rows["pred"].append(preds.reward)
            pooled_rows["target"].append(data.reward.numpy())
            pooled_rows["groups"] += [f"{split}/{s.group_id}" for s in data.samples]
            pooled_rows["operations"] += [str(s.meta.get("operation", "")) for s in data.samples]
            pooled_rows["novelty"].append(preds.novelty)
            pooled_rows["std"].append(preds.uncertainty.mean(1))
    if pooled_rows:
        from spatialreward.student.novelty import run_excluded_operations

        unseen = list(unseen_operations) if unseen_operations is not None else run_excluded_operations(model_dir)
        report["novelty"] = novelty_summary(
            np.concatenate(pooled_rows["pred"]), np.concatenate(pooled_rows["target"]), pooled_rows["groups"],
            pooled_rows["operations"], np.concatenate(pooled_rows["novelty"]), np.concatenate(pooled_rows["std"]),
            unseen, views)
        report["novelty"]["fit"] = dict(model.novelty.record)
    report["summary"] = {split: {k: block.get(k) for k in HEADLINE} for split, block in report["splits"].items()}
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_json, json.dumps(report, indent=2).encode())
    plot_report(report, out_json.with_suffix(".png"))
    return report


def plot_report(report: dict[str, Any], path: str | Path) -> None:
    """Bars per split: pairwise, hard pairs, Spearman, group-advantage and edited-only mask IoU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spatialreward.dataset import atomic_write_bytes

    splits = list(report["summary"])
    routing = (report.get("novelty") or {}).get("teacher_fallback")
    if routing:  # a second panel: pairwise accuracy against the share of edits the teacher judges
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(max(7, 1.6 * len(splits)) + 4.5, 4.2),
                                      gridspec_kw={"width_ratios": [max(7, 1.6 * len(splits)), 4.5]})
        _plot_routing(ax2, routing, report["novelty"].get("unseen_operations") or [])
    else:
        fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(splits)), 4.2))
    width = 0.8 / len(HEADLINE)
    for k, metric in enumerate(HEADLINE):
        values = [report["summary"][s][metric] for s in splits]
        xs = np.arange(len(splits)) + (k - (len(HEADLINE) - 1) / 2) * width
        ax.bar(xs, [np.nan if v is None else v for v in values], width, label=metric.replace("_", " "))
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(np.arange(len(splits)), [s.replace("_", "\n") for s in splits], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(report["title"], fontsize=10)
    ax.legend(fontsize=7, ncol=3, loc="lower right")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def _plot_routing(ax, routing: dict[str, Any], unseen: list[str]) -> None:
    """Pairwise accuracy when the most novel share of edits (solid) or a random share (dotted) is judged by the
    teacher; the unseen operations' own accuracy in a second colour."""
    shares = [0.0] + [float(k) for k in routing if k != "none"]
    rows = [routing["none"]] + [routing[k] for k in routing if k != "none"]
    series = [("pairwise", "random_pairwise", "all edits", "C0")]
    if unseen and rows[0].get("unseen_pairwise") is not None:
        series.append(("unseen_pairwise", "random_unseen_pairwise", f"unseen: {', '.join(unseen)}", "C3"))
    for key, rand, label, colour in series:
        ax.plot(shares, [r[key] for r in rows], "-o", color=colour, label=f"{label}, most novel")
        ax.plot(shares, [rows[0][key]] + [r[rand] for r in rows[1:]], ":o", color=colour, label=f"{label}, random")
    ax.set_xlabel("share of edits judged by the teacher")
    ax.set_ylabel("pairwise accuracy")
    ax.set_title("teacher fallback (novelty check)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def report_markdown(report: dict[str, Any]) -> str:
    """The summary as a markdown table (one row per split)."""
    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = [f"### {report['title']}", "", "| split | pairwise | hard pairs | Spearman | group-adv. | mask IoU "
             "(edited) |", "|---|---:|---:|---:|---:|---:|"]
    for split, row in report["summary"].items():
        lines.append(f"| {split} | " + " | ".join(fmt(row[k]) for k in HEADLINE) + " |")
    return "\n".join(lines) + "\n"
