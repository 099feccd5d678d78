"""A tiny random Qwen-VL checkpoint built offline, so the real transformers loading path runs in tests and benches.

`build_tiny_vlm` writes a folder that `AutoProcessor` / `AutoModelForImageTextToText.from_pretrained` (and so
`VLMTeacher.from_pretrained`) load exactly like a downloaded checkpoint: ``config.json``, ``generation_config.json``,
safetensors weights, a byte-level tokenizer built in code (256 byte tokens + the Qwen special tokens, no merges),
a Qwen2-VL image processor, a video processor and a Qwen-style chat template.

Sizes are chosen for a 2-core CPU: ~0.2 M parameters, 64-wide text model, images of a few patches. The answers
are gibberish — the point is the code path (chat template, image tokens, left-padded batched generation,
decoding), not the verdicts. `write_tiny_dataset` writes a few random-noise edits in GRPO groups to run it on.
Tests and ``bench/teacher_cost.py`` share both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from spatialreward.types import EditSample

Family = Literal["qwen2_5_vl", "qwen3_vl"]

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
)

# Qwen2-VL's chat template, cut to what the teacher sends (text and image items; no default system prompt).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: every byte is a token, plus the Qwen special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def build_tiny_vlm(out_dir: str | Path, family: Family = "qwen2_5_vl", *, seed: int = 0) -> Path:
    """Write a tiny random ``family`` checkpoint to ``out_dir`` and return the folder.

    Arguments:
        out_dir: folder to create (files in it are overwritten).
        family: ``qwen2_5_vl`` (patch 14) or ``qwen3_vl`` (patch 16, deepstack vision).
        seed: weight initialisation seed; the same seed gives the same weights.
    """
    import torch
    from transformers import AutoModelForImageTextToText
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_byte_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    # Text model: 2 layers of width 64; head_dim 16 → rotary half-dim 8 = mrope sections 2 (t) + 3 (h) + 3 (w).
    text = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
        pad_token_id=ids["<|endoftext|>"], bos_token_id=None, eos_token_id=ids["<|im_end|>"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    # Vision tower: 2 blocks of width 32, projecting into the 64-wide text model.
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=64)
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig as Config
        from transformers import Qwen2_5_VLProcessor as Processor
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor as VideoProcessor

        patch = 14
        vision.update(patch_size=patch, window_size=56, fullatt_block_indexes=[1])
    elif family == "qwen3_vl":
        from transformers import Qwen3VLConfig as Config
        from transformers import Qwen3VLProcessor as Processor
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor as VideoProcessor

        patch = 16
        text["rope_parameters"]["mrope_interleaved"] = True
        # 8×8 learned position grid (interpolated for other sizes); deepstack taps the first block.
        vision.update(patch_size=patch, num_position_embeddings=64, deepstack_visual_indexes=[0])
    else:
        raise ValueError(f"family={family!r}: use 'qwen2_5_vl' or 'qwen3_vl'")

    config = Config(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    generation = model.generation_config
    generation.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    generation.pad_token_id = ids["<|endoftext|>"]
    generation.bos_token_id = None
    generation.do_sample = False

    # Images between 2×2 and 8×8 merged patches (4–64 image tokens each): seconds per call on a CPU.
    merge = 2
    image_processor = Qwen2VLImageProcessor(
        patch_size=patch, merge_size=merge, temporal_patch_size=2,
        size={"shortest_edge": (2 * merge * patch) ** 2, "longest_edge": (8 * merge * patch) ** 2},
    )
    video_processor = VideoProcessor(patch_size=patch, merge_size=merge, temporal_patch_size=2)
    processor = Processor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def write_tiny_dataset(
    root: str | Path, *, groups: int = 2, edits_per_group: int = 3, size: tuple[int, int] = (64, 80), seed: int = 0
) -> list[EditSample]:
    """A dataset folder of random-noise edits (``groups`` GRPO groups × ``edits_per_group``), for pipeline runs.

    Each group shares a source image and an instruction; each edit repaints one random rectangle. Returns the
    samples written to ``root/samples.jsonl``. ``size`` is (height, width) in pixels.
    """
    import numpy as np
    from PIL import Image

    from spatialreward.dataset import write_samples

    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = size
    samples = []
    for g in range(groups):
        folder = root / "images" / f"g{g:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        source = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(source).save(folder / "source.png")
        for e in range(edits_per_group):
            edited = source.copy()
            y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
            edited[y : y + height // 3, x : x + width // 3] = rng.integers(0, 256, 3, dtype=np.uint8)
            Image.fromarray(edited).save(folder / f"edit{e}.png")
            samples.append(EditSample(
                sample_id=f"g{g:03d}-e{e}", source=f"images/g{g:03d}/source.png",
                edited=f"images/g{g:03d}/edit{e}.png", instruction=f"repaint a patch, variant {g}",
                group_id=f"g{g:03d}",
            ))
    write_samples(root, samples)
    return samples
