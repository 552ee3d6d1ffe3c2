"""Re-render the views an FKD-mix store (SRe2L, CDA, LPLD, LPQLD, G-VBSM, EDC) describes.

Those frameworks store, per view, the RandomResizedCrop box as fractions of the
source image ``(i/H, j/W, h/H, w/W)`` and a horizontal-flip bit, and per batch a
CutMix or Mixup (a permutation of the batch, lambda, and for CutMix a box).
Their training code replays a view with torchvision on a PIL image: the box is
scaled back to pixels, PIL's ``crop`` rounds each edge to the nearest integer
(half to even, as Python's ``round``) and fills outside the image with zeros,
the crop is resized bilinearly (antialiased) to the training size, then
flipped. After the per-view transform (ToTensor, normalisation) the whole batch
is mixed: CutMix pastes ``views[mix_index]`` into the box, Mixup blends
``lam * views + (1 - lam) * views[mix_index]``.

This module does the same in plain torch, so a user's images give the same
views without torchvision and without patching torch's data loader (see
:mod:`labelzip.interop.training`). SRe2L ties batches to images only through a
seeded ``RandomSampler``; :func:`seeded_batches` re-derives them.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from labelzip.augment import resize_crop
from labelzip.errors import InputError

__all__ = [
    "MixParams",
    "apply_mix",
    "coords_to_boxes",
    "crop_with_fill",
    "mix_pairs",
    "replay_view",
    "seeded_batches",
    "seeded_epochs",
    "stack_views",
]

MixKind = Literal["none", "cutmix", "mixup"]


@dataclass(frozen=True, eq=False)
class MixParams:
    """The stored mix of one batch.

    Attributes:
        kind: ``"none"``, ``"cutmix"`` or ``"mixup"``.
        index: (B,) int64 partner row of each view within the batch (the
            stored ``mix_index``); None without mixing.
        lam: the stored lambda (Mixup weight of the view's own image); CutMix
            files store it too, but the box alone decides the pixels.
        bbox: CutMix box in the frameworks' order ``(x1, y1, x2, y2)``, where
            x indexes image rows (dim -2) and y columns (dim -1), as their
            ``rand_bbox`` names them.
    """

    kind: MixKind = "none"
    index: torch.Tensor | None = None
    lam: float | None = None
    bbox: tuple[int, int, int, int] | None = None


# ------------------------------------------------------------------------- views


def coords_to_boxes(coords: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Pixel boxes (B, 4) int64 ``(top, left, bottom, right)`` of stored crop coords.

    Args:
        coords: (B, 4) ``(i/H, j/W, h/H, w/W)`` in any float dtype (SRe2L
            writes float32, LPQLD float16); the stored value is used exactly.
        sizes: (B, 2) int (height, width) of each view's source image.

    The arithmetic is the frameworks': ``i = coords[0] * H`` in float64, and
    PIL's crop rounds ``(j, i, j + w, i + h)`` half to even.

    Raises:
        InputError: wrong shape, a non-finite coordinate, or an empty box.
    """
    if coords.ndim != 2 or coords.shape[1] != 4 or not coords.is_floating_point():
        raise InputError(
            f"crop coords must be a (B, 4) float tensor, got {tuple(coords.shape)} "
            f"{coords.dtype}"
        )
    if sizes.shape != (coords.shape[0], 2):
        raise InputError(
            f"image sizes must be ({coords.shape[0]}, 2), got {tuple(sizes.shape)}"
        )
    c = coords.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(c).all()):
        raise InputError("crop coords hold NaN or infinite values")
    hw = sizes.to("cpu", torch.float64)
    i, j = c[:, 0] * hw[:, 0], c[:, 1] * hw[:, 1]
    h, w = c[:, 2] * hw[:, 0], c[:, 3] * hw[:, 1]
    boxes = torch.stack([i, j, i + h, j + w], dim=1).round().to(torch.int64)
    empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bool(empty.any()):
        row = int(empty.nonzero()[0, 0])
        raise InputError(
            f"crop coords {c[row].tolist()} give an empty box on a "
            f"{tuple(sizes[row].tolist())} image (view {row})"
        )
    return boxes


def crop_with_fill(
    image: torch.Tensor, top: int, left: int, bottom: int, right: int
) -> torch.Tensor:
    """``image[..., top:bottom, left:right]``, zeros where the box leaves the image.

    PIL's ``Image.crop`` fills outside the image with zeros; a stored box can
    overhang by a pixel after half-precision rounding.
    """
    height, width = image.shape[-2:]
    inner = image[
        ..., max(top, 0) : min(bottom, height), max(left, 0) : min(right, width)
    ]
    if top >= 0 and left >= 0 and bottom <= height and right <= width:
        return inner
    out = image.new_zeros(*image.shape[:-2], bottom - top, right - left)
    y0, x0 = max(top, 0) - top, max(left, 0) - left
    out[..., y0 : y0 + inner.shape[-2], x0 : x0 + inner.shape[-1]] = inner
    return out


def replay_view(
    image: torch.Tensor,
    box: torch.Tensor,
    flip: bool,
    output_size: tuple[int, int],
    *,
    antialias: bool = True,
) -> torch.Tensor:
    """One view: crop ``box`` (top, left, bottom, right), resize, then flip.

    Returns (C, H_out, W_out): uint8 for a uint8 image (rounded and clamped,
    as PIL's uint8 resize gives), else float32.
    """
    top, left, bottom, right = (int(v) for v in box)
    crop = crop_with_fill(image, top, left, bottom, right)
    view = resize_crop(crop, output_size, antialias=antialias)
    if image.dtype == torch.uint8:
        view = view.round().clamp(0, 255).to(torch.uint8)
    return view.flip(-1) if flip else view


# ------------------------------------------------------------------------- mixing


def _check_mix(mix: MixParams, views: torch.Tensor) -> torch.Tensor | None:
    if mix.kind == "none":
        return None
    if mix.index is None:
        raise InputError(f"a {mix.kind} batch needs its stored mix index")
    index = mix.index.to("cpu", torch.int64).reshape(-1)
    b = views.shape[0]
    if len(index) != b:
        raise InputError(f"mix index has {len(index)} entries for a batch of {b} views")
    if b and (int(index.min()) < 0 or int(index.max()) >= b):
        raise InputError(
            f"mix index must lie in [0, {b}), got {int(index.min())}..{int(index.max())}"
        )
    return index.to(views.device)


def mix_pairs(own: torch.Tensor, partner: torch.Tensor, mix: MixParams) -> torch.Tensor:
    """Mix each view with its partner's view, elementwise as ``mix_aug`` does.

    Args:
        own: (n, C, H, W) float views.
        partner: (n, C, H, W) the views at each one's stored mix index.
        mix: the batch's stored parameters (``index`` is not read here).

    Returns:
        CutMix: ``own`` with the box taken from ``partner``; Mixup:
        ``lam * own + (1 - lam) * partner``; no mix: a copy of ``own``.

    Raises:
        InputError: a missing or out-of-range lambda or box.
    """
    if mix.kind == "none":
        return own.clone()
    if mix.kind == "mixup":
        if mix.lam is None or not 0.0 <= float(mix.lam) <= 1.0:
            raise InputError(f"mixup needs a lambda in [0, 1], got {mix.lam}")
        lam = float(mix.lam)
        return lam * own + (1 - lam) * partner
    if mix.bbox is None:
        raise InputError("a cutmix batch needs its stored box")
    x1, y1, x2, y2 = (int(v) for v in mix.bbox)
    rows, cols = own.shape[-2:]
    if not (0 <= x1 <= x2 <= rows and 0 <= y1 <= y2 <= cols):
        raise InputError(
            f"cutmix box {(x1, y1, x2, y2)} does not fit {rows}x{cols} views"
        )
    out = own.clone()
    out[..., x1:x2, y1:y2] = partner[..., x1:x2, y1:y2]
    return out


def apply_mix(views: torch.Tensor, mix: MixParams) -> torch.Tensor:
    """Mix a whole batch of (transformed) views as the frameworks' ``mix_aug`` replays it.

    Args:
        views: (B, C, H, W) float views, already normalised (the frameworks mix
            after ToTensor and Normalize).
        mix: the stored parameters of this batch.

    Returns:
        a new (B, C, H, W) tensor; ``views`` is left unchanged.

    Raises:
        InputError: a missing or out-of-range mix index, lambda or box.
    """
    index = _check_mix(mix, views)
    if index is None:
        return views.clone()
    return mix_pairs(views, views[index], mix)


# ------------------------------------------------------------------------- batches


def seeded_epochs(
    num_images: int,
    batch_size: int,
    seed: int,
    epochs: int,
    *,
    drop_last: bool = False,
) -> Iterator[list[list[int]]]:
    """Each epoch's batches of image indices under SRe2L's seeded sampler.

    SRe2L's relabel and training (and LPLD's, G-VBSM's, EDC's relabel) iterate
    a ``RandomSampler`` whose generator is seeded once (``--fkd-seed``, 42) and
    then advanced epoch by epoch, batched by a ``BatchSampler``. This runs that
    very sampler, so the order is torch's own for the installed torch (a store
    relabelled under a torch whose ``randperm`` differs cannot be matched; its
    image indices must be stored instead).

    Raises:
        InputError: a non-positive size or a negative epoch count.
    """
    if num_images < 1 or batch_size < 1 or epochs < 0:
        raise InputError(
            f"seeded batches need num_images >= 1, batch_size >= 1 and epochs >= 0, "
            f"got {num_images}, {batch_size}, {epochs}"
        )
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = torch.utils.data.RandomSampler(range(num_images), generator=generator)
    batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last=drop_last)
    for _ in range(epochs):
        yield list(batches)


def seeded_batches(
    num_images: int, batch_size: int, seed: int, epoch: int, *, drop_last: bool = False
) -> list[list[int]]:
    """The batches of one ``epoch`` of :func:`seeded_epochs` (epochs before it are run)."""
    if epoch < 0:
        raise InputError(f"epoch must be >= 0, got {epoch}")
    epochs = seeded_epochs(num_images, batch_size, seed, epoch + 1, drop_last=drop_last)
    return collections.deque(epochs, maxlen=1)[0]


def stack_views(views: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack per-view tensors, naming the first size mismatch instead of torch's error."""
    if not views:
        raise InputError("no views to stack: the batch is empty")
    shape = views[0].shape
    for k, view in enumerate(views):
        if view.shape != shape:
            raise InputError(
                f"view {k} has shape {tuple(view.shape)}, view 0 {tuple(shape)}: "
                "the transform must give every view the same shape"
            )
    return torch.stack(list(views))
