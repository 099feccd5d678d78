"""Could a density check on the student's own evidence flag an edit operation it never trained on, where its
predicted uncertainty does not (README, issue 16)? A probe, not a feature: it fits a Gaussian to the score head's
input (the pooled evidence vector) over training edits, scores every edit of a generalisation set by its
Mahalanobis distance (Ledoit-Wolf covariance) and reports, per operation, the AUROC of "this operation's edits are
further out than the trained operations' edits" — for the distance and, side by side, for the predicted std.

    python bench/fidelity/ood_probe.py --model runs/cmp/nano_diverse_30min_4k_no_texture \
        --train data/cmp_diverse_4k --data data/cmp_gen_v3 --unseen texture move resize \
        --out docs/results/ood_probe_v2_no_texture.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from spatialreward.student.generalisation import auroc  # noqa: F401 - the shared Mann-Whitney AUROC


def evidence_and_std(model, data, groups_per_batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """``([E, D] score-head inputs, [E] mean predicted sub-score std)`` in data order."""
    from spatialreward.student.data import GroupBatchSampler
    from spatialreward.student.model import subscore_std_points

    captured: list[torch.Tensor] = []
    hook = model.score_head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    feats, std = np.zeros((len(data), 0)), np.zeros(len(data))
    model.eval()
    try:
        with torch.no_grad():
            for indices in GroupBatchSampler(data.group, groups_per_batch, shuffle=False,
                                             drop_last=False).epoch_batches(0):
                batch = data.collate(indices)
                captured.clear()
                out = model(batch["source"], batch["edited"], batch["text"], source_index=batch["source_index"])
                x = captured[0].float().numpy()
                if feats.shape[1] == 0:
                    feats = np.zeros((len(data), x.shape[1]))
                ix = np.asarray(indices)
                feats[ix] = x
                std[ix] = subscore_std_points(out.subscore_logvar.float()).mean(1).numpy()
    finally:
        hook.remove()
    return feats, std


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--train", required=True, type=Path, help="the training set (its train split fits the density)")
    p.add_argument("--data", required=True, type=Path, help="a generalisation set to score")
    p.add_argument("--unseen", nargs="+", required=True, help="operations the model never trained on")
    p.add_argument("--fit-groups", type=int, default=400)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)

    from sklearn.covariance import LedoitWolf

    from spatialreward.dataset import read_samples
    from spatialreward.student.data import load_split, mask_target_size
    from spatialreward.student.model import Student
    from spatialreward.student.text import text_encoder_for

    torch.set_num_threads(2)
    model = Student.from_pretrained(args.model)
    encoder = text_encoder_for(model.cfg, None)
    kw = dict(teacher="oracle", img_size=model.cfg.input_size, mask_size=mask_target_size(model.cfg.grid),
              text_encoder=encoder, progress=False)
    fit = load_split(args.train, split="train", max_groups=args.fit_groups, exclude_operations=tuple(args.unseen),
                     **kw)
    fit_x, _ = evidence_and_std(model, fit)
    density = LedoitWolf().fit(fit_x)
    splits = list(dict.fromkeys(str(s.split) for s in read_samples(args.data)))
    xs, stds, ops = [], [], []
    for split in splits:
        data = load_split(args.data, split=split, **kw)
        x, std = evidence_and_std(model, data)
        xs.append(x)
        stds.append(std)
        ops += [str(s.meta.get("operation", "")) for s in data.samples]
    distance = density.mahalanobis(np.concatenate(xs))
    std = np.concatenate(stds)
    ops = np.asarray(ops)
    seen = ~np.isin(ops, args.unseen)
    per_op = {}
    for op in sorted(set(ops.tolist())):
        m = ops == op
        row = {"edits": int(m.sum()), "unseen": op in args.unseen,
               "median_distance": float(np.median(distance[m])), "mean_std": float(std[m].mean())}
        if op in args.unseen:  # how well each signal tells this operation from the trained ones
            row["auroc_distance"] = auroc(distance[m], distance[seen])
            row["auroc_std"] = auroc(std[m], std[seen])
        per_op[op] = row
    command = "python bench/fidelity/ood_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"benchmark": "ood_probe", "command": command, "model": str(args.model),
              "train": str(args.train), "data": str(args.data), "fit_edits": len(fit_x),
              "evidence_dim": int(fit_x.shape[1]), "per_operation": per_op}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for op, row in per_op.items():
        extra = (f"  AUROC distance {row['auroc_distance']:.3f}, std {row['auroc_std']:.3f}" if row["unseen"] else "")
        print(f"{op:12s} edits {row['edits']:5d}  median distance {row['median_distance']:8.2f}  "
              f"mean std {row['mean_std']:.2f}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
