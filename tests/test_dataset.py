"""Dataset I/O: samples and label shards round trip; bad lines are reported by file and line, or raise in strict."""

import json
from pathlib import Path

import pytest

from spatialreward.benchmarks import read_editreward_bench, read_mer_bench
from spatialreward.dataset import (
    DatasetError,
    OutsideRootError,
    ReadReport,
    group_samples,
    labels_dir,
    list_shards,
    next_shard_path,
    read_label_shards,
    read_labels,
    read_samples,
    sample_image_path,
    write_label_shard,
    write_samples,
)
from spatialreward.types import EditSample, Judgement


def _samples(n=4):
    return [
        EditSample(
            sample_id=f"g{i // 2}-{i % 2}", source="images/src.png", edited=f"images/{i}.png",
            instruction="make the car red", group_id=f"g{i // 2}", split="train" if i < 2 else "heldout",
        )
        for i in range(n)
    ]


def test_samples_round_trip_and_split(tmp_path):
    write_samples(tmp_path, _samples())
    back = read_samples(tmp_path)
    assert [s.sample_id for s in back] == ["g0-0", "g0-1", "g1-0", "g1-1"]
    assert [s.sample_id for s in read_samples(tmp_path, split="heldout")] == ["g1-0", "g1-1"]
    groups = group_samples(back)
    assert list(groups) == ["g0", "g1"] and len(groups["g0"]) == 2
    assert back[0].source_path(tmp_path) == tmp_path / "images/src.png"


def test_duplicate_ids_refused_on_write(tmp_path):
    s = _samples(2)
    with pytest.raises(DatasetError, match="duplicate"):
        write_samples(tmp_path, [s[0], s[0]])


def test_malformed_lines_reported_not_fatal(tmp_path):
    good = _samples(2)
    lines = [good[0].model_dump_json(), "{not json", json.dumps({"sample_id": "x"}), "[1, 2]", "",
             good[1].model_dump_json(), good[1].model_dump_json()]
    (tmp_path / "samples.jsonl").write_text("\n".join(lines) + "\n")
    report = ReadReport()
    samples = read_samples(tmp_path, report=report)
    assert [s.sample_id for s in samples] == ["g0-0", "g0-1"]
    assert report.bad == 4  # bad json, missing fields, not an object, duplicate id
    lines_reported = sorted(e.line for e in report.errors if e.line)
    assert lines_reported == [2, 3, 4]
    assert any("source" in e.reason for e in report.errors)  # names the missing field
    assert all("samples.jsonl" in str(e) for e in report.errors)
    with pytest.raises(DatasetError, match=r"samples.jsonl:2"):
        read_samples(tmp_path, strict=True)


def test_missing_dataset_folder_says_what_to_do(tmp_path):
    with pytest.raises(DatasetError, match="spatialreward synth"):
        read_samples(tmp_path / "nothing")


def _judgements():
    return [
        Judgement.from_subscores("g0-0", "oracle", [20, 15, 22, 18], [[0, 0, 500, 500]], reasoning="ok"),
        Judgement.failure("g0-1", "oracle", "parse_error", "no JSON object", raw_text="garbage"),
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_label_shards_round_trip(tmp_path, fmt):
    d = labels_dir(tmp_path, "vlm:org/Model-8B")
    assert d.name == "vlm_org_Model-8B"
    p0 = write_label_shard(next_shard_path(d, fmt), _judgements()[:1])
    p1 = write_label_shard(next_shard_path(d, fmt), _judgements()[1:])
    assert [p.name for p in list_shards(d)] == [p0.name, p1.name] == [f"part-00000.{fmt}", f"part-00001.{fmt}"]
    (d / ".part-00002.jsonl.abc.tmp").write_text("half a shard from a killed writer")
    labels = read_labels(tmp_path, "vlm:org/Model-8B")
    assert set(labels) == {"g0-0", "g0-1"}
    assert labels["g0-0"].reward == pytest.approx(0.73533, abs=1e-5) and labels["g0-0"].boxes == [[0, 0, 500, 500]]
    assert labels["g0-1"].status == "parse_error" and labels["g0-1"].reward is None
    assert labels["g0-1"].raw_text == "garbage"


def test_bad_label_lines_reported(tmp_path):
    d = labels_dir(tmp_path, "oracle")
    d.mkdir(parents=True)
    good = _judgements()[0].model_dump_json()
    bad_reward = json.loads(good) | {"status": "failed"}  # failed must carry reward null
    bad_score = json.loads(good) | {"subscores": [30, 1, 1, 1]}
    (d / "part-00000.jsonl").write_text("\n".join([good, json.dumps(bad_reward), json.dumps(bad_score)]) + "\n")
    report = ReadReport()
    assert len(read_label_shards(d, report=report)) == 1
    reasons = [e.reason for e in report.errors]
    assert any("reward=null" in r for r in reasons) and any("outside 0–25" in r for r in reasons)


def test_judgement_contract():
    with pytest.raises(ValueError, match="needs 4 subscores"):
        Judgement(sample_id="a", teacher="t", status="ok", reward=0.5)
    with pytest.raises(ValueError, match="x2 < x1"):
        Judgement.from_subscores("a", "t", [1, 1, 1, 1], [[500, 0, 100, 10]])
    with pytest.raises(ValueError, match="outside 0–1000"):
        Judgement.from_subscores("a", "t", [1, 1, 1, 1], [[0, 0, 1001, 10]])
    j = Judgement.from_subscores("a", "t", [25, 25, 25, 25], [], extra_field=3)
    assert j.reward == pytest.approx(1.0) and j.model_dump()["extra_field"] == 3


def test_editreward_bench_adapter(tmp_path):
    recs = [
        {"idx": 0, "instruction": "add a hat", "task_type": "add", "dimension": "overall",
         "input_image": "in/0.png", "output_images": ["out/0a.png", "out/0b.png"], "key": "k0"},
        {"idx": 1, "instruction": "x", "dimension": "sharpness", "input_image": "a", "output_images": ["b", "c"]},
        {"idx": 2, "instruction": "y", "dimension": "consistency", "input_image": "a", "output_images": ["b"]},
    ]
    p = tmp_path / "erb.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    report = ReadReport()
    samples = read_editreward_bench(p, report=report)
    assert [s.meta["rank"] for s in samples] == [0, 1]
    assert samples[0].edited == str(tmp_path / "out/0a.png") and samples[0].group_id == samples[1].group_id
    assert sorted(e.line for e in report.errors) == [2, 3]
    assert any("dimension" in e.reason for e in report.errors)
    with pytest.raises(DatasetError, match="erb.jsonl:2"):
        read_editreward_bench(p, strict=True)


def test_mer_bench_adapter_accepts_field_spellings(tmp_path):
    recs = [
        {"id": "a", "instruction": "remove the cup", "original_image": "o.png",
         "edited_images": ["1.png", "2.png", "3.png"], "category": "remove"},
        {"idx": 7, "prompt": "make it night", "source_image": "o.png", "ranked_images": ["1.png", "2.png"]},
        {"id": "bad", "instruction": "z", "original_image": "o.png", "edited_images": ["1.png"]},
        {"id": "dup", "instruction": "z", "original_image": "o.png", "edited_images": ["1.png", "1.png"]},
    ]
    p = tmp_path / "mer.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    report = ReadReport()
    samples = read_mer_bench(p, image_root="/data", report=report)
    assert [s.sample_id for s in samples] == ["mer-a-0", "mer-a-1", "mer-a-2", "mer-7-0", "mer-7-1"]
    assert samples[0].source == "/data/o.png" and samples[0].meta["category"] == "remove"
    assert sorted(e.line for e in report.errors) == [3, 4]


# ---------------------------------------------------------------------------------------------------------------
# Damaged files (issue 12): one bad line or shard is reported and skipped; strict names file and line
# ---------------------------------------------------------------------------------------------------------------


def test_invalid_utf8_line_is_one_bad_record(tmp_path):
    good = _samples(3)
    lines = [good[0].model_dump_json().encode(), b'{"sample_id": "\xff\xfe broken"}', good[2].model_dump_json().encode()]
    (tmp_path / "samples.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    report = ReadReport()
    samples = read_samples(tmp_path, report=report)
    assert [s.sample_id for s in samples] == ["g0-0", "g1-0"]
    (err,) = report.errors
    assert err.line == 2 and "invalid UTF-8" in err.reason
    with pytest.raises(DatasetError, match=r"samples.jsonl:2: invalid UTF-8"):
        read_samples(tmp_path, strict=True)


def test_damaged_shards_are_skipped_per_shard_or_named_in_strict(tmp_path):
    d = labels_dir(tmp_path, "oracle")
    good = _judgements()
    write_label_shard(d / "part-00000.jsonl", good[:1])
    (d / "part-00001.parquet").write_bytes(b"PAR1 this is not a parquet file PAR1")
    (d / "part-00002.jsonl").write_bytes(b"\x80\x81\x82\n")
    write_label_shard(d / "part-00003.parquet", good[1:])
    report = ReadReport()
    labels = read_label_shards(d, report=report)
    assert [j.sample_id for j in labels] == ["g0-0", "g0-1"]  # the shards around the damaged ones are read
    reasons = {e.path.rsplit("/", 1)[-1]: (e.line, e.reason) for e in report.errors}
    assert reasons["part-00001.parquet"][0] == 0 and "unreadable Parquet shard" in reasons["part-00001.parquet"][1]
    assert reasons["part-00002.jsonl"][0] == 1 and "invalid UTF-8" in reasons["part-00002.jsonl"][1]
    with pytest.raises(DatasetError, match=r"part-00001.parquet: unreadable Parquet shard"):
        read_label_shards(d, strict=True)


# ---------------------------------------------------------------------------------------------------------------
# Sample paths stay inside the dataset folder (issue 12)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.png", "images/../../outside.png"])
def test_sample_paths_outside_the_root_are_refused(tmp_path, path):
    with pytest.raises(OutsideRootError, match="g0-0: source: image path") as info:
        sample_image_path(tmp_path, path, name="g0-0: source")
    assert "--allow-outside-root" in str(info.value)
    allowed = sample_image_path(tmp_path, path, allow_outside_root=True)
    assert allowed == (Path(path) if Path(path).is_absolute() else tmp_path / path)


def test_relative_sample_paths_resolve_under_the_root(tmp_path):
    assert sample_image_path(tmp_path, "images/g0/a.png") == tmp_path / "images/g0/a.png"
    assert sample_image_path(tmp_path, "./images/a..b.png") == tmp_path / "images/a..b.png"  # '..' in a name is fine
