"""The student network: shapes and bounds for every preset, regions, checkpoints, backbone import, export."""

from __future__ import annotations

import warnings
from dataclasses import asdict

import numpy as np
import pytest
import torch

from spatialreward.formula import RewardWeights, reward_from_subscores
from spatialreward.student.model import Student, StudentConfig, mask_bounding_box
from spatialreward.student.presets import build_student, list_presets, preset_config, register_preset
from tests.fixtures.students import TOY_STUDENT

torch.set_num_threads(2)

# `TOY_STUDENT` for everything but the preset sweep: 48 px / patch 16 = 3×3 tokens, width 32, one block; a forward
# pass is a millisecond, and every code path (RoIAlign, both attention paths, the mask head) still runs.



def tensors(out) -> list[torch.Tensor]:
    """The tensor fields of a `StudentOutput` (``novelty`` is None for a student without a novelty fit)."""
    assert len(out) == 7 and out[-1] is None
    return [t for t in out if t is not None]

def toy_student(seed: int = 0, **overrides) -> Student:
    torch.manual_seed(seed)
    return Student(preset_config("nano", **{**TOY_STUDENT, **overrides}))


def inputs(cfg: StudentConfig, b: int = 3, seed: int = 0):
    """Source, edited (its upper-left quarter replaced) and instruction embeddings at the model's input side."""
    g = torch.Generator().manual_seed(seed)
    side = cfg.input_size
    s = torch.rand(b, 3, side, side, generator=g)
    e = s.clone()
    e[:, :, : side // 2, : side // 2] = torch.rand(b, 3, side // 2, side // 2, generator=g)
    t = torch.nn.functional.normalize(torch.randn(b, cfg.text_dim, generator=g), dim=1)
    return s, e, t


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_outputs_shapes_and_bounds(name):
    # Real preset sizes (tiny/small run at 224 px); batch 2 keeps the small preset under a second.
    cfg = preset_config(name)
    model = Student(cfg)
    s, e, t = inputs(cfg, b=2)
    out = model(s, e, t)
    mh, mw = cfg.mask_size
    assert out.subscores.shape == (2, 4) and out.reward.shape == (2,)
    assert out.edit_mask_logits.shape == (2, mh, mw) and out.presence_logit.shape == (2,)
    assert out.subscore_logvar.shape == (2, 4) and out.region_boxes.shape == (2, 4)
    assert torch.all((out.subscores >= 0) & (out.subscores <= 25))
    assert torch.all((out.reward >= 0) & (out.reward <= 1))
    assert torch.all((out.subscore_logvar >= cfg.logvar_min) & (out.subscore_logvar <= cfg.logvar_max))
    assert torch.all((out.region_boxes >= 0) & (out.region_boxes <= 1000))
    assert torch.allclose(out.reward, reward_from_subscores(out.subscores))
    out.reward.sum().backward()  # differentiable end to end
    assert model.encoder.vit.patch_embed.proj.weight.grad is not None


def test_presets_registry_warns_on_duplicates_and_refuses_unknown():
    assert {"nano", "tiny", "small"} <= set(list_presets())
    with pytest.raises(KeyError, match="unknown student preset 'huge'"):
        preset_config("huge")
    assert preset_config("nano", img_size=64).img_size == 64  # caller overrides win

    def _test_only_preset(**overrides):
        return StudentConfig(**overrides)

    register_preset(_test_only_preset)
    with pytest.warns(UserWarning, match="registered twice"):
        register_preset(_test_only_preset)
    from spatialreward.student import presets

    presets._PRESETS.pop("_test_only_preset")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(img_size=100, patch_size=16), "not a multiple of patch_size"),
        (dict(embed_dim=100, num_heads=3), "divisible by num_heads"),
        (dict(mask_subdivision=3), "divide patch_size"),
        (dict(logvar_min=2.0, logvar_max=1.0), "below logvar_max"),
        (dict(reward_weights={"alpha": 2.0}), "alpha"),
        (dict(quality_scale=-1), "quality_scale"),
        (dict(img_size=40, patch_size=8, quality_scale=1), "multiple of 16"),
    ],
)
def test_config_rejects_broken_invariants(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StudentConfig(**kwargs)


def test_mask_bounding_box_hand_cases():
    m = torch.zeros(2, 4, 4, dtype=torch.bool)
    m[0, 1:3, 2] = True  # rows 1–2, column 2 of a 4×4 grid
    box = mask_bounding_box(m)
    assert box[0].tolist() == [500.0, 250.0, 750.0, 750.0]
    assert box[1].tolist() == [0.0, 0.0, 1000.0, 1000.0]  # empty → whole image


def test_mask_bounding_box_matches_the_occupied_cells_on_random_masks():
    g = torch.Generator().manual_seed(0)
    for h, w in [(28, 28), (7, 12), (1, 5)]:
        masks = torch.rand(64, h, w, generator=g) > torch.rand(64, 1, 1, generator=g) ** 0.05  # sparse to full
        masks[0] = False
        for mask, box in zip(masks, mask_bounding_box(masks)):
            if not mask.any():
                assert box.tolist() == [0.0, 0.0, 1000.0, 1000.0]
                continue
            ys, xs = mask.nonzero(as_tuple=True)
            want = [xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h]
            assert torch.allclose(box, torch.tensor(want) * 1000.0, atol=1e-4), (h, w, box, want)


def test_tokens_path_equals_forward_and_regions_change_the_answer():
    model = toy_student().eval()
    s, e, t = inputs(model.cfg)
    full = model(s, e, t)
    enc = model.encode_images(torch.cat([s, e]))
    split = model.forward_tokens(enc.select(slice(0, 3)), enc.select(slice(3, None)), t)
    for a, b in zip(tensors(full), tensors(split)):
        assert torch.allclose(a, b, atol=1e-6)
    gh, gw = model.cfg.grid
    forced_boxes = torch.tensor([[0.0, 0.0, 500.0, 500.0]]).repeat(3, 1)
    forced_mask = torch.zeros(3, gh, gw)
    forced_mask[:, 0, 0] = 1.0
    forced = model(s, e, t, region_boxes=forced_boxes, region_mask=forced_mask)
    assert torch.equal(forced.region_boxes, forced_boxes)
    assert not torch.allclose(forced.subscores, full.subscores)
    assert torch.equal(forced.edit_mask_logits, full.edit_mask_logits)  # the mask never depends on the region
    empty = model(s, e, t, region_boxes=forced_boxes, region_mask=torch.zeros(3, gh, gw))
    assert all(torch.isfinite(x).all() for x in tensors(empty))
    # A shared source given once with an index gives the same answer as the source repeated per edit.
    shared = model(s[:1], e, t, source_index=torch.zeros(3, dtype=torch.long))
    repeated = model(s[:1].expand(3, -1, -1, -1), e, t)
    for a, b in zip(tensors(shared), tensors(repeated)):
        assert torch.allclose(a, b, atol=1e-6)


def test_pixel_statistics_can_be_turned_off_and_see_degradations():
    from spatialreward.student.model import PixelStats, compare_pixels

    plain = toy_student(pixel_stats=False).eval()
    s, e, t = inputs(plain.cfg)
    out = plain(s, e, t)
    assert out.edit_mask_logits.shape == (3, *plain.cfg.mask_size) and torch.isfinite(out.reward).all()
    assert not any("pixel" in k for k in plain.state_dict())
    # Noise raises the high-pass energy of a flat image, blur lowers it: the log ratio channel has the sign.
    stats = PixelStats(cell=8)
    flat = torch.full((1, 3, 32, 32), 0.5)
    noisy = flat + 0.1 * torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert compare_pixels(stats(flat), stats(noisy))[:, 4].min() > 0
    assert compare_pixels(stats(noisy), stats(flat))[:, 4].max() < 0


def test_save_and_load_round_trip(tmp_path):
    model = toy_student(seed=1).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = Student.from_pretrained(tmp_path / "m")
    assert loaded.cfg == model.cfg and not loaded.training
    s, e, t = inputs(model.cfg)
    for a, b in zip(tensors(model(s, e, t)), tensors(loaded(s, e, t))):
        assert torch.equal(a, b)


def test_loading_mismatched_weights_names_the_keys(tmp_path):
    toy_student().save_pretrained(tmp_path / "m")
    import json

    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["student"]["embed_dim"] = 64  # same layout, other width → every weight mis-shaped
    meta["student"]["depth"] = 2  # and one block missing
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"missing: .*blocks\.1.*mis-shaped"):
        Student.from_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="config.json: missing"):
        Student.from_pretrained(tmp_path / "nowhere")


def test_reward_weights_retune_without_retraining():
    model = toy_student().eval()
    s, e, t = inputs(model.cfg)
    before = model(s, e, t)
    w = RewardWeights(w_if=0.9, w_cons=0.1, alpha=0.5)
    model.set_reward_weights(w)
    after = model(s, e, t)
    assert torch.equal(before.subscores, after.subscores)
    expected = reward_from_subscores(before.subscores.detach().numpy().astype(np.float64), w)
    assert np.allclose(after.reward.detach().numpy(), expected, atol=1e-5)
    assert model.cfg.reward_weights == asdict(w)  # saved with the model


def test_pretrained_backbone_from_local_safetensors(tmp_path):
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    # A "ViT-Ti-like" donor of the toy width at another resolution and patch size: pos_embed and patch_embed
    # must be resampled, the classifier head dropped.
    donor = VisionTransformer(
        img_size=64, patch_size=8, embed_dim=32, depth=1, num_heads=2, mlp_ratio=3.0, num_classes=10
    )
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, tmp_path / "vit.safetensors")
    model = toy_student()
    report = model.load_pretrained_backbone(tmp_path / "vit.safetensors")
    assert "pos_embed" in report["resampled"] and "patch_embed.proj.weight" in report["resampled"]
    assert "head.weight" in report["skipped"] and report["missing"] == []
    assert torch.equal(model.encoder.vit.blocks[0].attn.qkv.weight, donor.blocks[0].attn.qkv.weight)
    assert model.encoder.vit.pos_embed.shape == (1, 1 + 9, 32)

    wide = VisionTransformer(img_size=48, patch_size=16, embed_dim=64, depth=1, num_heads=2, mlp_ratio=3.0, num_classes=0)
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, tmp_path / "wide.safetensors")
    with pytest.raises(ValueError, match="pick the preset or overrides"):
        toy_student().load_pretrained_backbone(tmp_path / "wide.safetensors")
    (tmp_path / "vit.pth").write_bytes(b"not read")
    with pytest.raises(ValueError, match="only .safetensors"):
        toy_student().load_pretrained_backbone(tmp_path / "vit.pth")


def test_build_student_from_preset_name():
    model = build_student("nano", **TOY_STUDENT)
    assert model.cfg.img_size == 48 and model.num_params() > 0
    assert model.kernel_backend in ("auto", "triton", "reference")


def test_forward_exports_without_value_dependent_control_flow():
    """torch.export refuses Python branches on tensor values: this is the ONNX-readiness check (the ONNX
    translation itself is tested by the export issue)."""
    model = toy_student().eval()
    s, e, t = inputs(model.cfg, b=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (s, e, t))
    for a, b in zip(tensors(program.module()(s, e, t)), tensors(model(s, e, t))):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("floor", [0.0, 0.5])  # an untrained mask head predicts ~0.5 everywhere
def test_region_floor_zeroes_small_weights_of_both_paths(floor):
    """Weights under `region_floor` reach the attention kernel as exact zeros (so it can skip those keys); without a
    floor the soft weights pass through unchanged and are never 0."""
    from spatialreward.student import model as model_module

    model = toy_student(region_floor=floor).eval()
    seen = {}
    both = model_module.attend_regions

    def spy(paths, queries, keys, key_weights):
        seen["attend_inside"], seen["attend_outside"] = (w.detach() for w in key_weights)
        return both(paths, queries, keys, key_weights)

    s, e, t = inputs(model.cfg, b=3)
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(model_module, "attend_regions", spy)
        model(s, e, t)
    inside, outside = seen["attend_inside"], seen["attend_outside"]
    if floor == 0.0:
        assert torch.all(inside > 0) and torch.allclose(inside + outside, torch.ones_like(inside))
    else:
        for w in (inside, outside):
            assert torch.all((w == 0) | (w >= floor))
        assert (inside == 0).any() or (outside == 0).any()  # some keys really are dropped
        kept = (inside > 0) & (outside > 0)
        assert torch.allclose((inside + outside)[kept], torch.ones_like(inside[kept]))


def test_presets_default_region_floor():
    assert preset_config("nano").region_floor == 0.05
    assert StudentConfig().region_floor == 0.0  # configs saved before the field load unchanged


def test_save_pretrained_writes_weights_and_config_as_one_unit(tmp_path, monkeypatch):
    from spatialreward.student import checkpoint

    a, b = toy_student(seed=1), toy_student(seed=2)
    real_write_json = checkpoint.atomic_write_json

    def crash(*args, **kwargs):  # the process dies after the weights and before the config
        raise KeyboardInterrupt

    # A new folder appears whole or not at all.
    monkeypatch.setattr(checkpoint, "atomic_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        a.save_pretrained(tmp_path / "new")
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []

    # In an existing folder the config names its weights' hash: a torn pair is refused, never loaded as a mix.
    monkeypatch.setattr(checkpoint, "atomic_write_json", real_write_json)
    a.save_pretrained(tmp_path / "m")
    monkeypatch.setattr(checkpoint, "atomic_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        b.save_pretrained(tmp_path / "m")  # b's weights land, a's config stays
    with pytest.raises(ValueError, match="different saves"):
        Student.from_pretrained(tmp_path / "m")
    monkeypatch.setattr(checkpoint, "atomic_write_json", real_write_json)
    b.save_pretrained(tmp_path / "m")
    loaded = Student.from_pretrained(tmp_path / "m")
    assert all(torch.equal(x, y) for x, y in zip(loaded.state_dict().values(), b.state_dict().values()))


def test_non_finite_weights_are_refused_at_load(tmp_path):
    model = toy_student()
    with torch.no_grad():
        model.score_head.mlp[1].weight[0, 0] = float("nan")
        model.seg_head.mlp[0].bias[0] = float("inf")
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"2 tensor\(s\) hold NaN or inf") as err:
        Student.from_pretrained(tmp_path / "m")
    assert "score_head.mlp.1.weight" in str(err.value) and "seg_head.mlp.0.bias" in str(err.value)


def test_quality_map_sees_what_the_vit_input_cannot():
    """With ``quality_scale=2`` the ViT sees the input average-pooled by 2, so a ±δ checkerboard of one-pixel
    period vanishes from its input exactly. The full-resolution quality map must still see it and change the
    sub-scores; without a quality map (and no pixel statistics) the same edit is invisible to the model."""
    torch.manual_seed(0)
    model = toy_student(quality_scale=2, pixel_stats=False).eval()
    cfg = model.cfg
    assert cfg.input_size == 2 * cfg.img_size and cfg.quality_grid == (cfg.input_size // 16,) * 2
    g = torch.Generator().manual_seed(1)
    side = cfg.input_size
    s = 0.3 + 0.4 * torch.rand(2, 3, side // 2, side // 2, generator=g).repeat_interleave(2, 2).repeat_interleave(2, 3)
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    checker = ((yy + xx) % 2).float() * 2 - 1  # ±1, one-pixel period
    e = s + 0.15 * checker
    t = torch.nn.functional.normalize(torch.randn(2, cfg.text_dim, generator=g), dim=1)
    enc_s, enc_e = model.encode_images(s), model.encode_images(e)
    assert torch.allclose(enc_s.tokens, enc_e.tokens, atol=1e-5)  # the ViT's input is identical
    assert enc_e.quality.shape == (2, 2 * cfg.quality_dim, *cfg.quality_grid)
    assert not torch.allclose(enc_s.quality, enc_e.quality, atol=1e-3)
    seen = []
    model.quality_global_proj.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    clean, degraded = model(s, s, t), model(s, e, t)
    assert (seen[0] - seen[1]).abs().max() > 2e-4  # the score head's quality evidence moved (random init: small)
    assert (clean.subscores - degraded.subscores).abs().max() > 5e-5  # (a random head: small, far above noise)
    # The quality path is trained: gradients reach its full-resolution convolution.
    degraded.subscores.sum().backward()
    assert model.quality.net[0].weight.grad.abs().sum() > 0

    blind = toy_student(pixel_stats=False).eval()  # no quality map: input = ViT input = img_size
    s_low, e_low = torch.nn.functional.avg_pool2d(s, 2), torch.nn.functional.avg_pool2d(e, 2)
    assert (blind(s_low, s_low, t).subscores - blind(s_low, e_low, t).subscores).abs().max() < 2e-6


def test_quality_tokens_path_equals_forward_and_saves():
    model = toy_student(quality_scale=2).eval()
    g = torch.Generator().manual_seed(2)
    side = model.cfg.input_size
    s, e = torch.rand(3, 3, side, side, generator=g), torch.rand(3, 3, side, side, generator=g)
    t = torch.nn.functional.normalize(torch.randn(3, model.cfg.text_dim, generator=g), dim=1)
    full = model(s[:1], e, t, source_index=torch.zeros(3, dtype=torch.long))
    enc = model.encode_images(torch.cat([s[:1], e]))
    split = model.forward_tokens(enc.select(torch.zeros(3, dtype=torch.long)), enc.select(slice(1, None)), t)
    for a, b in zip(tensors(full), tensors(split)):
        assert torch.allclose(a, b, atol=1e-6)


def test_fusion_reads_only_the_instruction_row_with_the_full_blocks_result():
    """`block_first_row` is `block(x)[:, :1]`: the fusion's other rows were never read, so skipping them is exact."""
    from timm.models.vision_transformer import Block

    from spatialreward.student.model import block_first_row

    torch.manual_seed(0)
    block = Block(32, 4, mlp_ratio=2.0).eval()
    x = torch.randn(3, 10, 32)
    with torch.no_grad():
        assert torch.allclose(block_first_row(block, x), block(x)[:, :1], atol=1e-6)
    model = toy_student(fusion_depth=2).eval()  # the earlier blocks still run on every row
    s, e, t = inputs(model.cfg, b=2)
    with torch.no_grad():
        out = model(s, e, t)
        enc = model.encode_images(torch.cat([s, e]))
        change, _ = model.locate_change(enc.select(slice(0, 2)), enc.select(slice(2, None)))
        full = model.fusion(torch.cat([model.text_proj(t).unsqueeze(1), change], dim=1))[:, 0]
        fast = model.fusion[-1]
        x = model.fusion[0](torch.cat([model.text_proj(t).unsqueeze(1), change], dim=1))
        assert torch.allclose(block_first_row(fast, x)[:, 0], full, atol=1e-5)
    assert torch.isfinite(out.reward).all()


def test_pooled_cross_mlp_runs_the_mlp_on_the_two_pooled_rows():
    """``cross_mlp='pooled'``: the MLP sees [instruction row, weighted mean of the token rows] after the attention
    (not every row before pooling); an empty region pools to zeros and gives only the MLP's response to them."""
    from spatialreward.student.model import RegionCrossAttention, weighted_mean

    torch.manual_seed(0)
    tokens_mode, pooled_mode = RegionCrossAttention(32, 4), RegionCrossAttention(32, 4, pooled_mlp=True)
    pooled_mode.load_state_dict(tokens_mode.state_dict())  # the same weights: only where the MLP runs differs
    q, k = torch.randn(2, 5, 32), torch.randn(2, 4, 32)
    w = torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    with torch.no_grad():
        a, b = tokens_mode(q, k, w), pooled_mode(q, k, w)
        x = q + tokens_mode.proj(  # the attention part, shared by both modes
            torch.nn.functional.scaled_dot_product_attention(
                tokens_mode.q(tokens_mode.norm_q(q)).view(2, 5, 4, 8).transpose(1, 2),
                *tokens_mode.kv(tokens_mode.norm_kv(k)).view(2, 4, 2, 4, 8).permute(2, 0, 3, 1, 4),
                attn_mask=torch.log(w[:, None, None, :].clamp_min(1e-30)),
            ).transpose(1, 2).reshape(2, 5, 32))
        pooled = torch.stack([x[:, 0], weighted_mean(x[:, 1:], w)], dim=1)
        assert torch.allclose(b[0], (pooled + pooled_mode.mlp(pooled_mode.norm_mlp(pooled)))[0], atol=1e-5)
        full = x + tokens_mode.mlp(tokens_mode.norm_mlp(x))
        assert torch.allclose(a[0], torch.stack([full[0, 0], weighted_mean(full[:, 1:], w)[0]]), atol=1e-5)
    assert a.shape == b.shape == (2, 2, 32)
    with torch.no_grad():  # an empty region: the pooled row is 0, so the output is the MLP's response to 0
        assert torch.allclose(b[1, 1], pooled_mode.mlp(pooled_mode.norm_mlp(torch.zeros(1, 32)))[0], atol=1e-6)


@pytest.mark.parametrize("cross_mlp", ["pooled", "tokens"])
def test_attend_regions_is_the_two_paths_run_apart(cross_mlp):
    """Both paths in one pass (`attend_regions`) give each path's own output and the same gradients, including
    for an empty region on either side."""
    from spatialreward.student.model import RegionCrossAttention, attend_regions

    torch.manual_seed(0)
    paths = tuple(RegionCrossAttention(32, 4, pooled_mlp=cross_mlp == "pooled") for _ in range(2))
    for module in paths:
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.3)  # non-trivial LayerNorm affines: folding them must be exact
    queries, keys = torch.randn(3, 6, 32, requires_grad=True), torch.randn(3, 5, 32)
    inside = torch.rand(3, 5)
    inside[1] = 0.0  # an empty region
    outside = 1.0 - inside
    outside[2] = 0.0
    apart = (paths[0](queries, keys, inside), paths[1](queries, keys, outside))
    grads_apart = torch.autograd.grad(sum((o * o).sum() for o in apart), [queries, *paths[0].parameters()])
    together = attend_regions(paths, queries, keys, (inside, outside))
    grads_together = torch.autograd.grad(sum((o * o).sum() for o in together), [queries, *paths[0].parameters()])
    for a, b in zip(apart, together):
        assert a.shape == b.shape == (3, 2, 32) and torch.allclose(a, b, atol=1e-5)
    for a, b in zip(grads_apart, grads_together):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="same shape"):
        attend_regions((paths[0], RegionCrossAttention(32, 2)), queries, keys, (inside, outside))


def test_light_decoder_options_validate_and_train():
    with pytest.raises(ValueError, match="cross_mlp='rows' must be 'tokens' or 'pooled'"):
        preset_config("nano", cross_mlp="rows")
    model = toy_student(cross_mlp="pooled", change_mlp_ratio=1.0, change_depth=0)
    assert model.change.fuse.fc1.out_features == model.cfg.embed_dim and len(model.change.blocks) == 0
    s, e, t = inputs(model.cfg, b=2)
    model(s, e, t).reward.sum().backward()
    assert model.attend_inside.mlp.fc1.weight.grad is not None


def test_pixel_detail_energies_see_what_they_are_for():
    """Each detail energy moves for its kind of degradation (channels: R, G, B means, then fine, chroma, mid, peak)."""
    from spatialreward.student.model import PixelStats

    stats = PixelStats(cell=8, detail=True)
    g = torch.Generator().manual_seed(0)
    smooth = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32).clone()  # a ramp: texture at 4 px
    smooth = smooth + 0.2 * torch.sin(torch.arange(32.0) / 3).view(1, 1, 32, 1)
    base = stats(smooth)
    fine, chroma, mid, peak = 3, 4, 5, 6
    grey_noise = stats(smooth + 0.05 * torch.randn(1, 1, 32, 32, generator=g))
    assert (grey_noise[:, fine] > 1.5 * base[:, fine]).all()
    assert (grey_noise[:, chroma] - base[:, chroma]).abs().max() < 1e-3  # the same in every channel: no chroma
    colour_noise = stats(smooth + 0.05 * torch.randn(1, 3, 32, 32, generator=g))
    assert (colour_noise[:, chroma] > base[:, chroma] + 0.01).all()
    blurred = stats(torch.nn.functional.avg_pool2d(smooth, 4).repeat_interleave(4, 2).repeat_interleave(4, 3))
    assert (blurred[:, mid] < base[:, mid]).all() and (blurred[:, fine] < 1e-3).all()
    spot = smooth.clone()
    spot[..., 9:11, 9:11] += 0.5  # one 2×2 defect: the peak sees it, the cell's mean dilutes it
    out = stats(spot)
    assert out[0, peak, 1, 1] > 2 * out[0, fine, 1, 1]
    with pytest.raises(ValueError, match="multiple of 4"):
        PixelStats(cell=6, detail=True)


def test_pixel_detail_student_reads_the_region_and_needs_pixel_stats():
    with pytest.raises(ValueError, match="set pixel_stats=True"):
        preset_config("nano", pixel_detail=True, pixel_stats=False)
    model = toy_student(pixel_stats=True, pixel_detail=True, quality_scale=2, quality_dim=0)
    assert model.quality is None and model.cfg.input_size == 96 and model.pixel_stats.channels == 7
    s, e, t = inputs(model.cfg, b=2)
    assert s.shape[-1] == 96
    out = model(s, e, t)
    out.reward.sum().backward()
    assert model.detail_proj.fc1.weight.grad.abs().sum() > 0


def test_change_fuse_folds_the_difference_block_exactly():
    """`ChangeFeatures` multiplies [e, s, |e − s|, extra] by a weight with the e − s block folded into e's and s's:
    the same function and the same gradients as timm's `Mlp` on the five-part input it was trained on."""
    from spatialreward.student.model import ChangeFeatures

    torch.manual_seed(0)
    change = ChangeFeatures(16, depth=0, num_heads=2, extra=3, mlp_ratio=1.0)
    s, e, x = (torch.randn(2, 5, n, requires_grad=True) for n in (16, 16, 3))
    folded = change(s, e, x)
    unfolded = change.norm(change.fuse(torch.cat([e, s, e - s, (e - s).abs(), x], dim=-1)))
    assert torch.allclose(folded, unfolded, atol=1e-5)
    grads = torch.autograd.grad(folded.square().sum(), [change.fuse.fc1.weight, s, e])
    reference = torch.autograd.grad(unfolded.square().sum(), [change.fuse.fc1.weight, s, e])
    for a, b in zip(grads, reference):
        assert torch.allclose(a, b, atol=1e-4)


def test_region_summary_is_the_weighted_means_and_peak():
    """`region_summary` = [`weighted_mean` inside, outside, max] of each channel, computed channel-first."""
    from spatialreward.student.model import region_summary, weighted_mean

    torch.manual_seed(0)
    maps, region = torch.randn(3, 5, 4, 6), torch.rand(3, 4, 6)
    region[2] = 0.0  # an empty region: its inside mean is 0, as weighted_mean gives
    cells, m = maps.flatten(2).transpose(1, 2), region.flatten(1)
    expected = torch.cat([weighted_mean(cells, m), weighted_mean(cells, 1 - m), cells.amax(1)], dim=1)
    assert torch.allclose(region_summary(maps, region), expected, atol=1e-6)


def test_block_mean_is_the_2x2_average_pool():
    """`block_mean` (strided adds in eager) equals `avg_pool2d(x, 2)` and `avg_pool2d(x², 2)`."""
    from spatialreward.student.model import block_mean

    x = torch.rand(2, 3, 8, 12)
    assert torch.allclose(block_mean(x), torch.nn.functional.avg_pool2d(x, 2), atol=1e-6)
    assert torch.allclose(block_mean(x, squared=True), torch.nn.functional.avg_pool2d(x * x, 2), atol=1e-6)
