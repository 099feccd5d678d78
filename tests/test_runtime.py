"""`RewardModel`: from_pretrained round trip, input kinds, shared work per group, bad inputs, the real MiniLM."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from spatialreward import RewardModel, RewardOutput
from spatialreward.formula import RewardWeights, reward_from_subscores
from spatialreward.images import ImageLoadError
from spatialreward.student.data import preprocess_image
from spatialreward.student.model import Student
from tests.fixtures.students import HashingTextEncoder, random_images, save_toy_student

torch.set_num_threads(2)

images = partial(random_images, size=60)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A toy student: the runtime's plumbing is what is tested, not the network. With pixel statistics, because
    the cached-source path must carry them too."""
    return save_toy_student(tmp_path_factory.mktemp("student"), pixel_stats=True)


def test_from_pretrained_round_trip_matches_the_network(model_dir):
    enc = HashingTextEncoder()
    rm = RewardModel.from_pretrained(model_dir, text_encoder=enc)
    src, edt = images(1, seed=1) * 3, images(3, seed=2)
    instructions = ["make it red", "make it red", "make it blue"]
    out = rm.score(src, edt, instructions)
    assert isinstance(out, RewardOutput) and len(out) == 3
    assert out.subscores.shape == (3, 4) and out.edit_mask.shape == (3, 48, 48) and out.edit_mask.dtype == torch.bool
    assert out.ok.all() and out.errors == [None, None, None]
    assert torch.all((out.reward >= 0) & (out.reward <= 1)) and torch.all(out.uncertainty > 0)
    for b in out.boxes:
        assert b.shape[1] == 4 and np.all((b >= 0) & (b <= 1000))

    student = Student.from_pretrained(model_dir)
    s = torch.stack([preprocess_image(im, 48) for im in src]).float() / 255
    e = torch.stack([preprocess_image(im, 48) for im in edt]).float() / 255
    with torch.no_grad():
        ref = student(s, e, HashingTextEncoder().encode(instructions))
    assert torch.allclose(out.reward, ref.reward, atol=1e-5)
    assert torch.allclose(out.subscores, ref.subscores, atol=1e-4)


def test_inputs_as_pil_numpy_tensor_and_path_agree(model_dir, tmp_path):
    rm = RewardModel.from_pretrained(model_dir, text_encoder=HashingTextEncoder())
    src, edt = images(1, seed=3)[0], images(1, seed=4)[0]
    path = tmp_path / "edit.png"
    edt.save(path)
    arr = np.array(edt)  # a writable copy
    ten = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    out = rm.score([src] * 4, [edt, arr, ten, str(path)], ["add a hat"] * 4)
    assert torch.allclose(out.reward, out.reward[0].expand(4), atol=1e-5)


def test_arrays_already_at_the_model_side_skip_pil_and_score_the_same(model_dir):
    """The fast path for uint8 frames at the model side (the server's raw body) gives the PIL path's rewards,
    read-only arrays included, and the batch goes through the thread pool."""
    rm = RewardModel.from_pretrained(model_dir, text_encoder=HashingTextEncoder())
    side = rm.image_size
    edits = images(10, size=side, seed=5)
    frames = [np.asarray(im) for im in edits]
    frames[0] = frames[0].copy()
    frames[0].flags.writeable = False
    src = images(1, size=side, seed=6)[0]
    via_pil = rm.score([src] * 10, edits, ["add a hat"] * 10)
    via_frames = rm.score([np.asarray(src)] * 10, frames, ["add a hat"] * 10)
    assert torch.equal(via_pil.reward, via_frames.reward)


def test_group_source_is_encoded_once_and_set_group_matches_score(model_dir, monkeypatch):
    rm = RewardModel.from_pretrained(model_dir, text_encoder=HashingTextEncoder())
    src = images(1, seed=5)[0]
    edt = images(4, seed=6)
    seen = []
    original = rm.student.encode_images
    monkeypatch.setattr(rm.student, "encode_images", lambda x: (seen.append(x.shape[0]), original(x))[1])
    out = rm.score([src] * 4, edt, ["remove the cat"] * 4)
    assert seen == [1 + 4]  # one source + four edits in one backbone pass
    with pytest.raises(RuntimeError, match="set_group"):
        RewardModel.from_pretrained(model_dir, text_encoder=HashingTextEncoder()).score_group(edt)
    rm.set_group(src, "remove the cat")
    grouped = rm.score_group(edt)
    assert torch.allclose(grouped.reward, out.reward, atol=1e-5)


def test_bad_items_raise_by_name_or_are_flagged(model_dir, tmp_path):
    rm = RewardModel.from_pretrained(model_dir, text_encoder=HashingTextEncoder())
    src, edt = images(1, seed=7)[0], images(3, seed=8)
    bad = tmp_path / "truncated.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    with pytest.raises(ImageLoadError, match=r"editeds\[1\]"):
        rm.score([src] * 3, [edt[0], str(bad), edt[2]], ["x"] * 3)
    out = rm.score([src] * 3, [edt[0], str(bad), edt[2]], ["x"] * 3, on_error="flag")
    assert out.ok.tolist() == [True, False, True]
    assert torch.isnan(out.reward[1]) and torch.isfinite(out.reward[[0, 2]]).all()
    assert "editeds[1]" in out.errors[1] and out.boxes[1].shape == (0, 4)
    with pytest.raises(ValueError, match="one of each per edit"):
        rm.score([src], edt, ["x"] * 3)
    with pytest.raises(ValueError, match="backend 'nope'"):
        RewardModel.from_pretrained(model_dir, backend="nope")


@pytest.mark.parametrize("bad", [
    pytest.param(lambda: torch.rand(3, 40, 40, dtype=torch.bfloat16), id="bf16-tensor"),  # numpy has no bf16
    pytest.param(lambda: torch.rand(3, 40, 40).to_sparse(), id="sparse-tensor"),
    pytest.param(lambda: torch.rand(5, 40, 40), id="wrong-channels"),
    pytest.param(lambda: np.zeros((40, 40, 3), dtype=np.complex64), id="wrong-dtype"),
    pytest.param(lambda: 42, id="wrong-type"),
])
def test_flag_marks_every_bad_image_and_scores_the_rest(model_dir, bad):
    rm = RewardModel.from_pretrained(model_dir, text_encoder=HashingTextEncoder())
    src, edt = images(1, seed=11)[0], images(2, seed=12)
    out = rm.score([src] * 3, [edt[0], bad(), edt[1]], ["x"] * 3, on_error="flag")
    assert out.ok.tolist() == [True, False, True] and "editeds[1]" in out.errors[1]
    assert torch.isnan(out.reward[1]) and torch.isfinite(out.reward[[0, 2]]).all()
    with pytest.raises(ImageLoadError, match=r"editeds\[1\]"):
        rm.score([src] * 3, [edt[0], bad(), edt[1]], ["x"] * 3)
    # the size probe of mask_size="edited" must not crash on it either
    assert rm.score([src] * 2, [edt[0], bad()], ["x"] * 2, mask_size="edited", on_error="flag").ok.tolist() == [
        True, False]
    # a bad source flags every edit that uses it, and only those
    out = rm.score([src, bad()], edt, ["x"] * 2, on_error="flag")
    assert out.ok.tolist() == [True, False] and "sources[1]" in out.errors[1]


def test_flag_marks_an_instruction_that_is_not_text(model_dir):
    rm = RewardModel.from_pretrained(model_dir, text_encoder=HashingTextEncoder())
    src, edt = images(1, seed=13)[0], images(3, seed=14)
    out = rm.score([src] * 3, edt, ["make it red", None, "make it red"], on_error="flag")
    assert out.ok.tolist() == [True, False, True] and "instructions[1]" in out.errors[1]
    alone = rm.score([src], [edt[2]], ["make it red"])
    assert torch.allclose(out.reward[2], alone.reward[0], atol=1e-6)  # the bad row did not disturb the others
    with pytest.raises(ImageLoadError, match=r"instructions\[1\]"):
        rm.score([src] * 3, edt, ["make it red", None, "make it red"])


def test_non_finite_network_output_is_flagged_not_returned(model_dir, monkeypatch):
    rm = RewardModel.from_pretrained(model_dir, text_encoder=HashingTextEncoder())
    src, edt = images(1, seed=15)[0], images(2, seed=16)
    real = rm.backend.score

    def poisoned(source, edited, text):
        out = real(source, edited, text)
        return out._replace(subscores=out.subscores.clone().index_fill_(0, torch.tensor([0]), float("nan")),
                            reward=out.reward.clone().index_fill_(0, torch.tensor([0]), float("nan")))

    monkeypatch.setattr(rm.backend, "score", poisoned)
    out = rm.score([src] * 2, edt, ["x"] * 2, on_error="flag")
    assert out.ok.tolist() == [False, True] and "non-finite" in out.errors[0]


def test_uses_the_students_helpers_not_copies():
    import inspect

    import spatialreward.runtime as runtime

    text = inspect.getsource(runtime)
    assert "instruction_encoder_for" in text and "subscore_std_points" in text  # the one encoder picker (export/)
    assert "25.0 * torch.exp" not in text and "get_text_encoder" not in text
    top = [line for line in text.splitlines() if line.startswith(("import ", "from "))]
    assert not [line for line in top if "student" in line or "export" in line], top  # only lazily, via export/


def test_mask_size_options_and_reward_weights(model_dir):
    rm = RewardModel.from_pretrained(model_dir, text_encoder=HashingTextEncoder())
    src, edt = images(1, size=80, seed=9)[0], images(2, size=80, seed=10)
    assert rm.score([src] * 2, edt, ["x"] * 2, mask_size="edited").edit_mask.shape == (2, 80, 80)
    assert rm.score([src] * 2, edt, ["x"] * 2, mask_size=(10, 20)).edit_mask.shape == (2, 10, 20)
    before = rm.score([src] * 2, edt, ["x"] * 2)
    w = RewardWeights(w_if=1.0, w_cons=0.0)
    rm.set_reward_weights(w)
    after = rm.score([src] * 2, edt, ["x"] * 2)
    assert np.allclose(after.reward.numpy(), reward_from_subscores(before.subscores.double().numpy(), w), atol=1e-4)
    empty = rm.score([], [], [])
    assert len(empty) == 0 and empty.edit_mask.shape == (0, 48, 48)


def test_real_minilm_encoder_is_offline_normalised_and_cached():
    from spatialreward.student.text import InstructionEncoder

    enc = InstructionEncoder()
    emb = enc.encode(["make the sky red", "make the sky red", "remove the cat"])
    assert emb.shape == (3, 384) and enc.calls == 2  # the repeated instruction is encoded once
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(emb[0], emb[1]) and not torch.allclose(emb[0], emb[2])
    sim = torch.nn.functional.cosine_similarity
    close = enc.encode(["make the sky crimson"])[0]
    assert sim(emb[0], close, dim=0) > sim(emb[2], close, dim=0)  # a sentence encoder, not a hash
    enc.encode(["remove the cat"])
    assert enc.calls == 3  # only "crimson" was new
    with pytest.raises(TypeError, match="instruction 0"):
        enc.encode([None])
