"""DDP distillation under torchrun: 2 CPU processes on the gloo backend.

The script below is what a user's ``torchrun --nproc-per-node 2 -m spatialreward distill ...`` runs, minus the
MiniLM load (the hashing stand-in keeps the two processes to a few seconds each). Each rank reports a checksum of
its weights and the edits it trained on; the replicas must agree and the data must not overlap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, torch
    torch.set_num_threads(1)  # two processes share the two cores
    from spatialreward.student.distill import DistillConfig, Distiller
    from spatialreward.student.presets import preset_config
    from tests.fixtures.students import HashingTextEncoder

    data, out = sys.argv[1], sys.argv[2]
    sc = preset_config("nano", img_size=48, depth=1, embed_dim=32, num_heads=2, cross_heads=2, head_dim=32,
                       mask_subdivision=2)
    cfg = DistillConfig(data=data, out=out, max_steps=3, groups_per_batch=1, warmup_steps=1, progress=False,
                        tensorboard=False, eval_every_minutes=0, save_every_minutes=1e9)
    d = Distiller(cfg, text_encoder=HashingTextEncoder(), student_config=sc)
    init = sum(float(p.detach().double().sum()) for p in d.model.parameters())
    d.train()
    seen = [i for step in range(3) for i in d.sampler.epoch_batches(0)[step]]
    rank = int(os.environ["RANK"])
    checksum = sum(float(p.detach().double().sum()) for p in d.model.parameters())
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump({"checksum": checksum, "init": init, "seen": seen, "world": d.world_size, "step": d.step}, fh)
    """
)


def test_two_process_gloo_ddp(tmp_path):
    pytest.importorskip("torch.distributed")
    from tests.fixtures.students import make_fake_dataset

    # 8 train groups: 3 steps × 1 group × 2 ranks = 6 distinct groups.
    data = make_fake_dataset(tmp_path / "data", groups=10, size=48, heldout_fraction=0.2)
    out = tmp_path / "run"
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(script), str(data), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2 and r0["step"] == r1["step"] == 3
    assert r0["checksum"] == r1["checksum"]  # gradients were all-reduced: the replicas are identical
    assert r0["checksum"] != r0["init"]  # and they did train
    assert not set(r0["seen"]) & set(r1["seen"])  # each rank trained on its own groups
    assert (out / "model.safetensors").is_file() and (out / "checkpoint" / "model.safetensors").is_file()
