"""The Ray mode on a local Ray instance writes the same records as the plain pipeline, and resumes the same way."""

from __future__ import annotations

import shutil

import pytest

ray = pytest.importorskip("ray")
torch = pytest.importorskip("torch")

from fixtures.fake_vlm import answer_length, build_fake_vlm, write_noise_dataset  # noqa: E402
from spatialreward.dataset import labels_dir, read_label_shards  # noqa: E402
from spatialreward.teacher.config import TeacherConfig  # noqa: E402
from spatialreward.teacher.pipeline import label_dataset  # noqa: E402
from spatialreward.teacher.ray_pipeline import label_dataset_ray  # noqa: E402
from spatialreward.teacher.vlm import VLMTeacher  # noqa: E402

# The fake model is forced to answer this (a valid SC answer; PQ ignores its regions), so both modes produce `ok`
# records with known verdicts through the real generate → decode → parse path, in this process and in the actors.
FORCED = '{"edit_region": [[100, 150, 400, 500]], "reasoning": "<|bbox_0|> repainted", "score": [20, 15]}'
CONFIG = TeacherConfig(max_new_tokens=answer_length(FORCED) + 4, batch_size=2, parse_retries=1)


@pytest.fixture(scope="module")
def local_ray():
    # One private Ray for the module (the pipeline reuses a running Ray and leaves it running).
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_mode_matches_plain_mode_and_resumes(tmp_path, local_ray):
    model = build_fake_vlm(tmp_path / "fake-ray", "qwen2_5_vl", answer=FORCED)
    plain_root, ray_root = tmp_path / "plain", tmp_path / "ray"
    samples = write_noise_dataset(plain_root, groups=2, edits_per_group=2)
    shutil.copytree(plain_root, ray_root)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # Ray actors run with one thread (OMP_NUM_THREADS=1): same float reductions
    try:
        teacher = VLMTeacher.from_pretrained(model, CONFIG)
        plain = label_dataset(plain_root, teacher, shard_size=3, progress=False)
    finally:
        torch.set_num_threads(threads)

    first = label_dataset_ray(ray_root, f"vlm:{model}", CONFIG, ray="local", ray_actors=1, shard_size=3,
                              limit=3, progress=False)
    assert first.labelled == 3
    rest = label_dataset_ray(ray_root, f"vlm:{model}", CONFIG, ray="local", ray_actors=1, shard_size=3,
                             progress=False)
    assert rest.already_labelled == 3 and rest.labelled == 1
    assert rest.counts + first.counts == plain.counts

    plain_records = read_label_shards(labels_dir(plain_root, teacher.name))
    ray_records = read_label_shards(labels_dir(ray_root, teacher.name))
    assert len(ray_records) == len(samples)
    assert plain.counts == {"ok": len(samples)}  # the equality below compares ok records, not only parse errors
    for j in ray_records:
        assert j.status == "ok" and j.subscores == [20, 15, 20, 15] and j.boxes == [[100, 150, 400, 500]]
    assert {j.model_dump_json() for j in ray_records} == {j.model_dump_json() for j in plain_records}
    assert [p.name for p in first.shards + rest.shards] == ["part-00000.jsonl", "part-00001.jsonl"]


def test_cli_ray_option_runs_the_ray_pipeline(tmp_path, local_ray):
    from typer.testing import CliRunner

    from spatialreward.cli import app

    model = build_fake_vlm(tmp_path / "fake-cli-ray", "qwen2_5_vl")
    samples = write_noise_dataset(tmp_path / "data", groups=1, edits_per_group=2)
    result = CliRunner().invoke(app, [
        "label", "--data", str(tmp_path / "data"), "--teacher", f"vlm:{model}", "--ray", "local",
        "--ray-actors", "1", "--max-new-tokens", "4", "--parse-retries", "0", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    records = read_label_shards(labels_dir(tmp_path / "data", "vlm:fake-cli-ray"))
    assert sorted(j.sample_id for j in records) == sorted(s.sample_id for s in samples)
    assert ray.is_initialized()  # a Ray the pipeline did not start is left running for its owner
