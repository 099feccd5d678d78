"""`TeacherFallback`: the student's reward where it knows the edit, the teacher's where it is guessing.

A distilled reward is right on edits like its training edits and can be confidently wrong on others (README, issue
16), and an RL policy drifts towards exactly those. The student says which edits are unlike its training
(`RewardOutput.novel`, from `spatialreward.student.novelty`); this sends them, most novel first and at most
``max_share`` of a batch, to the teacher (`VLMTeacher` over vLLM / SGLang, or any `Teacher`), and keeps the
student's reward for the rest:

    from spatialreward.rl import EditScorer, TeacherFallback
    from spatialreward.teacher import VLMTeacher

    teacher = VLMTeacher.from_openai("http://127.0.0.1:8000/v1", model="SpatialReward-8B")
    scorer = EditScorer(model="runs/nano", fallback=TeacherFallback(teacher, max_share=0.25))
    rewards, infos = scorer.score(sources, editeds, instructions)   # infos[i]["scored_by"]: student | teacher

A teacher that fails on an edit leaves the student's reward in place and says so (``teacher_error``): the reward is
never dropped and never invented. The teacher reads images from files, so the chosen edits are written as PNGs
to a temporary folder that is removed after the call.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


class TeacherFallback:
    """Re-score the edits a student flags as novel with a teacher.

    Args:
        teacher: anything with ``judge_batch(samples, root) -> list[Judgement]`` (`spatialreward.teacher.Teacher`).
        max_share: most edits of one call that go to the teacher, floor(max_share · edits) (the teacher costs
            seconds per edit; score whole batches: a call of one edit sends none unless max_share is 1).
        threshold: novelty above which an edit is sent (1.0: further out than 99 % of in-distribution edits).
    """

    def __init__(self, teacher, *, max_share: float = 0.25, threshold: float = 1.0):
        if not hasattr(teacher, "judge_batch"):
            raise TypeError(f"teacher {type(teacher).__name__} has no judge_batch(samples, root): pass a "
                            "spatialreward.teacher Teacher (VLMTeacher, OracleTeacher) or one of your own")
        if not 0.0 < max_share <= 1.0:
            raise ValueError(f"max_share={max_share} must be in (0, 1]")
        self.teacher = teacher
        self.max_share = max_share
        self.threshold = threshold
        self.calls = 0  # edits sent to the teacher so far
        self.failures = 0  # of those, edits the teacher could not judge

    def choose(self, novelty: np.ndarray, ok: np.ndarray) -> list[int]:
        """Indices to send: valid edits above the threshold, most novel first, at most ``max_share`` of them all."""
        novel = [i for i in range(len(novelty)) if ok[i] and np.isfinite(novelty[i]) and novelty[i] > self.threshold]
        budget = math.floor(self.max_share * len(novelty) + 1e-9)
        return sorted(novel, key=lambda i: -novelty[i])[:budget]

    def apply(self, sources: Sequence[Any], editeds: Sequence[Any], instructions: Sequence[str],
              rewards: np.ndarray, infos: list[dict], novelty: np.ndarray | None) -> tuple[np.ndarray, list[dict]]:
        """Replace the chosen edits' rewards by the teacher's; every info gets ``scored_by`` (and ``teacher_error``
        where the teacher failed). ``novelty`` None (a student without a novelty fit) sends nothing."""
        rewards = rewards.copy()
        infos = [{**info, "scored_by": "student"} for info in infos]
        if novelty is None:
            return rewards, infos
        ok = np.array([bool(info.get("ok")) for info in infos])
        chosen = self.choose(novelty, ok)
        if not chosen:
            return rewards, infos
        judgements = self._judge([sources[i] for i in chosen], [editeds[i] for i in chosen],
                                 [instructions[i] for i in chosen])
        self.calls += len(chosen)
        for i, judgement in zip(chosen, judgements):
            if judgement.status == "ok" and judgement.reward is not None and math.isfinite(judgement.reward):
                infos[i].update(scored_by="teacher", subscores=list(judgement.subscores),
                                boxes=[list(b) for b in judgement.boxes], student_reward=float(rewards[i]))
                rewards[i] = float(judgement.reward)
            else:
                self.failures += 1
                infos[i]["teacher_error"] = f"{judgement.status}: {judgement.error or 'no reward'}"
        return rewards, infos

    def _judge(self, sources: list, editeds: list, instructions: list[str]):
        from spatialreward.images import ImageLoadError, load_image
        from spatialreward.types import EditSample, Judgement

        with tempfile.TemporaryDirectory(prefix="spatialreward-fallback-") as tmp:
            root = Path(tmp)
            samples, failed = [], {}
            for k, (src, edt, text) in enumerate(zip(sources, editeds, instructions)):
                try:
                    load_image(src, name=f"source {k}").save(root / f"{k}-source.png")
                    load_image(edt, name=f"edited {k}").save(root / f"{k}-edited.png")
                except ImageLoadError as exc:  # scored by the student already, so this is rare: keep its reward
                    failed[k] = str(exc)
                    continue
                samples.append(EditSample(sample_id=f"fallback-{k}", source=f"{k}-source.png",
                                          edited=f"{k}-edited.png", instruction=text, group_id=f"fallback-{k}"))
            judged = iter(self.teacher.judge_batch(samples, root) if samples else [])
            name = getattr(self.teacher, "name", "teacher")
            return [Judgement(sample_id=f"fallback-{k}", teacher=name, status="failed", error=failed[k])
                    if k in failed else next(judged) for k in range(len(sources))]
