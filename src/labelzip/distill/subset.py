"""The ``random`` baseline: a class-balanced random subset of the real images.

With rich soft labels, a random real subset is a strong baseline ("a label is
worth a thousand images"): it shows how much a distillation method adds beyond
its labels. Each class draws from its own seeded generator, so adding a class
never changes the images chosen for another.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from labelzip.data.base import ImageDataset
from labelzip.distill._common import (
    derive_seed,
    resolve_classes,
    stacked_images,
    teacher_identity,
)
from labelzip.distill.base import DistilledSet, check_ipc

__all__ = ["RandomConfig", "random_subset"]


class RandomConfig(BaseModel):
    """Options of the random real subset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    classes: list[int] | None = Field(
        default=None, description="class ids to draw from (default: all classes)"
    )


def random_subset(
    dataset: ImageDataset,
    ipc: int,
    config: RandomConfig | None = None,
    *,
    seed: int = 0,
    teacher_id: str | None = None,
) -> DistilledSet:
    """Draw ``ipc`` real images of every class, uniformly without replacement.

    Args:
        dataset: real images (N, C, H, W) uint8 with labels.
        ipc: images per class.
        config: which classes (default all).
        seed: the draw's seed; equal seeds give equal sets.
        teacher_id: recorded for provenance only (no teacher is used).

    Returns:
        A :class:`DistilledSet` in class order; ``config["indices"]`` lists the
        chosen dataset indices (sorted within each class).

    Raises:
        InputError: images of mixed sizes, or ``ipc`` above the smallest class
            (the message names the largest possible IPC).
    """
    config = config or RandomConfig()
    images = stacked_images(dataset, "random")
    classes = resolve_classes(config.classes, dataset.num_classes)
    counts = torch.bincount(dataset.labels, minlength=dataset.num_classes)[classes]
    check_ipc(ipc, counts, tuple(dataset.class_names[c] for c in classes))
    chosen = []
    for cls in classes:
        pool = torch.nonzero(dataset.labels == cls).reshape(-1)
        generator = torch.Generator().manual_seed(derive_seed(seed, "random", cls))
        pick = torch.randperm(len(pool), generator=generator)[:ipc]
        chosen.append(pool[pick].sort().values)
    indices = torch.cat(chosen)
    resolved = config.model_dump(mode="json")
    resolved.update(classes=classes, seed=seed, indices=indices.tolist())
    return DistilledSet(
        images=images[indices],
        labels=dataset.labels[indices].to(torch.int64),
        class_names=dataset.class_names,
        method="random",
        ipc=ipc,
        source_fingerprint=dataset.fingerprint,
        teacher_id=teacher_identity(None, teacher_id),
        config=resolved,
    )
