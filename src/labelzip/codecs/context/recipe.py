"""The view context of relabel archives, rebuilt from the recipe in their header.

``labelzip relabel`` labels seeded views in ``[epoch, sample]`` order and
stores its view recipe (view config, seed, image shape) in the archive's user
metadata under :data:`RELABEL_KEY`. The context codecs (:mod:`viewmix`,
:mod:`ctx_transform`) predict each label from its view's image, mix partner and
mix weight; this module recomputes those from the header alone, for the archive
writer and reader as for the relabel pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from labelzip import augment as aug
from labelzip.augment import ViewConfig
from labelzip.codecs.base import LabelContext
from labelzip.errors import ArchiveFormatError, LabelzipError

__all__ = ["LAYOUT_DIMS", "RELABEL_KEY", "mix_draws", "recipe_context"]

LAYOUT_DIMS = ("epoch", "sample")
RELABEL_KEY = "relabel"  # the archive's user metadata entry of the view recipe


def recipe_context(
    user: Mapping[str, Any],
    layout_dims: tuple[str, ...],
    layout_shape: tuple[int, ...],
    flat: torch.Tensor,
    *,
    error: type[LabelzipError] = ArchiveFormatError,
) -> LabelContext:
    """The view context (image, partner, weight) of flat labels, from the recipe.

    A relabel archive stores its view recipe (view config, seed, image shape)
    in ``user[RELABEL_KEY]`` and labels views in ``[epoch, sample]`` order, so
    the context of label ``e * M + i`` is a pure function of the header: no
    images are needed (only their count and size enter the view parameters).

    Args:
        user: the archive's user metadata.
        layout_dims, layout_shape: the archive layout, ``("epoch", "sample")``.
        flat: (N,) int64 flat label indices.
        error: the labelzip error raised when the recipe is missing or unusable.
    """
    name = "the archive"
    if tuple(layout_dims) != LAYOUT_DIMS or len(layout_shape) != 2:
        raise error(
            f"{name} has layout {list(layout_dims)}, not {list(LAYOUT_DIMS)}: a codec "
            "that needs the view context only works on `labelzip relabel` archives"
        )
    record = user.get(RELABEL_KEY)
    try:
        assert isinstance(record, Mapping)
        view = ViewConfig.model_validate(record["view"])
        seed = int(record["seed"])
        shape = tuple(int(s) for s in record["image_shape"])
        assert len(shape) >= 2 and min(shape) >= 1
    except Exception as exc:
        raise error(
            f"{name} has no usable view recipe (metadata {RELABEL_KEY!r} with view, "
            "seed and image_shape), so the view context of its labels cannot be "
            "rebuilt; write it with `labelzip relabel` (or pass its ArchiveMetadata)"
        ) from exc
    epochs, num_images = (int(s) for s in layout_shape)
    flat = torch.as_tensor(flat, dtype=torch.int64).reshape(-1).cpu()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= epochs * num_images):
        raise error(f"label indices outside [0, {epochs * num_images})")
    return LabelContext(
        *mix_draws(view, seed, flat // num_images, flat % num_images, num_images),
        num_images,
    )


def mix_draws(
    view: ViewConfig,
    seed: int,
    epoch: torch.Tensor,
    index: torch.Tensor,
    num_images: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image, partner, weight) of views (epoch, index), all epochs at once.

    The same draws as :func:`labelzip.augment.sample_view_params` (the tests
    check equality) without the crop boxes, which a label context does not
    need: one vectorised pass instead of one call per epoch (~30x faster).
    """
    partner = torch.full_like(index, -1)
    weight = torch.ones(index.shape[0], dtype=torch.float64)
    if view.mix == "none" or not index.numel():
        return index, partner, weight.float()
    if num_images < 2:
        raise ArchiveFormatError(f"mix={view.mix!r} needs at least 2 images")
    keys = aug.view_keys(seed, epoch, index)
    mixed = aug.hash_uniform(keys, aug.D_MIX_APPLY) < view.mix_prob
    draw = torch.floor(aug.hash_uniform(keys, aug.D_PARTNER) * (num_images - 1))
    other = draw.to(torch.int64)
    other = other + (other >= index).to(torch.int64)
    partner = torch.where(mixed, other, partner)
    raw = aug.hash_beta(keys, view.mix_alpha)
    if view.mix == "cutmix":
        _, raw = aug.cut_boxes(keys, raw, view)
    weight = torch.where(mixed, raw, weight)
    return index, partner, weight.float()
