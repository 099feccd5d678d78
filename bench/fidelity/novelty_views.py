"""Which features should the novelty check model? (`spatialreward.student.novelty`, README issue 16.)

Fits a Ledoit-Wolf Gaussian to each candidate view of a student's features over training edits (a run's train
split, its excluded operations left out), sets each threshold at the 99th percentile over held-out edits of the
trained operations, and reports on a generalisation set, per view: AUROC of "an edit of an unseen operation is
further out than an edit of a trained one", and the flagged shares of both. Candidates:

    evidence_full     the whole pooled evidence vector (11–14 C + 2 wide), what `ood_probe.py` fitted
    evidence_pca_K    its top-K principal directions + one shared residual variance (probabilistic PCA)
    instruction       the projected instruction (the evidence's first C values)
    hidden            the score head's first hidden layer
    pixels            the weight-free pixel-detail summary (students with pixel detail)
    shipped           max(instruction, hidden, pixels), each calibrated: what the student ships

Besides the unseen operation, each view's AUROC for the held-out failure families is reported: edits of kind
``artifacts`` / ``over_edit`` in the set's ``heldout_failures`` split against every edit of its
``in_distribution`` split.

    python bench/fidelity/novelty_views.py --model runs/cmp/nano_v3_4k_no_texture --train data/cmp_v3_4k \
        --data data/cmp_gen_v3 --unseen texture --out docs/results/novelty_views_v3_no_texture.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def features(model, data, skip=()) -> dict[str, np.ndarray]:
    """Evidence ``[E, D]``, hidden ``[E, H]`` and the pixel-detail summary ``[E, 3k]`` of every edit of ``data``
    outside ``skip`` operations, plus their operations, kinds and splits, in data order (needs pixel detail)."""
    from spatialreward.student.data import GroupBatchSampler

    grabbed: list[tuple[torch.Tensor, torch.Tensor]] = []
    detail: list[torch.Tensor] = []
    hook = model.score_head.register_forward_pre_hook(lambda _m, a: grabbed.append((a[0].float(), a[1].float())))
    hook2 = model.detail_proj.register_forward_pre_hook(lambda _m, a: detail.append(a[0].float()))
    keep = [i for i, s in enumerate(data.samples) if str(s.meta.get("operation", "")) not in set(skip)]
    keep_set = set(keep)
    ev, hid, pix, order = [], [], [], []
    model.eval()
    try:
        with torch.no_grad():
            for indices in GroupBatchSampler(data.group, 16, shuffle=False, drop_last=False).epoch_batches(0):
                indices = [i for i in indices if i in keep_set]
                if not indices:
                    continue
                batch = data.collate(indices)
                grabbed.clear()
                detail.clear()
                model(batch["source"], batch["edited"], batch["text"], source_index=batch["source_index"])
                ev.append(grabbed[0][0].numpy())
                hid.append(grabbed[0][1].numpy())
                pix.append(detail[0].numpy())
                order += indices
    finally:
        hook.remove()
        hook2.remove()
    meta = [data.samples[i].meta for i in order]
    return {"evidence": np.concatenate(ev), "hidden": np.concatenate(hid), "pixels": np.concatenate(pix),
            "operations": np.array([str(m.get("operation", "")) for m in meta]),
            "kinds": np.array([str(m.get("kind", "")) for m in meta]),
            "split": np.array([str(data.samples[i].split) for i in order])}


class PPCA:
    """Top-K directions with their own variance, the rest sharing one (their mean)."""

    def __init__(self, x: np.ndarray, k: int):
        self.mean = x.mean(0)
        xc = x - self.mean
        vals, vecs = np.linalg.eigh(xc.T @ xc / (len(x) - 1))
        vals, vecs = np.clip(vals[::-1], 1e-12, None), vecs[:, ::-1]
        self.basis, self.var, self.residual = vecs[:, :k], vals[:k], vals[k:].mean()

    def mahalanobis(self, x: np.ndarray) -> np.ndarray:
        xc = x - self.mean
        z = xc @ self.basis
        return (z * z / self.var).sum(1) + np.clip((xc * xc).sum(1) - (z * z).sum(1), 0, None) / self.residual


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--train", required=True, type=Path, help="the run's training set (train + heldout splits)")
    p.add_argument("--data", required=True, type=Path, help="a generalisation set to score")
    p.add_argument("--unseen", nargs="+", required=True, help="operations the run never trained on")
    p.add_argument("--fit-groups", type=int, default=800)
    p.add_argument("--calibration-groups", type=int, default=200)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)

    from sklearn.covariance import LedoitWolf

    from spatialreward.dataset import read_samples
    from spatialreward.student.data import load_split, mask_target_size
    from spatialreward.student.generalisation import auroc
    from spatialreward.student.model import Student
    from spatialreward.student.text import text_encoder_for

    torch.set_num_threads(2)
    model = Student.from_pretrained(args.model)
    model.novelty = None
    c = model.cfg.embed_dim
    kw = dict(teacher="oracle", img_size=model.cfg.input_size, mask_size=mask_target_size(model.cfg.grid),
              text_encoder=text_encoder_for(model.cfg, None), progress=False)
    fit = features(model, load_split(args.train, split="train", max_groups=args.fit_groups, **kw), args.unseen)
    cal = features(model, load_split(args.train, split="heldout", max_groups=args.calibration_groups, **kw),
                   args.unseen)
    parts = [features(model, load_split(args.data, split=split, **kw))
             for split in dict.fromkeys(str(s.split) for s in read_samples(args.data))]
    test = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    unseen = np.isin(test["operations"], args.unseen)
    new_failure = (test["split"] == "heldout_failures") & np.isin(test["kinds"], ["artifacts", "over_edit"])
    in_dist = test["split"] == "in_distribution"

    def view(name: str, f: dict) -> np.ndarray:
        if name == "instruction":
            return f["evidence"][:, :c]
        return f["evidence"] if name == "evidence_full" else f[name]

    scores: dict[str, np.ndarray] = {}
    for name in ("evidence_full", "instruction", "hidden", "pixels"):
        density = LedoitWolf().fit(view(name, fit))
        threshold = np.quantile(density.mahalanobis(view(name, cal)), 0.99)
        scores[name] = density.mahalanobis(view(name, test)) / threshold
    for k in (64, 256):
        density = PPCA(fit["evidence"], k)
        threshold = np.quantile(density.mahalanobis(cal["evidence"]), 0.99)
        scores[f"evidence_pca_{k}"] = density.mahalanobis(test["evidence"]) / threshold
    scores["shipped"] = np.maximum.reduce([scores["instruction"], scores["hidden"], scores["pixels"]])
    rows = {name: {"auroc_unseen_vs_trained": auroc(s[unseen], s[~unseen]),
                   "flagged_unseen": float((s[unseen] > 1).mean()), "flagged_trained": float((s[~unseen] > 1).mean()),
                   "auroc_heldout_failures": (auroc(s[new_failure & ~unseen], s[in_dist & ~unseen])
                                              if new_failure.any() and in_dist.any() else None),
                   "flagged_heldout_failures": float((s[new_failure] > 1).mean()) if new_failure.any() else None,
                   "dim": (int(view(name, fit).shape[1])
                           if name in ("evidence_full", "instruction", "hidden", "pixels") else None)}
            for name, s in scores.items()}
    command = "python bench/fidelity/novelty_views.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"benchmark": "novelty_views", "command": command, "model": str(args.model), "train": str(args.train),
              "data": str(args.data), "unseen": args.unseen, "fit_edits": len(fit["operations"]),
              "calibration_edits": len(cal["operations"]), "test_edits": int(len(unseen)),
              "unseen_edits": int(unseen.sum()), "views": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, row in rows.items():
        print(f"{name:18s} AUROC {row['auroc_unseen_vs_trained']:.3f}  flagged unseen {row['flagged_unseen']:.3f}"
              f"  trained {row['flagged_trained']:.3f}  held-out failures AUROC {row['auroc_heldout_failures']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
