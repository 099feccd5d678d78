"""The synthetic edit benchmark: groups in memory, dataset folders on disk, determinism, splits, truth masks.

Sets are tiny and images small (64–96 px) to keep this file at a few seconds: the measures and ordering properties
do not depend on the size (the full-size numbers are in the report of `spatialreward synth`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spatialreward.boxes import boxes_to_mask, mask_to_boxes
from spatialreward.dataset import DatasetError, group_samples, read_samples
from spatialreward.synth import ALL_KINDS, OPERATIONS, generate_dataset, make_group
from spatialreward.synth import truth
from spatialreward.synth.candidates import kinds_for
from spatialreward.synth.instructions import TEMPLATES, all_templates
from spatialreward.synth.photos import available_photos, load_photo, split_photos
from spatialreward.synth.regions import POSITION_PHRASES, RELATIVE_PHRASES
from spatialreward.types import SUBSCORE_NAMES, WHOLE_IMAGE

SMALL = 64  # pixels: enough room for regions and objects, fast to build


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "set"
    generate_dataset(out, groups=12, seed=5, size=SMALL, workers=1, progress=False)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- in memory ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_make_group_every_operation(operation):
    op = OPERATIONS[operation]
    group = make_group(np.random.default_rng(3), load_photo("astronaut"), size=96, operation=operation)
    assert group.operation == operation
    assert group.source.shape == (96, 96, 3) and group.source.dtype == np.uint8
    assert sorted(c.kind for c in group.candidates) == sorted(kinds_for(8, op.is_global))
    if not op.is_global and operation != "background":  # local edits name where they happen
        places = [p for table in (POSITION_PHRASES, RELATIVE_PHRASES) for phrases in table.values() for p in phrases]
        assert any(p in group.instruction for p in places), group.instruction
    for c in group.candidates:
        assert c.image.shape == (96, 96, 3) and c.image.dtype == np.uint8
        assert len(c.subscores) == len(SUBSCORE_NAMES) and all(0 <= v <= 25 for v in c.subscores)
        assert 0.0 <= c.reward <= 1.0
        if c.kind == "no_op":
            assert c.boxes == [] and not c.changed.any()
        elif op.is_global and c.kind != "region_only" or c.kind == "global":
            assert c.boxes == [list(WHOLE_IMAGE)] and c.changed.all()
        else:
            assert 1 <= len(c.boxes) <= truth.MAX_BOXES, (c.kind, c.boxes)


def test_every_kind_appears_and_groups_have_no_reward_ties():
    seen, tied = set(), 0
    photos = available_photos()
    for i, operation in enumerate(sorted(OPERATIONS) * 2):
        group = make_group(np.random.default_rng(i), load_photo(photos[i % len(photos)]), size=SMALL,
                           operation=operation)
        seen |= {c.kind for c in group.candidates}
        rewards = [round(c.reward, 6) for c in group.candidates]
        tied += len(set(rewards)) < len(rewards)
    assert seen == set(ALL_KINDS)
    assert tied <= 1  # continuous measures and jitter: exact ties should be (near) absent


def test_group_size_other_than_eight():
    for g in (2, 3, 11):
        group = make_group(np.random.default_rng(g), load_photo("coffee"), size=SMALL, candidates=g)
        assert len(group.candidates) == g
        assert {"correct"} <= {c.kind for c in group.candidates}
    with pytest.raises(ValueError, match="at least 2"):
        kinds_for(1, False)


def test_templates_vocabulary():
    templates = all_templates()
    assert len(templates) >= 50
    words = {"target": "the ball in the centre", "thing": "ball", "pos": "in the centre", "colour": "red",
             "material": "brick", "background": "a brick wall", "adj": "warmer", "noun": "a warm tone",
             "article": "a", "dest": "to the left", "dest_at": "on the left"}
    for family, items in TEMPLATES.items():
        for t in items:
            assert t.format(**words), (family, t)


def test_photo_split_is_fixed_and_disjoint():
    names = available_photos()
    assert len(names) >= 10, "scikit-image should ship at least ten photos offline"
    assert len({load_photo(n).tobytes() for n in names}) == len(names), "a photo under two names would leak"
    assert available_photos(names + ("chelsea",)) == names  # chelsea is cat: dropped as a duplicate
    train, heldout = split_photos(names, 0.2)
    assert split_photos(names, 0.2) == (train, heldout)
    assert not set(train) & set(heldout) and set(train) | set(heldout) == set(names)
    assert len(heldout) == round(0.2 * len(names))
    assert split_photos(names, 0.0)[1] == ()


# -- on disk --------------------------------------------------------------------------------------------------------


def test_dataset_layout_and_splits(small_set):
    samples = read_samples(small_set, strict=True)
    manifest = json.loads((small_set / "synth.json").read_text())
    groups = group_samples(samples)
    assert len(groups) == 12 and all(len(g) == 8 for g in groups.values())
    assert sum(1 for g in groups.values() if g[0].split == "heldout") == round(12 * 0.2)
    heldout_photos = {s.meta["photo"] for s in samples if s.split == "heldout"}
    train_photos = {s.meta["photo"] for s in samples if s.split == "train"}
    assert heldout_photos and not heldout_photos & train_photos
    assert heldout_photos <= set(manifest["photos"]["heldout"])
    for s in samples:
        assert s.sample_id.startswith(s.group_id) and s.group_id.startswith(s.split)
        for rel in (s.source, s.edited, s.meta["masks"]["changed"], s.meta["masks"]["intended"]):
            assert (small_set / rel).is_file(), rel
        with Image.open(small_set / s.edited) as im:
            assert im.size == (SMALL, SMALL) and im.mode == "RGB"


def test_truth_masks_match_boxes(small_set):
    for s in read_samples(small_set):
        t = s.meta["truth"]
        changed = np.asarray(Image.open(small_set / s.meta["masks"]["changed"])) > 127
        intended = np.asarray(Image.open(small_set / s.meta["masks"]["intended"])) > 127
        boxes = np.asarray(t["boxes"]).reshape(-1, 4)
        if s.meta["kind"] == "no_op":
            assert len(boxes) == 0 and not changed.any()
            continue
        expected = mask_to_boxes(changed, min_area=truth.min_area(SMALL), max_boxes=truth.MAX_BOXES)
        np.testing.assert_allclose(boxes, expected, atol=1e-2, err_msg=s.sample_id)
        # Every changed pixel lies in a box, and every box is tight on its component.
        assert not (changed & ~boxes_to_mask(boxes, SMALL, SMALL)).any(), s.sample_id
        np.testing.assert_allclose(
            np.asarray(t["intended_boxes"]).reshape(-1, 4),
            mask_to_boxes(intended, min_area=truth.min_area(SMALL), max_boxes=truth.MAX_BOXES), atol=1e-2)


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_dataset(a, groups=5, seed=11, size=SMALL, workers=1, progress=False)
    generate_dataset(b, groups=5, seed=11, size=SMALL, workers=2, progress=False)
    generate_dataset(c, groups=5, seed=12, size=SMALL, workers=1, progress=False)
    files_a = _files(a)
    assert files_a == _files(b)
    assert (a / "samples.jsonl").read_bytes() != (c / "samples.jsonl").read_bytes()


def test_resume_rebuilds_only_missing_groups(tmp_path):
    out = tmp_path / "set"
    generate_dataset(out, groups=4, seed=2, size=SMALL, workers=1, progress=False)
    before = _files(out)
    (out / "images" / "train-00001" / "group.json").unlink()
    (out / "images" / "train-00001" / "3.png").unlink()
    report = generate_dataset(out, groups=4, seed=2, size=SMALL, workers=1, progress=False)
    assert report.resumed_groups == 3
    assert _files(out) == before


def test_extend_with_more_groups(tmp_path):
    small, grown, fresh = tmp_path / "small", tmp_path / "grown", tmp_path / "fresh"
    generate_dataset(small, groups=3, seed=4, size=SMALL, workers=1, progress=False)
    generate_dataset(grown, groups=3, seed=4, size=SMALL, workers=1, progress=False)
    report = generate_dataset(grown, groups=6, seed=4, size=SMALL, workers=1, progress=False)
    generate_dataset(fresh, groups=6, seed=4, size=SMALL, workers=1, progress=False)
    assert report.resumed_groups == 3
    assert (grown / "samples.jsonl").read_bytes() == (fresh / "samples.jsonl").read_bytes()
    first = (small / "samples.jsonl").read_text().splitlines()
    assert (fresh / "samples.jsonl").read_text().splitlines()[: len(first)] == first


def test_refuses_a_folder_with_other_content(tmp_path):
    out = tmp_path / "set"
    generate_dataset(out, groups=2, seed=0, size=SMALL, workers=1, progress=False)
    with pytest.raises(DatasetError, match="other settings"):
        generate_dataset(out, groups=2, seed=1, size=SMALL, workers=1, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a synthetic set"):
        generate_dataset(other, groups=2, seed=0, size=SMALL, workers=1, progress=False)


def test_bad_settings_are_refused(tmp_path):
    for kwargs, msg in (({"groups": 0}, "groups"), ({"candidates": 1}, "candidates"), ({"size": 16}, "size"),
                        ({"heldout_fraction": 1.0}, "heldout_fraction")):
        args = {"groups": 2, **kwargs}
        groups = args.pop("groups")
        with pytest.raises(ValueError, match=msg):
            generate_dataset(tmp_path / "x", groups, progress=False, **args)


# -- CLI ------------------------------------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_help_and_run(tmp_path):
    from spatialreward.cli import app
    from spatialreward.cli._errors import CLIError

    result = runner.invoke(app, ["synth", "--help"])
    assert result.exit_code == 0 and "--groups" in result.output and "--seed" in result.output
    out = tmp_path / "cli"
    result = runner.invoke(app, ["synth", "--out", str(out), "--groups", "2", "--size", str(SMALL), "--workers", "1",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "correct" in result.output and (out / "samples.jsonl").is_file()
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "bad"), "--candidates", "1"])
    assert isinstance(result.exception, CLIError) and "--candidates" in str(result.exception)


def test_a_photo_that_fails_to_load_is_recorded_and_warned_and_a_skip_is_not_swallowed(monkeypatch):
    """A missing photo changes the held-out split, so it must never be silent; and a runner's outcome (pytest's
    Skipped is a BaseException) or Ctrl-C must propagate instead of turning into "photo not here"."""
    import skimage.data

    from spatialreward.synth import photos

    def broken():
        raise OSError("file is gone")

    def skipping():
        pytest.skip("skimage data not installed")

    monkeypatch.setattr(skimage.data, "_test_broken_photo", broken, raising=False)
    monkeypatch.setattr(skimage.data, "_test_skipping_photo", skipping, raising=False)
    assert load_photo("_test_broken_photo") is None
    assert "OSError: file is gone" in photos.photo_load_failures()["_test_broken_photo"]
    with pytest.warns(RuntimeWarning, match=r"_test_broken_photo \(OSError: file is gone\)"):
        assert photos.available_photos(("astronaut", "_test_broken_photo")) == ("astronaut",)
    with pytest.raises(pytest.skip.Exception):
        load_photo("_test_skipping_photo")


def test_resume_from_another_photo_split_is_refused(tmp_path, monkeypatch):
    """A folder made where more (or other) photos loaded must not be resumed into with today's split."""
    from spatialreward.synth import generate

    out = tmp_path / "synth"
    generate_dataset(out, groups=2, seed=0, candidates=2, size=48, workers=1, progress=False)
    manifest = json.loads((out / generate.MANIFEST).read_text())
    assert manifest["photos_not_loaded"] == {}
    real = generate.available_photos()
    monkeypatch.setattr(generate, "available_photos", lambda: tuple(real[:-1]))
    with pytest.raises(DatasetError, match="another photo split"):
        generate_dataset(out, groups=2, seed=0, candidates=2, size=48, workers=1, progress=False)
