"""The dual-stream ViT student: (source, edited, instruction embedding) → sub-scores, reward, edit mask, presence.

It is a compact copy of SpatialReward's (arXiv 2602.07458) "anchored verification": first find *where* the image
changed, then check the change against the instruction inside that region and check preservation outside it.
Read top to bottom, nanoGPT-style:

    StreamEncoder        one timm ViT shared by both images, run as one batched pass      [2B, P+N, C]
    QualityEncoder       (optional) a small CNN over the full-resolution image: the evidence for naturalness
                         and artifacts that the ViT's downsampled input averages away   [2B, 2Cq, H/16, W/16]
    ChangeFeatures       per-token comparison of the streams                                [B, N, C]
    SegmentationHead     edit-mask logits on the token grid (optionally u×u cells a token)  [B, g·u, g·u]
    RegionCrossAttention edited tokens + instruction token attend to source tokens, weighted by the region mask
                         (inside path) or its complement (outside path); `spatialreward.kernels.region_attention`;
                         `attend_regions` runs both paths as one pass
    ScoreHead            4 sub-scores bounded to 0–25, each with a log-variance
    StudentConfig        every knob, with help text
    Student              forward(), encode_images()/forward_tokens() for cached sources, from_pretrained, ...

Imports point one way: this file uses `checkpoint.py` (the folder format behind `save_pretrained` /
`from_pretrained`) and `presets.py` uses this file (`build_student`, the builder from a preset name, lives there).

Region features are pooled with `spatialreward.kernels.roi_align_tokens` over one box per edit: the bounding box
of the predicted mask at inference, of the teacher's boxes when the distiller passes them (teacher forcing). The
reward is the shared formula over the predicted sub-scores (`spatialreward.formula`), so its weights can be
re-tuned with `set_reward_weights` without retraining. `forward` has no Python branches on tensor values, so the
whole network traces to ONNX; only `is None` checks on optional arguments pick the graph at trace time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Block, VisionTransformer

from spatialreward.formula import DEFAULT_WEIGHTS, RewardWeights, reward_from_subscores
from spatialreward.kernels import get_backend, region_attention, roi_align_tokens
from spatialreward.student import checkpoint
from spatialreward.student.novelty import NoveltyDetector, load_novelty
from spatialreward.student.text import MINILM_DIM, MINILM_NAME
from spatialreward.types import BOX_SCALE, SCORE_MAX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYOUT_CELLS = 3  # instructions point at a 3×3 layout (upper-left … lower-right)
GEOMETRY_DIM = 4 + LAYOUT_CELLS * LAYOUT_CELLS  # region box (0–1) + mask share per layout cell


# ---------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------


class StreamEncoder(nn.Module):
    """A timm ViT shared by the source and the edited image. Input: float RGB in 0–1, ``[B, 3, S, S]``."""

    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.vit = VisionTransformer(
            img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
            num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, num_classes=0, global_pool="", class_token=True,
            drop_path_rate=cfg.drop_path_rate,
        )
        self.num_prefix_tokens = self.vit.num_prefix_tokens
        # Normalisation lives inside the network so exported graphs take plain 0–1 images.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        return self.vit.forward_features(x)  # [B, P+N, C], P prefix (class) tokens first


class PixelStats(nn.Module):
    """Per-image pixel statistics on the mask grid (cells of ``patch/u`` pixels): mean colour and the RMS of a
    high-pass residual. Compared across the streams they place a change finer than a token and expose
    degradations that a 16-px patch embedding averages away (noise raises the high-pass energy, blur lowers it,
    block artifacts add edges). Fixed filters, no weights: a few multiply-adds per pixel.

    ``detail`` measures four energies as local variances (Haar-style, average pools only: a depthwise Gaussian at
    full resolution cost more than the whole network's step on CPU): the variance inside 2×2-pixel blocks (noise,
    ringing, checkerboards, jaggies), of those blocks' means inside 4×4 blocks (blur and smear remove it, halos add
    it), the chroma part of the 2×2 variance (colour bleeding, chroma shift) and the cell's *peak* 2×2 variance (a
    small defect is not diluted by the cell's mean). None names an artifact family. They are worth it only where
    artifacts still exist: full resolution, i.e. ``quality_scale >= 2`` for `nano`.
    """

    def __init__(self, cell: int, detail: bool = False):
        super().__init__()
        if detail and cell % 4:
            raise ValueError(f"pixel_detail needs cells of a multiple of 4 pixels, not {cell}")
        self.cell, self.detail = cell, detail
        self.energies = 4 if detail else 1
        self.channels = 3 + self.energies  # R, G, B means + energies
        if not detail:  # the detail energies use average pools only
            g = torch.exp(-0.5 * torch.arange(-2.0, 3.0).pow(2))  # Gaussian, sigma 1 px
            kernel = (g[:, None] * g[None, :]) / g.sum() ** 2
            self.register_buffer("blur", kernel.expand(3, 1, 5, 5).clone(), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # [B, 3, S, S] in 0–1
        if self.detail:
            return self._detail(images)
        smooth = F.conv2d(F.pad(images, (2, 2, 2, 2), mode="replicate"), self.blur, groups=3)
        energy = (images - smooth).pow(2).mean(1, keepdim=True)  # [B, 1, S, S]
        stats = F.avg_pool2d(torch.cat([images, energy], dim=1), self.cell)  # [B, 4, S/cell, S/cell]
        return torch.cat([stats[:, :3], stats[:, 3:].sqrt()], dim=1)

    def _detail(self, images: torch.Tensor) -> torch.Tensor:
        # 2×2-block moments by strided adds (`block_mean`): no full-resolution temporary, 3× faster than pooling
        # x and x² on CPU, where allocating and filling those tensors was most of the cost.
        luma = images.mean(1, keepdim=True)  # [B, 1, S, S]
        rgb2 = block_mean(images)  # [B, 3, S/2, S/2]
        var_rgb = (block_mean(images, squared=True) - rgb2 * rgb2).clamp_min(0)  # variance inside 2×2 blocks
        luma2 = rgb2.mean(1, keepdim=True)  # the block mean of luma
        var_luma = (block_mean(luma, squared=True) - luma2 * luma2).clamp_min(0)
        fine = var_rgb.mean(1, keepdim=True)
        fine_chroma = (fine - var_luma).clamp_min(0)  # mean over channels of var(x_c − luma) = mean var − var(luma)
        mean4 = F.avg_pool2d(rgb2, 2)
        mid = (F.avg_pool2d(rgb2 * rgb2, 2) - mean4 * mean4).clamp_min(0).mean(1, keepdim=True)  # [B, 1, S/4, S/4]
        half = self.cell // 2
        stats = torch.cat([F.avg_pool2d(torch.cat([rgb2, fine, fine_chroma], dim=1), half),
                           F.avg_pool2d(mid, self.cell // 4), F.max_pool2d(fine, half)], dim=1)  # [B, 7, h, w]
        return torch.cat([stats[:, :3], stats[:, 3:].sqrt()], dim=1)  # colour means, then the four RMS energies


def block_mean(x: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """Mean of ``x`` (or of ``x²``) over 2×2 pixel blocks, ``[B, C, H, W]`` → ``[B, C, H/2, W/2]``: `avg_pool2d(x, 2)`
    as two strided adds, the first on views of ``x`` (pairs of rows), so no full-resolution tensor is made. An
    exported graph keeps ``AveragePool``, which ONNX Runtime runs faster than strided slices (measured both ways)."""
    if torch.onnx.is_in_onnx_export():
        return F.avg_pool2d(x * x if squared else x, 2)
    top, bottom = x[..., 0::2, :], x[..., 1::2, :]
    rows = top.square().addcmul_(bottom, bottom) if squared else top + bottom  # [..., H/2, W]
    return (rows[..., 0::2] + rows[..., 1::2]) * 0.25


def compare_pixels(src: torch.Tensor, edt: torch.Tensor) -> torch.Tensor:
    """Cross-stream comparison of `PixelStats` maps ``[B, 3+k, h, w]`` → ``[B, 4+3k, h, w]``: colour change (3),
    its magnitude, the log ratio of each energy (blur < 0 < noise) and both images' energies."""
    colour = edt[:, :3] - src[:, :3]
    log_ratio = torch.log(edt[:, 3:] + 1e-3) - torch.log(src[:, 3:] + 1e-3)
    return torch.cat([colour, colour.abs().mean(1, keepdim=True), 0.5 * log_ratio, edt[:, 3:], src[:, 3:]], dim=1)


def pixel_compare_channels(energies: int) -> int:
    """Channels of `compare_pixels` for `PixelStats` maps with ``energies`` energy channels."""
    return 4 + 3 * energies


class QualityEncoder(nn.Module):
    """Full-resolution evidence for the quality sub-scores: ``[B, 3, H, W]`` in 0–1 → ``[B, 2·Cq, H/16, W/16]``.

    JPEG blocking and ringing, noise, checkerboards, jaggies and halos live at one or two pixels; resizing to the
    ViT's side (112 px for `nano`) averages them away, so the naturalness / artifacts sub-scores had no evidence
    to judge them from. The first convolution runs at full resolution; its detector responses at 1/4 resolution
    are then summarised per 4×4 cell by their mean (how much of a cell is affected) and their max (a small defect
    is not diluted), so a RoI crop of the map (`Student.forward_tokens`) sees every pixel of the region. About
    40 MMAC per 224-px image, next to ~100 MMAC for `nano`'s ViT.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.GELU(),  # full resolution: single-pixel patterns
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(16, dim, 3, stride=2, padding=1), nn.GELU(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        responses = self.net(images - 0.5)  # [B, Cq, H/4, W/4]
        return torch.cat([F.avg_pool2d(responses, 4), F.max_pool2d(responses, 4)], dim=1)  # [B, 2Cq, H/16, W/16]


class ImageEncoding(NamedTuple):
    """What one image contributes before the streams meet: backbone ``tokens [B, P+N, C]``, `PixelStats`
    ``pixels [B, 4, gh·u, gw·u]`` and the `QualityEncoder` map ``quality [B, 2Cq, H/16, W/16]`` (0 channels when the
    config turns either off). Cache it for a shared source."""

    tokens: torch.Tensor
    pixels: torch.Tensor
    quality: torch.Tensor

    def select(self, index) -> ImageEncoding:
        """Rows ``index`` (a slice or an index tensor) of every part."""
        return ImageEncoding(self.tokens[index], self.pixels[index], self.quality[index])


class PreparedImages(NamedTuple):
    """The weight-free part of `Student.encode_images`: the backbone's (pooled) input ``backbone [B, 3, s, s]`` in 0–1
    and the `PixelStats` ``pixels [B, k, gh·u, gw·u]``. Training images never change, so the distiller computes it
    once per image (`EditData.prepare`) instead of at every step, where it was about a fifth of a `nano` step on
    the CPU. Only students without a learned full-resolution part have one (`Student.prepare_images`)."""

    backbone: torch.Tensor
    pixels: torch.Tensor

    def to(self, *args, **kwargs) -> PreparedImages:
        return PreparedImages(*(t.to(*args, **kwargs) for t in self))


def _rows(images: torch.Tensor | PreparedImages) -> int:
    return (images.backbone if isinstance(images, PreparedImages) else images).shape[0]


def _cat_rows(a: torch.Tensor | PreparedImages, b: torch.Tensor | PreparedImages) -> torch.Tensor | PreparedImages:
    if isinstance(a, PreparedImages) != isinstance(b, PreparedImages):
        raise TypeError("source and edited must both be images or both be PreparedImages")
    if isinstance(a, PreparedImages):
        return PreparedImages(*(torch.cat(pair, dim=0) for pair in zip(a, b)))
    return torch.cat([a, b], dim=0)


class ChangeFeatures(nn.Module):
    """Per-token comparison of the streams, ``[e, s, e − s, |e − s|] → C``, then a little spatial context.

    Identical regions give identical tokens up to the ViT's global mixing, so ``e − s`` is near zero there; the
    transformer blocks let a token see its neighbours (an edit is a coherent blob, not salt-and-pepper).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, extra: int = 0, mlp_ratio: float = 2.0):
        super().__init__()
        self.fuse = Mlp(4 * dim + extra, hidden_features=int(mlp_ratio * dim), out_features=dim)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio=2.0) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, src: torch.Tensor, edt: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        # `fuse` reads [e, s, e − s, |e − s|, extra] (`extra` [B, N, k]: per-token pixel comparisons, k may be 0).
        # Its first layer is linear in e and s, so the e − s block folds into theirs, (W_e + W_d)·e + (W_s − W_d)·s:
        # the same function of the same trained parameters with one C-wide block less to multiply per token.
        mlp, c = self.fuse, edt.shape[-1]
        w_e, w_s, w_d, w_rest = mlp.fc1.weight.split([c, c, c, mlp.fc1.in_features - 3 * c], dim=1)
        x = F.linear(torch.cat([edt, src, (edt - src).abs(), extra], dim=-1),
                     torch.cat([w_e + w_d, w_s - w_d, w_rest], dim=1), mlp.fc1.bias)
        x = mlp.drop2(mlp.fc2(mlp.norm(mlp.drop1(mlp.act(x)))))  # the rest of timm's `Mlp.forward`
        return self.norm(self.blocks(x))  # [B, N, C]


class SegmentationHead(nn.Module):
    """Edit-mask logits on the token grid; each token predicts ``u×u`` sub-cells (pixel-shuffle, as in SETR)."""

    def __init__(self, dim: int, subdivision: int, pixel_channels: int = 0):
        super().__init__()
        self.u = subdivision
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, subdivision * subdivision))
        # Pixel comparisons on the same fine grid sharpen the edges (3×3 context, then one logit per cell).
        self.pixel = (
            nn.Sequential(nn.Conv2d(pixel_channels, 16, 3, padding=1), nn.GELU(), nn.Conv2d(16, 1, 1))
            if pixel_channels else None
        )

    def forward(self, change: torch.Tensor, grid: tuple[int, int], pixels: torch.Tensor) -> torch.Tensor:
        b, (gh, gw), u = change.shape[0], grid, self.u
        logits = self.mlp(change)  # [B, N, u·u]
        logits = logits.view(b, gh, gw, u, u).permute(0, 1, 3, 2, 4)  # [B, gh, u, gw, u]
        logits = logits.reshape(b, gh * u, gw * u)  # [B, gh·u, gw·u]
        if self.pixel is not None:
            logits = logits + self.pixel(pixels)[:, 0]
        return logits


class RegionCrossAttention(nn.Module):
    """Queries ``[instruction; edited tokens]`` attend to source tokens with per-key weights in [0, 1] (the region
    mask or its complement) → ``[B, 2, C]``: the instruction row and the weight-pooled mean of the token rows.

    Weights enter as ``w_j · exp(s_j)`` (`spatialreward.kernels.region_attention`), so a soft mask works and an
    empty region yields exact zeros, i.e. the path contributes only its bias. ``pooled_mlp`` runs the MLP on the
    two returned rows instead of on all ``1 + N`` query rows before pooling: the same shape of evidence for ~1/25
    of the MLP's cost, the part of a group's scoring that the cached source encoding cannot save.

    ``forward`` runs one path alone and is the plain reference; the student runs its inside and outside paths
    together through `attend_regions`, which is tested against it.
    """

    def __init__(self, dim: int, num_heads: int, pooled_mlp: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} must be divisible by cross_heads={num_heads}")
        self.num_heads = num_heads
        self.pooled_mlp = pooled_mlp
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_features=2 * dim)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, key_weights: torch.Tensor) -> torch.Tensor:
        b, lq, c = queries.shape
        lk, h = keys.shape[1], self.num_heads
        q = self.q(self.norm_q(queries)).view(b, lq, h, c // h).transpose(1, 2)  # [B, H, Lq, D]
        kv = self.kv(self.norm_kv(keys)).view(b, lk, 2, h, c // h).permute(2, 0, 3, 1, 4)  # [2, B, H, Lk, D]
        out = region_attention(q, kv[0], kv[1], key_weights).transpose(1, 2).reshape(b, lq, c)  # [B, Lq, C]
        if not self.pooled_mlp:
            x = queries + self.proj(out)
            return pool_rows(x + self.mlp(self.norm_mlp(x)), key_weights)  # [B, 2, C]
        # `proj` is affine, so pooling commutes with it: project the two pooled rows, not all 1 + N (exact; the
        # bias is scaled by each row's Σw / (Σw + ε), as pooling the projected rows would).
        share = pool_rows(out.new_ones(b, lq, 1), key_weights)  # [B, 2, 1]: 1, then Σw / (Σw + ε)
        x = pool_rows(queries, key_weights) + F.linear(pool_rows(out, key_weights), self.proj.weight)
        x = x + share * self.proj.bias  # [B, 2, C]
        return x + self.mlp(self.norm_mlp(x))


def _folded_linear(norm: nn.LayerNorm, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """``linear(norm(x))`` as ``W'·x̂ + b'`` on the affine-free normalised ``x̂``, with ``W' = W·diag(γ)`` and
    ``b' = W·β + b``.

    Two paths that normalise the same rows then differ only in their folded weights, so one LayerNorm and one
    matmul with both paths' outputs side by side serve both (`attend_regions`)."""
    return linear.weight * norm.weight, linear.weight @ norm.bias + linear.bias


def _stacked_mlp(paths: tuple[RegionCrossAttention, ...], x: torch.Tensor) -> torch.Tensor:
    """``x + path.mlp(path.norm_mlp(x))`` for each path at once: ``x [P, ..., C]`` → ``[P, ..., C]``, one batched
    matmul per layer with the paths' weights stacked (each path's timm `Mlp`: fc1, GELU, fc2; dropout is 0)."""
    p, c = x.shape[0], x.shape[-1]
    rows = x.reshape(p, -1, c)  # [P, R, C]

    def stacked(get):  # [P, *shape]: one parameter of every path
        return torch.stack([get(a) for a in paths])

    h = F.layer_norm(rows, (c,), eps=paths[0].norm_mlp.eps)
    h = h * stacked(lambda a: a.norm_mlp.weight)[:, None] + stacked(lambda a: a.norm_mlp.bias)[:, None]
    h = h @ stacked(lambda a: a.mlp.fc1.weight).transpose(1, 2) + stacked(lambda a: a.mlp.fc1.bias)[:, None]
    h = paths[0].mlp.act(h)
    h = h @ stacked(lambda a: a.mlp.fc2.weight).transpose(1, 2) + stacked(lambda a: a.mlp.fc2.bias)[:, None]
    return (rows + h).reshape(x.shape)


def attend_regions(
    paths: tuple[RegionCrossAttention, RegionCrossAttention],
    queries: torch.Tensor,
    keys: torch.Tensor,
    key_weights: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(paths[0](queries, keys, key_weights[0]), paths[1](queries, keys, key_weights[1]))`` in one pass.

    The inside and outside paths read the same queries and keys and differ only in weights and key weights, so
    each step runs once for both: one LayerNorm of the queries and one of the keys (the paths' affines folded into
    their projections), one matmul for both paths' q (and one for k, v), one `region_attention` call over the
    paths stacked on the batch axis, one batched matmul per projection / MLP layer. The same function of the same
    parameters (tested to 1e-5) with about half the operators: the exported score graph is many small ops, each
    with a fixed cost on a CPU (`README`, speed on the CPU box).
    """
    a, o = paths
    if a.num_heads != o.num_heads or a.pooled_mlp != o.pooled_mlp:
        raise ValueError("attend_regions needs two paths of the same shape (heads, cross_mlp)")
    b, lq, c = queries.shape
    lk, h = keys.shape[1], a.num_heads
    (wq_a, bq_a), (wq_o, bq_o) = _folded_linear(a.norm_q, a.q), _folded_linear(o.norm_q, o.q)
    (wkv_a, bkv_a), (wkv_o, bkv_o) = _folded_linear(a.norm_kv, a.kv), _folded_linear(o.norm_kv, o.kv)
    q = F.linear(F.layer_norm(queries, (c,), eps=a.norm_q.eps), torch.cat([wq_a, wq_o]), torch.cat([bq_a, bq_o]))
    kv = F.linear(F.layer_norm(keys, (c,), eps=a.norm_kv.eps), torch.cat([wkv_a, wkv_o]), torch.cat([bkv_a, bkv_o]))
    q = q.view(b, lq, 2, h, c // h).permute(2, 0, 3, 1, 4).reshape(2 * b, h, lq, c // h)  # [2B, H, Lq, D]
    kv = kv.view(b, lk, 2, 2, h, c // h).permute(3, 2, 0, 4, 1, 5).reshape(2, 2 * b, h, lk, c // h)
    weights = torch.cat(key_weights, dim=0)  # [2B, Lk]: the inside path's rows, then the outside path's
    out = region_attention(q, kv[0], kv[1], weights).transpose(1, 2).reshape(2, b, lq, c)  # [P, B, Lq, C]
    proj_w = torch.stack([a.proj.weight, o.proj.weight]).transpose(1, 2)[:, None]  # [P, 1, C, C]
    proj_b = torch.stack([a.proj.bias, o.proj.bias])[:, None, None]  # [P, 1, 1, C]
    weights = weights.view(2, b, lk)
    if not a.pooled_mlp:
        x = queries + out @ proj_w + proj_b  # [P, B, Lq, C]
        x = _stacked_mlp(paths, x)
        pooled = torch.stack([x[:, :, 0], _weighted_mean_paths(x[:, :, 1:], weights)], dim=2)  # [P, B, 2, C]
        return pooled[0], pooled[1]
    # As `RegionCrossAttention`'s pooled mode: pool, then project the two pooled rows (pooling commutes with proj).
    share = weights.sum(-1, keepdim=True)
    share = torch.stack([torch.ones_like(share), share / (share + 1e-6)], dim=2)  # [P, B, 2, 1]
    rows = torch.stack([queries[:, 0].expand(2, b, c), _weighted_mean_paths(queries[:, 1:], weights)], dim=2)
    pooled_out = torch.stack([out[:, :, 0], _weighted_mean_paths(out[:, :, 1:], weights)], dim=2)  # [P, B, 2, C]
    x = rows + pooled_out @ proj_w + share * proj_b
    x = _stacked_mlp(paths, x)
    return x[0], x[1]


def _weighted_mean_paths(tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`weighted_mean` per path as one matmul: tokens ``[B, N, C]`` (shared) or ``[P, B, N, C]``, weights
    ``[P, B, N]`` → ``[P, B, C]``."""
    sums = (weights.unsqueeze(-2) @ tokens).squeeze(-2)  # [P, B, C]
    return sums / (weights.sum(-1, keepdim=True) + 1e-6)


def block_first_row(block: Block, x: torch.Tensor) -> torch.Tensor:
    """``block(x)[:, :1]`` of a timm `Block` in eval, computing only row 0's query, projection and MLP.

    The fusion reads only the instruction row of its last block, so the other ``N`` rows' queries and MLPs were
    pure cost; keys and values still come from every row, so the result is the same (tested).
    """
    attn, (b, n, c) = block.attn, x.shape
    heads = attn.num_heads
    h = block.norm1(x)
    weight, bias = attn.qkv.weight, attn.qkv.bias
    q = F.linear(h[:, :1], weight[:c], None if bias is None else bias[:c]).view(b, 1, heads, c // heads)
    kv = F.linear(h, weight[c:], None if bias is None else bias[c:]).view(b, n, 2, heads, c // heads)
    q, k, v = attn.q_norm(q.transpose(1, 2)), attn.k_norm(kv[:, :, 0].transpose(1, 2)), kv[:, :, 1].transpose(1, 2)
    # One query row: plain matmul-softmax-matmul (SDPA exports as a dozen nodes for the same three steps).
    out = ((q * (c // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v  # [B, H, 1, D]
    out = attn.proj(attn.norm(out.transpose(1, 2).reshape(b, 1, c)))
    y = x[:, :1] + block.drop_path1(block.ls1(out))
    return y + block.drop_path2(block.ls2(block.mlp(block.norm2(y))))


class ScoreHead(nn.Module):
    """Pooled evidence → 4 sub-scores in 0–25 (sigmoid) and 4 log-variances in [logvar_min, logvar_max]."""

    def __init__(self, in_dim: int, hidden: int, logvar_range: tuple[float, float], dropout: float):
        super().__init__()
        self.logvar_range = logvar_range
        self.mlp = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 8),
        )

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The first hidden layer ``[B, hidden]``: what the novelty check models (`student.novelty`)."""
        return self.mlp[:3](x)

    def forward(self, x: torch.Tensor, hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.mlp[3:](self.hidden(x) if hidden is None else hidden)  # [B, 8]
        subscores = SCORE_MAX * torch.sigmoid(out[:, :4])  # bounded by construction, never outside 0–25
        lo, hi = self.logvar_range
        logvar = lo + (hi - lo) * torch.sigmoid(out[:, 4:])  # log-variance of subscore/25
        return subscores, logvar


def subscore_std_points(logvar: torch.Tensor) -> torch.Tensor:
    """The score head's log-variance (of subscore/25) as a standard deviation in 0–25 points."""
    return SCORE_MAX * torch.exp(0.5 * logvar)


def weighted_mean(tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ w·x / (Σ w + ε)`` over tokens: ``[B, N, C]``, ``[B, N]`` → ``[B, C]`` (zeros for an empty region)."""
    return (tokens * weights.unsqueeze(-1)).sum(1) / (weights.sum(1, keepdim=True) + 1e-6)


def pool_rows(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``[B, 1 + N, C]`` rows (the instruction, then N tokens) → ``[B, 2, C]``: the instruction row and the tokens'
    `weighted_mean`."""
    return torch.stack([x[:, 0], weighted_mean(x[:, 1:], weights)], dim=1)


def region_summary(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Channel-first maps ``[B, k, h, w]`` and a soft region ``[B, h, w]`` → ``[B, 3k]``: the `weighted_mean` of
    each channel inside the region, outside it, and the channel's peak. Both means are one matmul on the
    channel-first layout, so the map is never transposed to tokens."""
    cells, m = maps.flatten(2), region.flatten(1).unsqueeze(2)  # [B, k, h·w], [B, h·w, 1]
    weights = torch.cat([m, 1 - m], dim=2)  # [B, h·w, 2]: inside, outside
    means = (cells @ weights) / (weights.sum(1, keepdim=True) + 1e-6)  # [B, k, 2]
    return torch.cat([means[..., 0], means[..., 1], cells.amax(2)], dim=1)


def mask_bounding_box(mask: torch.Tensor) -> torch.Tensor:
    """Bounding box of a boolean ``[B, h, w]`` mask in 0–1000, as ``[B, 4]``; an empty mask gives the whole image.

    Pure arithmetic on the mask's row and column occupancy (no branches on values, no constant tensors), so it
    traces to a short ONNX graph and captures in a CUDA graph: the first occupied column is ``w − max(occ · (w −
    j))`` and the last one ``max(occ · (j + 1))``, both exact in float for any grid a student has.
    """
    b, h, w = mask.shape
    cols = mask.any(dim=1).to(torch.float32)  # [B, w]: 1 where the column has a mask cell
    rows = mask.any(dim=2).to(torch.float32)  # [B, h]
    up_x = torch.arange(1, w + 1, device=mask.device, dtype=torch.float32)  # j + 1
    up_y = torch.arange(1, h + 1, device=mask.device, dtype=torch.float32)
    x1 = w - (cols * (w + 1 - up_x)).amax(1)  # w when the mask is empty
    y1 = h - (rows * (h + 1 - up_y)).amax(1)
    x2, y2 = (cols * up_x).amax(1), (rows * up_y).amax(1)  # 0 when empty
    found = cols.amax(1)  # 1 if the mask has any cell, else 0: then the box becomes the whole image
    box = torch.stack([found * x1 / w, found * y1 / h, (x2 + (1 - found) * w) / w, (y2 + (1 - found) * h) / h], dim=1)
    return box * BOX_SCALE  # [B, 4]


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class StudentConfig:
    """Every knob of the student.

    Backbone: ``img_size``, ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``,
    ``drop_path_rate``. Instruction: ``text_encoder``, ``text_dim``. Change and mask: ``change_depth``,
    ``mask_subdivision``. Regions: ``cross_heads``, ``roi_size``. Heads: ``head_dim``, ``head_dropout``,
    ``logvar_min``, ``logvar_max``. Reward: ``reward_weights`` (re-tunable without retraining).
    """

    img_size: int = field(default=224, metadata={"help": "square input side in pixels (images are resized to it)"})
    patch_size: int = field(default=16, metadata={"help": "ViT patch side in pixels; token grid = img_size/patch"})
    embed_dim: int = field(default=192, metadata={"help": "ViT width (192 = ViT-Ti, 384 = ViT-S)"})
    depth: int = field(default=12, metadata={"help": "ViT blocks in the shared backbone"})
    num_heads: int = field(default=3, metadata={"help": "attention heads in the backbone"})
    mlp_ratio: float = field(default=4.0, metadata={"help": "backbone MLP hidden size / width"})
    drop_path_rate: float = field(default=0.0, metadata={"help": "stochastic depth in the backbone"})
    text_encoder: str = field(default=MINILM_NAME, metadata={"help": "frozen sentence encoder of the instruction"})
    text_dim: int = field(default=MINILM_DIM, metadata={"help": "width of the instruction embedding (MiniLM-L6: 384)"})
    change_depth: int = field(default=1, metadata={"help": "transformer blocks over the per-token change features"})
    change_mlp_ratio: float = field(
        default=2.0, metadata={"help": "hidden width / width of the MLP that fuses the two streams per token"}
    )
    mask_subdivision: int = field(default=1, metadata={"help": "mask cells per token side (1 = token grid)"})
    pixel_stats: bool = field(
        default=True, metadata={"help": "compare per-cell colour and high-pass energy of the two images"}
    )
    pixel_detail: bool = field(
        default=False,
        metadata={"help": "pixel statistics gain mid-band, chroma and peak energies, and the score head reads them "
                          "pooled inside / outside the predicted region (needs pixel_stats; useful with "
                          "quality_scale >= 2, where they see full resolution)"},
    )
    quality_scale: int = field(
        default=0,
        metadata={"help": "0 = off; k >= 1: the model takes images at k·img_size, the ViT sees them average-pooled "
                          "by k and a small CNN sees them at full resolution for the quality sub-scores"},
    )
    quality_dim: int = field(
        default=32, metadata={"help": "channels of the full-resolution quality map (0 = no learned map: the "
                                      "input is still quality_scale× larger, for the pixel statistics)"}
    )
    quality_roi: int = field(default=4, metadata={"help": "RoIAlign output side of the region's quality crop"})
    cross_heads: int = field(default=3, metadata={"help": "heads of the region-masked cross-attention"})
    cross_mlp: str = field(
        default="tokens",
        metadata={"help": "where the cross-attention's MLP runs: 'tokens' (every query row, then pooled) or 'pooled' "
                          "(the two pooled rows only: cheaper scoring of a group's candidates)"},
    )
    fusion_depth: int = field(
        default=1, metadata={"help": "blocks of joint attention over [instruction; change tokens] (0 = off)"}
    )
    roi_size: int = field(default=2, metadata={"help": "RoIAlign output side (roi_size² cells per region)"})
    region_floor: float = field(
        default=0.0,
        metadata={"help": "token weights of the region and of its complement below this become exactly 0, so the "
                          "region-attention kernel skips those keys (0 = dense soft weights, as older models)"},
    )
    head_dim: int = field(default=256, metadata={"help": "hidden width of the score head"})
    head_dropout: float = field(default=0.0, metadata={"help": "dropout inside the score head"})
    logvar_min: float = field(default=-9.0, metadata={"help": "lowest log-variance of a sub-score/25"})
    logvar_max: float = field(default=1.0, metadata={"help": "highest log-variance of a sub-score/25"})
    reward_weights: dict = field(
        default_factory=lambda: asdict(DEFAULT_WEIGHTS), metadata={"help": "RewardWeights of the formula"}
    )

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size={self.img_size} is not a multiple of patch_size={self.patch_size}; "
                f"use img_size={self.img_size // self.patch_size * self.patch_size} or another patch size"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}")
        if self.mask_subdivision < 1 or self.patch_size % self.mask_subdivision:
            raise ValueError(
                f"mask_subdivision={self.mask_subdivision} must be >= 1 and divide patch_size={self.patch_size}"
            )
        if self.quality_scale < 0 or (self.quality_scale and self.input_size % 16):
            raise ValueError(f"quality_scale={self.quality_scale} must be 0 (off) or >= 1 with img_size·scale a "
                             f"multiple of 16 (the quality map is at 1/16 of the input side)")
        if self.cross_mlp not in ("tokens", "pooled"):
            raise ValueError(f"cross_mlp={self.cross_mlp!r} must be 'tokens' or 'pooled'")
        if self.pixel_detail and not self.pixel_stats:
            raise ValueError("pixel_detail=True extends the pixel statistics: set pixel_stats=True as well")
        if self.quality_dim < 0:
            raise ValueError(f"quality_dim={self.quality_dim} must be >= 0 (0 = no learned quality map)")
        if not self.logvar_min < self.logvar_max:
            raise ValueError(f"logvar_min={self.logvar_min} must be below logvar_max={self.logvar_max}")
        RewardWeights(**self.reward_weights)  # validates the weights

    @property
    def input_size(self) -> int:
        """Side of the images the model takes: ``img_size``, or ``quality_scale · img_size`` with quality maps."""
        return self.img_size * max(1, self.quality_scale)

    @property
    def quality_grid(self) -> tuple[int, int]:
        """Side of the quality map ``(H/16, W/16)``, or ``(0, 0)`` without one."""
        side = self.input_size // 16 if self.quality_map else 0
        return side, side

    @property
    def quality_map(self) -> bool:
        """Whether the student has the learned full-resolution `QualityEncoder`."""
        return bool(self.quality_scale and self.quality_dim)

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid ``(gh, gw)`` of one stream."""
        side = self.img_size // self.patch_size
        return side, side

    @property
    def mask_size(self) -> tuple[int, int]:
        """Side of the predicted mask logits ``(gh·u, gw·u)``."""
        gh, gw = self.grid
        return gh * self.mask_subdivision, gw * self.mask_subdivision

    @classmethod
    def from_dict(cls, d: dict) -> StudentConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown StudentConfig fields {unknown} (written by a newer version?)")
        return cls(**d)


class StudentOutput(NamedTuple):
    """What the student returns (a tuple, so it traces to ONNX).

    ``subscores [B, 4]`` in 0–25 (order of `SUBSCORE_NAMES`); ``reward [B]`` by the shared formula;
    ``edit_mask_logits [B, h, w]`` on the (subdivided) token grid; ``presence_logit [B]``; ``subscore_logvar
    [B, 4]`` (log-variance of subscore/25); ``region_boxes [B, 4]`` the box (0–1000, edited image) RoIAlign used;
    ``novelty [B, V]`` how far each view (instruction, evidence, pixels) lies outside the training distribution (> 1:
    further than 99 % of in-distribution edits; `spatialreward.student.novelty`), None without a novelty fit.
    """

    subscores: torch.Tensor
    reward: torch.Tensor
    edit_mask_logits: torch.Tensor
    presence_logit: torch.Tensor
    subscore_logvar: torch.Tensor
    region_boxes: torch.Tensor
    novelty: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------------------------
# The student
# ---------------------------------------------------------------------------------------------------------------


class Student(nn.Module):
    """Dual-stream ViT reward model. See the module docstring for the data flow."""

    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.embed_dim
        self.encoder = StreamEncoder(cfg)
        self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, c), nn.LayerNorm(c))
        scale = max(1, cfg.quality_scale)  # input pixels per ViT pixel
        # Pixel statistics on the model's input: at full resolution when it is larger than the ViT's, same cells.
        self.pixel_stats = (PixelStats(cfg.patch_size // cfg.mask_subdivision * scale, detail=cfg.pixel_detail)
                            if cfg.pixel_stats else None)
        k = pixel_compare_channels(self.pixel_stats.energies) if cfg.pixel_stats else 0
        self.change = ChangeFeatures(c, cfg.change_depth, cfg.num_heads, extra=k, mlp_ratio=cfg.change_mlp_ratio)
        self.seg_head = SegmentationHead(c, cfg.mask_subdivision, pixel_channels=k)
        self.presence_head = Mlp(2 * c + 2, hidden_features=c, out_features=1)
        # The instruction reads every change token with its position ("a red ball at the top" vs. where and what
        # changed): joint self-attention over [instruction; change tokens]; its instruction row joins the evidence.
        self.fusion = nn.Sequential(*[Block(c, cfg.num_heads, mlp_ratio=2.0) for _ in range(cfg.fusion_depth)])
        pooled = cfg.cross_mlp == "pooled"
        self.attend_inside = RegionCrossAttention(c, cfg.cross_heads, pooled_mlp=pooled)
        self.attend_outside = RegionCrossAttention(c, cfg.cross_heads, pooled_mlp=pooled)
        roi_cells = cfg.roi_size * cfg.roi_size
        self.roi_proj = Mlp(3 * c * roi_cells, hidden_features=2 * c, out_features=c)
        # Instructions name places ("in the upper-left"), so the head sees where the region is: its box and the
        # predicted mask pooled to a 3×3 layout, projected to C and also multiplied with the instruction.
        self.geometry_proj = Mlp(GEOMETRY_DIM, hidden_features=c, out_features=c)
        # evidence: text, change mean/max, roi, text·roi, geometry, text·geometry, inside (text query, region
        # tokens), outside (same), plus presence logit and mask area
        # Full-resolution quality evidence for naturalness and artifacts: the region's crop and the whole-image
        # summary of the edited image's quality map, each next to its difference from the source's.
        self.quality = QualityEncoder(cfg.quality_dim) if cfg.quality_map else None
        if self.quality is not None:
            q = 4 * cfg.quality_dim  # [edited map, edited − source map], each mean + max channels
            self.quality_region_proj = Mlp(q * cfg.quality_roi * cfg.quality_roi, hidden_features=c, out_features=c)
            self.quality_global_proj = Mlp(q, hidden_features=c, out_features=c)
        # Pixel detail: the comparison map pooled inside and outside the predicted region, and its peak.
        self.detail_proj = Mlp(3 * k, hidden_features=c, out_features=c) if cfg.pixel_detail else None
        parts = (12 if cfg.fusion_depth else 11) + (2 if self.quality is not None else 0) + (1 if cfg.pixel_detail else 0)
        self.score_head = ScoreHead(parts * c + 2, cfg.head_dim, (cfg.logvar_min, cfg.logvar_max), cfg.head_dropout)
        self.reward_weights = RewardWeights(**cfg.reward_weights)
        # Fitted after training on the evidence vectors (`student.novelty`); its buffers are not in state_dict.
        self.novelty: NoveltyDetector | None = None
        # The ops come from spatialreward.kernels (Triton on CUDA when available, the PyTorch reference otherwise);
        # record which backend this module was built under, as nanoGPT records its attention path.
        self.kernel_backend = get_backend()

    # -- the forward pass --------------------------------------------------------------------------------------

    @property
    def can_prepare(self) -> bool:
        """Whether all that the student reads of an image at full resolution is weight-free (no learned quality
        map), so `prepare_images` can be computed once per image."""
        return self.quality is None

    @property
    def prepare_levels(self) -> int:
        """The backbone input of `prepare_images` on uint8 images is a multiple of ``1 / prepare_levels`` (an
        average of ``pool²`` pixels of ``k / 255``): what lets `EditData.prepare` store it exactly in int16."""
        return 255 * max(1, self.cfg.quality_scale) ** 2

    def prepare_images(self, images: torch.Tensor) -> PreparedImages:
        """The weight-free part of `encode_images` for ``[B, 3, S, S]`` images in 0–1: the backbone's input (pooled
        to ``img_size``) and the pixel statistics."""
        if not self.can_prepare:
            raise ValueError("this student has a learned quality map over the full-resolution image "
                             "(quality_dim > 0): its image encoding has no weight-free part to prepare")
        return self._weight_free_part(images)

    def _weight_free_part(self, images: torch.Tensor) -> PreparedImages:
        cfg, scale = self.cfg, max(1, self.cfg.quality_scale)
        backbone = F.avg_pool2d(images, scale) if scale > 1 else images
        pixels = (self.pixel_stats(images) if self.pixel_stats is not None
                  else images.new_zeros(images.shape[0], 0, *cfg.mask_size))
        return PreparedImages(backbone, pixels)

    def encode_images(self, images: torch.Tensor | PreparedImages) -> ImageEncoding:
        """The per-image part of ``[B, 3, S, S]`` images in 0–1 (``S = cfg.input_size``), or of their
        `prepare_images`: backbone tokens, pixel statistics and the quality map. Cache a shared source's encoding
        here (`RewardModel.set_group`)."""
        prepared = images if isinstance(images, PreparedImages) else self._weight_free_part(images)
        tokens = self.encoder(prepared.backbone)  # [B, P+N, C]
        if self.quality is None:
            quality = tokens.new_zeros(tokens.shape[0], 0, *self.cfg.quality_grid)
        elif isinstance(images, PreparedImages):
            raise ValueError("this student's quality map needs the full-resolution images, not PreparedImages")
        else:
            quality = self.quality(images)
        return ImageEncoding(tokens, prepared.pixels, quality)

    def forward(
        self,
        source: torch.Tensor | PreparedImages,
        edited: torch.Tensor | PreparedImages,
        text_embedding: torch.Tensor,
        region_boxes: torch.Tensor | None = None,
        region_mask: torch.Tensor | None = None,
        source_index: torch.Tensor | None = None,
    ) -> StudentOutput:
        """Score ``B`` edits. Images ``[B, 3, S, S]`` float in 0–1 (``S = cfg.input_size``), or both streams'
        `PreparedImages`; ``text_embedding [B, text_dim]``.

        ``region_boxes [B, 4]`` (0–1000) and ``region_mask [B, gh, gw]`` (token-cell coverage in [0, 1]) replace the
        predicted region for RoIAlign and the cross-attention (teacher forcing during distillation). With
        ``source_index [B]``, ``source`` holds each distinct source once (``[U, 3, S, S]``, a GRPO group's shared
        photo) and edit ``i`` is compared with ``source[source_index[i]]``: same result, fewer backbone passes.
        """
        u = _rows(source)
        enc = self.encode_images(_cat_rows(source, edited))  # one batched pass: [U+B, P+N, C]
        src = enc.select(slice(0, u))
        if source_index is not None:
            src = src.select(source_index)
        return self.forward_tokens(src, enc.select(slice(u, None)), text_embedding, region_boxes, region_mask)

    def forward_tokens(
        self,
        source: ImageEncoding,
        edited: ImageEncoding,
        text_embedding: torch.Tensor,
        region_boxes: torch.Tensor | None = None,
        region_mask: torch.Tensor | None = None,
    ) -> StudentOutput:
        """The part after the streams are encoded (`encode_images` outputs, one row per edit)."""
        cfg, p = self.cfg, self.encoder.num_prefix_tokens
        gh, gw = cfg.grid
        u = cfg.mask_subdivision
        s, e = source.tokens[:, p:], edited.tokens[:, p:]  # [B, N, C] patch tokens only
        b, n, c = e.shape
        text = self.text_proj(text_embedding)  # [B, C]

        # Where did it change? Per-token comparison (plus pixel statistics) → mask logits and presence.
        pixels = self.compare_streams(source, edited)  # [B, k, gh·u, gw·u]
        change, mask_logits = self.locate_change(source, edited, pixels)
        mask_prob = torch.sigmoid(mask_logits.detach())  # the region steers attention; the mask loss trains it
        token_prob = F.avg_pool2d(mask_prob.unsqueeze(1), u).flatten(1)  # [B, N] share of each token predicted
        area = mask_prob.flatten(1).mean(1, keepdim=True)  # [B, 1]
        peak = mask_logits.flatten(1).amax(1, keepdim=True)  # [B, 1]
        presence_logit = self.presence_head(torch.cat([change.mean(1), change.amax(1), peak, area], dim=1))[:, 0]

        # The region: predicted unless the caller forces one.
        weights = token_prob if region_mask is None else region_mask.reshape(b, n).to(e.dtype)
        boxes = (mask_bounding_box(mask_prob > 0.5) if region_boxes is None else region_boxes).to(e.dtype)

        # RoIAlign over the region box on [edited, source, change] token maps → one region vector.
        batch_index = torch.arange(b, device=e.device).to(e.dtype).unsqueeze(1)  # int Range for TensorRT
        rois = torch.cat([batch_index, boxes], dim=1)  # [B, 5] = (b, x1, y1, x2, y2) in 0–1000
        maps = torch.cat([e, s, change], dim=-1)  # [B, N, 3C]
        roi = roi_align_tokens(
            maps, rois, grid_size=(gh, gw), output_size=(cfg.roi_size, cfg.roi_size),
            spatial_scale=gw / BOX_SCALE, sampling_ratio=2, aligned=True,
        )  # [B, r, r, 3C]
        roi = self.roi_proj(roi.reshape(b, -1))  # [B, C]
        quality_parts = []
        if self.quality is not None:
            # The same region box, cropped from the full-resolution quality maps: the edited image's own evidence
            # and its departure from the source's (a grainy photo is natural; grain an edit added is not).
            qe, qs, (qh, qw), half = edited.quality, source.quality, cfg.quality_grid, cfg.quality_dim
            q = torch.cat([qe, qe - qs], dim=1)  # [B, 4Cq, qh, qw]
            q_roi = roi_align_tokens(
                q.flatten(2).transpose(1, 2), rois, grid_size=(qh, qw), output_size=(cfg.quality_roi, cfg.quality_roi),
                spatial_scale=qw / BOX_SCALE, sampling_ratio=2, aligned=True,
            )  # [B, r, r, 4Cq]
            whole_e = torch.cat([qe[:, :half].mean((2, 3)), qe[:, half:].amax((2, 3))], dim=1)  # [B, 2Cq]
            whole_s = torch.cat([qs[:, :half].mean((2, 3)), qs[:, half:].amax((2, 3))], dim=1)
            quality_parts = [self.quality_region_proj(q_roi.reshape(b, -1)),
                             self.quality_global_proj(torch.cat([whole_e, whole_e - whole_s], dim=1))]
        detail = None
        if self.detail_proj is not None:
            # Is the fine detail inside the region (or outside it) what the source had? Same grid as the mask.
            detail = region_summary(pixels, mask_prob)  # [B, 3k], also the novelty check's "pixels" view
            quality_parts.append(self.detail_proj(detail))
        layout = F.adaptive_avg_pool2d(mask_prob.unsqueeze(1), LAYOUT_CELLS).flatten(1)  # [B, 9]
        geometry = self.geometry_proj(torch.cat([boxes / BOX_SCALE, layout], dim=1))  # [B, C]

        # Anchored verification: inside the region (is the change there, and right?), outside (was the rest kept?).
        # Weights under the floor are exact zeros: those keys cost nothing in the kernel, and an empty region gives
        # its path only its bias (a sigmoid's tail would otherwise spread a "region" over every token).
        inside_w, outside_w = weights, 1.0 - weights
        if cfg.region_floor > 0:
            inside_w = torch.where(inside_w >= cfg.region_floor, inside_w, 0.0)
            outside_w = torch.where(outside_w >= cfg.region_floor, outside_w, 0.0)
        queries = torch.cat([text.unsqueeze(1), e], dim=1)  # [B, 1+N, C]
        # [B, 2, C] each: the instruction row and the region-pooled token rows, both paths in one pass
        inside, outside = attend_regions((self.attend_inside, self.attend_outside), queries, s, (inside_w, outside_w))
        parts = [
            text, change.mean(1), change.amax(1), roi, text * roi, geometry, text * geometry,
            inside[:, 0], inside[:, 1], outside[:, 0], outside[:, 1],
            *quality_parts, presence_logit.unsqueeze(1), area,
        ]
        if self.cfg.fusion_depth:
            x = torch.cat([text.unsqueeze(1), change], dim=1)  # [B, 1+N, C]
            for block in self.fusion[:-1]:
                x = block(x)
            parts.append(block_first_row(self.fusion[-1], x)[:, 0])  # [B, C]: only the instruction row is read
        evidence = torch.cat(parts, dim=1)  # [B, 11C + 2] (+ C with fusion, + 2C with quality maps, + C detail)
        hidden = self.score_head.hidden(evidence)
        subscores, logvar = self.score_head(evidence, hidden)
        reward = reward_from_subscores(subscores, self.reward_weights)  # [B]
        novelty = None
        if self.novelty is not None:  # [B, V]: how unlike the training edits, per view
            views = {"instruction": text, "evidence": hidden, "pixels": detail}
            novelty = self.novelty(*(views[v] for v in self.novelty.views))
        return StudentOutput(subscores, reward, mask_logits, presence_logit, logvar, boxes, novelty)

    def locate_change(
        self, source: ImageEncoding, edited: ImageEncoding, pixels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Change tokens ``[B, N, C]`` and edit-mask logits ``[B, gh·u, gw·u]`` of encoded pairs: the part that needs
        no instruction (what `pretrain` trains without a teacher). ``pixels``: `compare_streams`, if already made."""
        p, u, (gh, gw) = self.encoder.num_prefix_tokens, self.cfg.mask_subdivision, self.cfg.grid
        s, e = source.tokens[:, p:], edited.tokens[:, p:]
        pixels = self.compare_streams(source, edited) if pixels is None else pixels  # [B, k, gh·u, gw·u]
        pixel_tokens = (F.avg_pool2d(pixels, u).flatten(2).transpose(1, 2) if self.pixel_stats is not None
                        else e.new_zeros(*e.shape[:2], 0))  # [B, N, k]
        change = self.change(s, e, pixel_tokens)  # [B, N, C]
        return change, self.seg_head(change, (gh, gw), pixels)

    def compare_streams(self, source: ImageEncoding, edited: ImageEncoding) -> torch.Tensor:
        """`compare_pixels` of the two encodings ``[B, k, gh·u, gw·u]`` (``k = 0`` without pixel statistics)."""
        if self.pixel_stats is None:
            return source.pixels  # [B, 0, gh·u, gw·u]
        return compare_pixels(source.pixels, edited.pixels)

    # -- what users call ----------------------------------------------------------------------------------------

    def set_reward_weights(self, weights: RewardWeights) -> None:
        """Re-tune the reward formula without retraining (sub-scores are what the network predicts)."""
        self.reward_weights = weights
        self.cfg.reward_weights = asdict(weights)

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` + ``config.json`` into ``directory`` as one unit (`checkpoint` has the format)."""
        return checkpoint.write_student_folder(directory, self.state_dict(), asdict(self.cfg))

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu", *,
                        novelty: bool = True) -> Student:
        """Load a directory written by `save_pretrained`; refuses torn saves, non-finite values and missing,
        unexpected or mis-shaped weights. ``novelty``: also attach the folder's novelty fit, if it has a current
        one (False: the network alone, e.g. to refit it)."""
        student_config, state = checkpoint.read_student_folder(directory, device=str(map_location))
        model = cls(StudentConfig.from_dict(student_config))
        load_state_checked(model, state, source=str(Path(directory) / checkpoint.WEIGHTS_FILE))
        model.novelty = load_novelty(directory, device=map_location) if novelty else None
        return model.eval()

    def load_pretrained_backbone(self, source: str | Path) -> dict:
        """Load ViT weights into the shared backbone from a ``.safetensors`` file or a timm model name.

        A timm name needs the Hugging Face hub (``timm.create_model(name, pretrained=True)``); offline, download the
        weights elsewhere and pass the file. The position embedding is resampled to this grid and the patch
        embedding to this patch size; the classifier head is dropped. Returns what was loaded, resampled, skipped.
        """
        state = checkpoint.read_backbone_state(source)
        return adapt_and_load_backbone(self.encoder.vit, state, source=str(source))

    def load_initial_weights(self, directory: str | Path) -> dict:
        """Start from every weight of a student folder (`save_pretrained`, e.g. `spatialreward pretrain`'s output)
        of the same architecture; refuses another architecture, naming the fields that differ."""
        student_config, state = checkpoint.read_student_folder(directory)
        differ = architecture_differences(StudentConfig.from_dict(student_config), self.cfg)
        if differ:
            raise ValueError(f"--init-from {directory}: its student is not this run's ({'; '.join(differ)}, "
                             "theirs vs this run's); pass the flags it was made with")
        load_state_checked(self, state, source=str(Path(directory) / checkpoint.WEIGHTS_FILE))
        return {"directory": str(directory), "tensors": len(state),
                "weights_sha256": checkpoint.file_sha256(Path(directory) / checkpoint.WEIGHTS_FILE)}


def architecture_differences(a: StudentConfig, b: StudentConfig) -> list[str]:
    """``field: a vs b`` for every field but the reward weights (those re-tune without retraining)."""
    return [f"{f.name}: {getattr(a, f.name)!r} vs {getattr(b, f.name)!r}" for f in fields(StudentConfig)
            if f.name != "reward_weights" and getattr(a, f.name) != getattr(b, f.name)]


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` strictly, naming every missing, unexpected and mis-shaped key in the error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {', '.join(unexpected[:8])}{' …' if len(unexpected) > 8 else ''}")
        if mismatched:
            parts.append(f"{len(mismatched)} mis-shaped: {'; '.join(mismatched[:8])}")
        raise ValueError(f"{source}: weights do not match the model config ({' | '.join(parts)})")
    model.load_state_dict(state, strict=True)


def adapt_and_load_backbone(vit: VisionTransformer, state: dict[str, torch.Tensor], *, source: str) -> dict:
    """Copy a timm-ViT state dict into ``vit``: resample pos/patch embeddings, drop heads, check the rest."""
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    for prefix in ("module.", "backbone.", "encoder.vit.", "vit."):  # wrappers people save models in
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    own = vit.state_dict()
    report: dict[str, list[str]] = {"loaded": [], "resampled": [], "skipped": [], "missing": []}
    new_state = {}
    for key, value in state.items():
        if key not in own:
            report["skipped"].append(key)  # classifier heads, fc_norm, register tokens we do not use
            continue
        target = own[key]
        if key == "pos_embed" and value.shape != target.shape:
            n_prefix = vit.num_prefix_tokens if value.shape[1] - vit.num_prefix_tokens > 0 else 0
            old_side = int(math.isqrt(value.shape[1] - n_prefix))
            value = resample_abs_pos_embed(
                value, new_size=list(vit.patch_embed.grid_size), old_size=[old_side, old_side],
                num_prefix_tokens=n_prefix,
            )
            report["resampled"].append(key)
        elif key == "patch_embed.proj.weight" and value.shape[-2:] != target.shape[-2:]:
            value = resample_patch_embed(value, list(target.shape[-2:]))
            report["resampled"].append(key)
        if value.shape != target.shape:
            raise ValueError(
                f"{source}: {key} has shape {tuple(value.shape)} but this student needs {tuple(target.shape)} "
                f"(its backbone is {vit.embed_dim} wide with MLP {vit.blocks[0].mlp.fc1.out_features}; pick the "
                "preset or overrides that match the checkpoint)"
            )
        new_state[key] = value.to(target.dtype)
        report["loaded"].append(key)
    report["missing"] = sorted(set(own) - set(new_state))
    if len(new_state) == 0:
        raise ValueError(f"{source}: no key matches a timm VisionTransformer (first keys: {list(state)[:5]})")
    vit.load_state_dict(new_state, strict=False)
    return report
