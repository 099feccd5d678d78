"""The CLI's core commands driven through typer's CliRunner: help, convert, inspect (on a hand-made dataset)."""

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from spatialreward.cli import app
from spatialreward.dataset import labels_dir, next_shard_path, read_samples, write_label_shard, write_samples
from spatialreward.types import EditSample, Judgement

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("inspect", "convert"):
        assert name in result.output


def _tiny_dataset(root, n=3):
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(src).save(root / "images/src.png")
    samples, labels = [], []
    for k in range(n):
        edited = src.copy()
        edited[4 : 4 + 6 * k, 8:20] = [255, 0, 0]
        Image.fromarray(edited).save(root / f"images/{k}.png")
        samples.append(EditSample(sample_id=f"g0-{k}", source="images/src.png", edited=f"images/{k}.png",
                                  instruction="paint the top red", group_id="g0", meta={"kind": f"k{k}"}))
        boxes = [[250, 125, 625, 125 + 187.5 * k]] if k else []
        labels.append(Judgement.from_subscores(f"g0-{k}", "oracle", [5 + 8 * k, 20, 20, 20], boxes))
    write_samples(root, samples)
    write_label_shard(next_shard_path(labels_dir(root, "oracle")), labels)
    return root


def test_inspect_writes_png(tmp_path):
    data = _tiny_dataset(tmp_path / "ds")
    out = tmp_path / "sheet.png"
    result = runner.invoke(app, ["inspect", "--data", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    img = Image.open(out)
    assert img.width > 400 and img.height > 200


def test_inspect_bad_index_is_a_clear_error(tmp_path):
    data = _tiny_dataset(tmp_path / "ds")
    result = runner.invoke(app, ["inspect", "--data", str(data), "--index", "5"])
    assert result.exit_code != 0
    assert "out of range" in str(result.exception)


def test_convert_editreward_bench(tmp_path):
    recs = [{"idx": i, "instruction": "add a hat", "dimension": "overall", "input_image": "in.png",
             "output_images": [f"a{i}.png", f"b{i}.png"]} for i in range(3)]
    src = tmp_path / "erb.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in recs) + "\n{broken\n")
    out = tmp_path / "converted"
    result = runner.invoke(app, ["convert", "--input", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 skipped" in result.output
    samples = read_samples(out)
    assert len(samples) == 6 and all(s.source.startswith("/") for s in samples)
