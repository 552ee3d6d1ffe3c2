"""Replayable per-view augmentation (SRe2L/FKD style) in plain torch.

Dataset distillation relabels every *view* of every image once per epoch:
RandomResizedCrop, horizontal flip, then optionally CutMix or Mixup with a
partner image. SRe2L stores the explicit parameters of each view next to its
soft label (about 25-29 bytes per view). Here every random number is a pure
function of ``(seed, epoch, image index, draw id)`` -- a counter-based hash with
exact 32-bit integer arithmetic evaluated on the CPU -- so a view can be
re-rendered bit for bit later from the seed alone; its parameters cost zero
bytes per view. :func:`explicit_params` gives the explicit SRe2L-style record
and its byte size for the accounting comparison.

Views keep the value range of the input images (uint8 input gives float32
views in 0..255); normalisation belongs to the teacher wrapper.

Example:
    >>> cfg = ViewConfig(output_size=32, scale=(0.5, 1.0))
    >>> views, params = make_views(images, torch.arange(8), seed=0, epoch=3, config=cfg)
    >>> torch.equal(views, make_views(images, torch.arange(8), seed=0, epoch=3, config=cfg)[0])
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from labelzip.errors import ConfigError, InputError

__all__ = [
    "ImageSource",
    "ViewConfig",
    "ViewParams",
    "explicit_params",
    "explicit_param_bytes",
    "hash_uniform",
    "image_sizes",
    "make_views",
    "render_views",
    "resize_crop",
    "sample_view_params",
    "view_keys",
    "hash_beta",
    "cut_boxes",
    "D_MIX_APPLY",
    "D_PARTNER",
]

ImageSource = torch.Tensor | Sequence[torch.Tensor]
"""Images addressed by dataset index: a (N, C, H, W) tensor or a sequence of (C, H, W)."""

_M32 = 0xFFFFFFFF
_CROP_TRIES = 10  # torchvision's RandomResizedCrop gives up after 10 rejected tries
_GAMMA_TRIES = 8  # Marsaglia-Tsang accepts > 95% per try; 8 tries fail < 1e-10

# Draw ids: each random number of a view has a fixed id, so adding a feature
# never shifts the numbers of the others.
_D_AREA, _D_RATIO, _D_TOP, _D_LEFT, _D_FLIP = 0, 10, 20, 21, 22
D_MIX_APPLY, D_PARTNER, _D_CUT_Y, _D_CUT_X, _D_LAM = 23, 24, 25, 26, 27
_D_GAMMA = (100, 200)  # two independent gamma variates for Beta(a, a)


class ViewConfig(BaseModel):
    """How views are drawn; together with (seed, epoch, index) it defines a view."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    output_size: tuple[int, int] = Field(
        description="view height and width in pixels (an int means square)"
    )
    scale: tuple[float, float] = Field(
        default=(0.08, 1.0),
        description="RandomResizedCrop area fraction range (min, max), in (0, 1]",
    )
    ratio: tuple[float, float] = Field(
        default=(3 / 4, 4 / 3),
        description="RandomResizedCrop aspect ratio (width / height) range",
    )
    flip_prob: float = Field(
        default=0.5, ge=0.0, le=1.0, description="probability of a horizontal flip"
    )
    mix: Literal["none", "cutmix", "mixup"] = Field(
        default="none", description="mixing with a partner image"
    )
    mix_prob: float = Field(
        default=1.0, ge=0.0, le=1.0, description="probability that a view is mixed"
    )
    mix_alpha: float = Field(
        default=1.0, gt=0.0, le=100.0, description="lambda ~ Beta(alpha, alpha)"
    )
    antialias: bool = Field(
        default=True, description="antialiased bilinear resize (as torchvision)"
    )

    @field_validator("output_size", mode="before")
    @classmethod
    def _square(cls, value: object) -> object:
        return (value, value) if isinstance(value, int) else value

    @model_validator(mode="after")
    def _check_ranges(self) -> ViewConfig:
        h, w = self.output_size
        if h < 1 or w < 1:
            raise ValueError(f"output_size must be positive, got {self.output_size}")
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(
                f"scale must satisfy 0 < min <= max <= 1, got {self.scale}"
            )
        rlo, rhi = self.ratio
        if not 0.0 < rlo <= rhi:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        return self


@dataclass(frozen=True, eq=False)
class ViewParams:
    """Explicit parameters of B views (all CPU tensors).

    Boxes are (top, left, height, width) int64; ``crop`` is in source-image
    pixels, ``mix_box`` in view pixels. ``partner`` is -1 and ``lam`` 1.0 for
    unmixed views. ``lam`` is the weight of the view's own image.
    """

    index: torch.Tensor  # (B,) int64
    crop: torch.Tensor  # (B, 4) int64
    flip: torch.Tensor  # (B,) bool
    partner: torch.Tensor  # (B,) int64
    lam: torch.Tensor  # (B,) float64
    mix_box: torch.Tensor  # (B, 4) int64
    partner_crop: torch.Tensor  # (B, 4) int64
    partner_flip: torch.Tensor  # (B,) bool
    source_size: torch.Tensor  # (B, 2) int64 (height, width) of the own image


# --------------------------------------------------------------------------- hash


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x in [0, 2**32) without int64 overflow."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * (c & 0xFFFF)) & 0xFFFF) << 16)) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (bijective on [0, 2**32)), on int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _absorb(key: torch.Tensor, value: torch.Tensor | int) -> torch.Tensor:
    """Fold a 64-bit value into a 32-bit key, low then high half."""
    value = torch.as_tensor(value, dtype=torch.int64)
    key = _hash32(key ^ (value & _M32))
    return _hash32(key ^ ((value >> 32) & _M32) ^ 0x9E3779B9)


def view_keys(
    seed: int, epoch: int | torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    """The 32-bit hash key of each view (seed, epoch, image index).

    ``epoch`` is one int or a tensor shaped like ``index`` (views of several
    epochs at once); every random draw of a view is a function of its key.
    """
    key = _absorb(torch.tensor(0x243F6A88, dtype=torch.int64), seed)
    key = _absorb(key, epoch)
    return _absorb(key.expand_as(index), index)


def hash_uniform(keys: torch.Tensor, draw: int) -> torch.Tensor:
    """Uniform float64 in (0, 1), a pure function of (key, draw id).

    Args:
        keys: (B,) int64 keys in [0, 2**32).
        draw: the id of the random number within a view.
    """
    h = _hash32(keys ^ _hash32(torch.tensor(draw + 0x5BD1E995, dtype=torch.int64)))
    h = _hash32(h + draw)
    return (h.to(torch.float64) + 0.5) * 2.0**-32


# --------------------------------------------------------------------- sampling


def image_sizes(images: ImageSource, index: torch.Tensor) -> torch.Tensor:
    """(B, 2) int64 (height, width) of the addressed images."""
    if isinstance(images, torch.Tensor):
        h, w = images.shape[-2:]
        return torch.tensor([[h, w]], dtype=torch.int64).expand(len(index), 2)
    return torch.tensor(
        [list(images[int(i)].shape[-2:]) for i in index], dtype=torch.int64
    ).reshape(-1, 2)


def _crop_boxes(
    keys: torch.Tensor, sizes: torch.Tensor, config: ViewConfig
) -> torch.Tensor:
    """RandomResizedCrop boxes (B, 4) int64: up to 10 tries, then a centre crop."""
    height, width = sizes[:, 0].to(torch.float64), sizes[:, 1].to(torch.float64)
    area = height * width
    log_lo, log_hi = math.log(config.ratio[0]), math.log(config.ratio[1])
    s_lo, s_hi = config.scale
    box = torch.zeros(len(keys), 4, dtype=torch.int64)
    done = torch.zeros(len(keys), dtype=torch.bool)
    for t in range(_CROP_TRIES):
        target = area * (s_lo + (s_hi - s_lo) * hash_uniform(keys, _D_AREA + t))
        aspect = torch.exp(
            log_lo + (log_hi - log_lo) * hash_uniform(keys, _D_RATIO + t)
        )
        w = torch.round(torch.sqrt(target * aspect)).to(torch.int64)
        h = torch.round(torch.sqrt(target / aspect)).to(torch.int64)
        ok = ~done & (w > 0) & (h > 0) & (w <= sizes[:, 1]) & (h <= sizes[:, 0])
        box[ok, 2], box[ok, 3] = h[ok], w[ok]
        done |= ok
    # Fallback: the largest centred crop whose aspect ratio lies in range.
    in_ratio = width / height
    fb_w = torch.where(
        in_ratio > config.ratio[1],
        torch.round(height * config.ratio[1]),
        width,
    )
    fb_h = torch.where(
        in_ratio < config.ratio[0],
        torch.round(width / config.ratio[0]),
        height,
    )
    box[~done, 2] = fb_h.to(torch.int64)[~done]
    box[~done, 3] = fb_w.to(torch.int64)[~done]
    free_h, free_w = sizes[:, 0] - box[:, 2], sizes[:, 1] - box[:, 3]
    top = torch.floor(hash_uniform(keys, _D_TOP) * (free_h + 1)).to(torch.int64)
    left = torch.floor(hash_uniform(keys, _D_LEFT) * (free_w + 1)).to(torch.int64)
    box[:, 0] = torch.where(done, top, free_h // 2)
    box[:, 1] = torch.where(done, left, free_w // 2)
    return box


def _gamma(keys: torch.Tensor, alpha: float, base: int) -> torch.Tensor:
    """Gamma(alpha, 1) variates by Marsaglia-Tsang with a fixed number of tries."""
    a = alpha + 1.0 if alpha < 1.0 else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.full((len(keys),), d, dtype=torch.float64)  # fallback: the mode
    done = torch.zeros(len(keys), dtype=torch.bool)
    for t in range(_GAMMA_TRIES):
        u1 = hash_uniform(keys, base + 3 * t)
        u2 = hash_uniform(keys, base + 3 * t + 1)
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
        v = (1.0 + c * z) ** 3
        u = hash_uniform(keys, base + 3 * t + 2)
        safe_v = v.clamp_min(1e-300)
        accept = (v > 0) & (
            torch.log(u) < 0.5 * z * z + d - d * safe_v + d * torch.log(safe_v)
        )
        take = accept & ~done
        out[take] = (d * v)[take]
        done |= accept
    if alpha < 1.0:  # Gamma(a) = Gamma(a + 1) * U**(1/a)
        out = out * hash_uniform(keys, base + 99) ** (1.0 / alpha)
    return out


def hash_beta(keys: torch.Tensor, alpha: float) -> torch.Tensor:
    """Beta(alpha, alpha) float64 per key: the mix weight draw of each view."""
    if alpha == 1.0:
        return hash_uniform(keys, _D_LAM)  # Beta(1, 1) is uniform
    x = _gamma(keys, alpha, _D_GAMMA[0])
    y = _gamma(keys, alpha, _D_GAMMA[1])
    return x / (x + y).clamp_min(1e-300)


def cut_boxes(
    keys: torch.Tensor, lam: torch.Tensor, config: ViewConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix boxes (B, 4) in view pixels and the lambda that matches their area."""
    out_h, out_w = config.output_size
    cut = torch.sqrt(1.0 - lam)
    cut_h = (out_h * cut).to(torch.int64)
    cut_w = (out_w * cut).to(torch.int64)
    cy = torch.floor(hash_uniform(keys, _D_CUT_Y) * out_h).to(torch.int64)
    cx = torch.floor(hash_uniform(keys, _D_CUT_X) * out_w).to(torch.int64)
    y1, y2 = (cy - cut_h // 2).clamp(0, out_h), (cy + cut_h // 2).clamp(0, out_h)
    x1, x2 = (cx - cut_w // 2).clamp(0, out_w), (cx + cut_w // 2).clamp(0, out_w)
    box = torch.stack([y1, x1, y2 - y1, x2 - x1], dim=1)
    lam_area = 1.0 - (box[:, 2] * box[:, 3]).to(torch.float64) / (out_h * out_w)
    return box, lam_area


def _check_indices(index: torch.Tensor, num_images: int) -> torch.Tensor:
    index = torch.as_tensor(index).to(device="cpu", dtype=torch.int64).reshape(-1)
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= num_images):
        raise InputError(
            f"image indices must lie in [0, {num_images}), got range "
            f"[{int(index.min())}, {int(index.max())}]"
        )
    return index


def sample_view_params(
    images: ImageSource,
    indices: torch.Tensor,
    *,
    seed: int,
    epoch: int,
    config: ViewConfig,
) -> ViewParams:
    """Derive the parameters of the views (seed, epoch, i) for i in ``indices``.

    Args:
        images: the dataset, (N, C, H, W) or a sequence of (C, H, W); only the
            image sizes are read here.
        indices: (B,) dataset indices of the views' images.
        seed, epoch: non-negative integers; with the index they key every view.
        config: the augmentation recipe.

    Raises:
        InputError: an index out of range.
        ConfigError: mixing requested on a dataset of one image.
    """
    if seed < 0 or epoch < 0:
        raise ConfigError(
            f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}"
        )
    num_images = len(images)
    index = _check_indices(indices, num_images)
    keys = view_keys(seed, epoch, index)
    sizes = image_sizes(images, index)
    crop = _crop_boxes(keys, sizes, config)
    flip = hash_uniform(keys, _D_FLIP) < config.flip_prob
    b = len(index)
    partner = torch.full((b,), -1, dtype=torch.int64)
    lam = torch.ones(b, dtype=torch.float64)
    mix_box = torch.zeros(b, 4, dtype=torch.int64)
    partner_crop = torch.zeros(b, 4, dtype=torch.int64)
    partner_flip = torch.zeros(b, dtype=torch.bool)
    if config.mix != "none" and b:
        if num_images < 2:
            raise ConfigError(f"mix={config.mix!r} needs at least 2 images, got 1")
        mixed = hash_uniform(keys, D_MIX_APPLY) < config.mix_prob
        # A partner other than the image itself, uniform over the dataset.
        draw = torch.floor(hash_uniform(keys, D_PARTNER) * (num_images - 1))
        other = draw.to(torch.int64)
        other = other + (other >= index).to(torch.int64)
        partner = torch.where(mixed, other, partner)
        raw_lam = hash_beta(keys, config.mix_alpha)
        if config.mix == "cutmix":
            box, lam_area = cut_boxes(keys, raw_lam, config)
            mix_box[mixed] = box[mixed]
            lam = torch.where(mixed, lam_area, lam)
        else:
            lam = torch.where(mixed, raw_lam, lam)
        # The partner contributes its own (seed, epoch, partner) base view.
        sel = partner[mixed]
        pkeys = view_keys(seed, epoch, sel)
        partner_crop[mixed] = _crop_boxes(pkeys, image_sizes(images, sel), config)
        partner_flip[mixed] = hash_uniform(pkeys, _D_FLIP) < config.flip_prob
    return ViewParams(
        index, crop, flip, partner, lam, mix_box, partner_crop, partner_flip, sizes
    )


# -------------------------------------------------------------------- rendering


def resize_crop(
    crop: torch.Tensor,
    output_size: tuple[int, int],
    *,
    antialias: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Resize a cropped (C, h, w) region to ``output_size``: (C, H, W) float32.

    Bilinear with ``align_corners=False``; with ``antialias`` the filter widens
    when shrinking, as torchvision's and PIL's bilinear resize do. Any input
    dtype; the result keeps the input's value range.
    """
    device = crop.device if device is None else torch.device(device)
    return F.interpolate(
        crop.to(device, torch.float32).unsqueeze(0),
        size=output_size,
        mode="bilinear",
        align_corners=False,
        antialias=antialias,
    )[0]


def _base_view(
    image: torch.Tensor,
    box: torch.Tensor,
    flip: bool,
    config: ViewConfig,
    device: torch.device,
) -> torch.Tensor:
    top, left, h, w = (int(v) for v in box)
    crop = image[..., top : top + h, left : left + w]
    view = resize_crop(
        crop, config.output_size, antialias=config.antialias, device=device
    )
    return view.flip(-1) if flip else view


def render_views(
    images: ImageSource,
    params: ViewParams,
    config: ViewConfig,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Render views from explicit parameters: (B, C, H_out, W_out) float32.

    Args:
        images: the dataset, (N, C, H, W) or a sequence of (C, H, W), any dtype.
        params: from :func:`sample_view_params` (or rebuilt from stored records).
        config: the recipe the parameters were drawn with (output size, antialias).
        device: where the views are computed; default: the images' device.
    """
    if device is None:
        first = images if isinstance(images, torch.Tensor) else images[0]
        device = first.device
    device = torch.device(device)
    out = []
    for b in range(len(params.index)):
        view = _base_view(
            images[int(params.index[b])],
            params.crop[b],
            bool(params.flip[b]),
            config,
            device,
        )
        partner = int(params.partner[b])
        if partner >= 0:
            other = _base_view(
                images[partner],
                params.partner_crop[b],
                bool(params.partner_flip[b]),
                config,
                device,
            )
            if config.mix == "cutmix":
                top, left, h, w = (int(v) for v in params.mix_box[b])
                view[..., top : top + h, left : left + w] = other[
                    ..., top : top + h, left : left + w
                ]
            else:
                lam = float(params.lam[b])
                view = lam * view + (1.0 - lam) * other
        out.append(view)
    if not out:
        raise InputError("no views requested: indices is empty")
    return torch.stack(out)


def make_views(
    images: ImageSource,
    indices: torch.Tensor,
    *,
    seed: int,
    epoch: int,
    config: ViewConfig,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, ViewParams]:
    """Draw and render the views (seed, epoch, i) for i in ``indices``.

    Calling it again with the same arguments replays the same views bit for bit
    (on the same device and software stack).

    Returns:
        views (B, C, H_out, W_out) float32 in the images' value range, and params.
    """
    params = sample_view_params(images, indices, seed=seed, epoch=epoch, config=config)
    return render_views(images, params, config, device=device), params


# ------------------------------------------------------------------- accounting


def explicit_params(params: ViewParams, mix: str = "none") -> dict[str, torch.Tensor]:
    """The per-view record an explicit (SRe2L/FKD-style) store keeps.

    Crop box as 4 float32 fractions of the source image (FKD's coords: top,
    left, height, width), flip as bool; with mixing also the partner index
    (int64) and lambda (float32), and for CutMix the mix box as 4 int16 view
    pixels. Tensor nbytes sum to :func:`explicit_param_bytes`.
    """
    _check_mix(mix)
    scale = params.source_size.repeat(1, 2).to(torch.float64)
    record: dict[str, torch.Tensor] = {
        "crop": (params.crop.to(torch.float64) / scale).to(torch.float32),
        "flip": params.flip.clone(),
    }
    if mix != "none":
        record["partner"] = params.partner.clone()
        record["lam"] = params.lam.to(torch.float32)
        if mix == "cutmix":
            record["mix_box"] = params.mix_box.to(torch.int16)
    return record


def explicit_param_bytes(
    num_views: int, mix: str = "none", batch_size: int | None = None
) -> int:
    """Bytes an explicit store spends on view parameters (a seeded replay: 0).

    Per view (``batch_size=None``, as :func:`explicit_params`): 16 (crop) +
    1 (flip), plus 8 (partner) + 4 (lambda) with Mixup, plus 8 (mix box) with
    CutMix: 17, 29 or 37 bytes. SRe2L's layout shares one lambda and one mix
    box per batch: 25 bytes per view plus 4 (+ 8 for CutMix) per batch.
    """
    _check_mix(mix)
    if num_views < 0:
        raise ConfigError(f"num_views must be >= 0, got {num_views}")
    if batch_size is None:
        return num_views * {"none": 17, "mixup": 29, "cutmix": 37}[mix]
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if mix == "none":
        return num_views * 17
    num_batches = -(-num_views // batch_size)
    per_batch = 4 + (8 if mix == "cutmix" else 0)
    return num_views * 25 + num_batches * per_batch


def _check_mix(mix: str) -> None:
    if mix not in ("none", "mixup", "cutmix"):
        raise ConfigError(f"mix must be 'none', 'mixup' or 'cutmix', got {mix!r}")
