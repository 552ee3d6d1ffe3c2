"""Replay a relabelled archive: the exact views of an epoch with their decoded labels.

A student trained from a relabel archive sees, in epoch e, view (e, i) of every
image i with the teacher's label for that view. Nothing per view is stored
besides the label: the view is re-rendered from (seed, e, i) with the recipe in
the archive's metadata (bit for bit the view the teacher saw, on the same
device and software stack), and exactly the labels of the batch are decoded by
random access into the archive. With an LPLD-pruned archive a pruned view is
replaced by the kept view whose label it reuses, view and label together.

This is a plain iterable of batches: no patching of ``torch.utils.data``
internals (the lesson of SRe2L/LPLD users' issues). Sharding for data-parallel
training is an explicit ``rank``/``world_size`` split of each epoch's order.
For a DataLoader with worker processes, :class:`ReplayEpoch` is the same
replay as a map-style dataset: each worker decodes its batches through its own
archive reader.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch.utils.data import Dataset

from labelzip.archive import ArchiveReader
from labelzip.augment import ViewConfig, ViewParams, render_views, sample_view_params
from labelzip.errors import (
    ArchiveFormatError,
    CodecMismatchError,
    ConfigError,
    InputError,
)
from labelzip.pipelines.imageset import ImageSet, check_image_tensor
from labelzip.pipelines.relabel_types import LAYOUT_DIMS, RELABEL_KEY

__all__ = ["ReplayBatch", "ReplayDataset", "ReplayEpoch", "ViewCache", "epoch_order"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayBatch:
    """B replayed views of one student epoch and their decoded labels.

    Attributes:
        epoch: the archive epoch replayed.
        index: (B,) int64 image indices.
        source_epoch: (B,) int64 epoch of the view actually used (differs from
            ``epoch`` where LPLD pruning reuses another view).
        views: (B, ch, h, w) float32 views in 0..255 on the replay device.
        logits: (B, C) float32 decoded soft labels (may hold -inf) on the device.
        partner: (B,) int64 mix partner image (-1 if the view is not mixed).
        lam: (B,) float64 weight of the image itself in the mix.
    """

    epoch: int
    index: torch.Tensor
    source_epoch: torch.Tensor
    views: torch.Tensor
    logits: torch.Tensor
    partner: torch.Tensor
    lam: torch.Tensor

    def __len__(self) -> int:
        return len(self.index)


class ViewCache:
    """Rendered views (and their parameters) of whole epochs, shared by replays.

    Views are a pure function of (seed, epoch, index), so students trained one
    after another from different archives of the same relabel run can share
    them. Holds at most ``max_bytes`` of views (later epochs are not cached).
    """

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self.key: tuple[Any, ...] | None = None
        self.views: dict[int, torch.Tensor] = {}
        self.params: dict[int, ViewParams] = {}
        self._bytes = 0

    def check(self, key: tuple[Any, ...]) -> None:
        """Bind the cache to one (set, seed, recipe, device) or refuse another."""
        if self.key is None:
            self.key = key
        elif key != self.key:
            raise ConfigError(
                "a ViewCache is shared by replays of different image sets or view "
                "recipes; use one cache per relabel run"
            )

    def put(self, epoch: int, views: torch.Tensor) -> None:
        size = views.numel() * views.element_size()
        if self._bytes + size <= self.max_bytes:
            self.views[epoch] = views
            self._bytes += size


def _subset(params: ViewParams, sel: torch.Tensor) -> ViewParams:
    """The parameters of views ``sel`` (indices into ``params``' rows)."""
    return ViewParams(*(getattr(params, f.name)[sel] for f in fields(ViewParams)))


def epoch_order(
    num_images: int,
    epoch: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """The image indices one rank visits in ``epoch`` (a seeded permutation).

    Every rank draws the same permutation; it is padded by wrapping around to a
    multiple of ``world_size`` and rank r takes entries r, r + W, ... so all
    ranks take the same number of steps (as DistributedSampler does).
    """
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank must lie in [0, {world_size}), got {rank}")
    if shuffle:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(num_images, generator=g)
    else:
        order = torch.arange(num_images)
    pad = -num_images % world_size
    if pad:
        order = torch.cat([order, order.repeat(pad // num_images + 1)[:pad]])
    return order[rank::world_size]


class ReplayDataset:
    """Views and decoded labels of a relabel archive, batch by batch.

    Args:
        image_set: the distilled set the archive was relabelled from
            (images (M, ch, H, W), class names, fingerprint).
        archive: path of the archive (or an open :class:`ArchiveReader`).
        device: where views are rendered and labels decoded (default CPU).
        num_classes: the student's (or teacher's) class count, checked against
            the archive's.
        cache_chunks: (backwards compatible) parsed-chunk cache sized as this
            many decoded chunks; see :class:`ArchiveReader`.
        cache_bytes: parsed-chunk cache in bytes (default: the reader's, which
            keeps a whole epoch's chunks parsed for vqae and top-k archives of
            millions of labels).
        view_cache: share rendered views between replays of one relabel run.

    Raises:
        InputError: images of another shape than the archive's views came from.
        CodecMismatchError: the archive belongs to another image set (fingerprint)
            or class order, or its class count differs from ``num_classes``.
        ArchiveFormatError: not a relabel archive (no epoch/sample layout or
            recipe).

    Example:
        >>> replay = ReplayDataset(distilled, "labels.lz", device="cuda")
        >>> for batch in replay.batches(epoch=0, batch_size=64):
        ...     loss = kd_loss(student(batch.views), batch.logits, T=4)
    """

    def __init__(
        self,
        image_set: ImageSet,
        archive: str | os.PathLike[str] | ArchiveReader,
        *,
        device: torch.device | str | None = None,
        num_classes: int | None = None,
        cache_chunks: int | None = None,
        cache_bytes: int | None = None,
        view_cache: ViewCache | None = None,
    ) -> None:
        if isinstance(archive, ArchiveReader):
            self.reader = archive
        else:
            self.reader = ArchiveReader(
                archive, cache_chunks=cache_chunks, cache_bytes=cache_bytes
            )
        self.image_set = image_set
        self.device = torch.device(device if device is not None else "cpu")
        record = self._record()
        self._check(image_set, record, num_classes)
        self.images = check_image_tensor(image_set.images).to(self.device)
        self.labels = image_set.labels.to(torch.int64)
        self.view = ViewConfig.model_validate(record["view"])
        self.seed = int(record["seed"])
        self.num_epochs, self.num_images = self.reader.layout.shape
        self.view_cache = view_cache
        self._cache_key = (
            image_set.fingerprint,
            self.seed,
            self.view,
            str(self.device),
        )
        prune = self.reader.prune
        self._kept_flat = prune.kept_indices() if prune is not None else None
        self._params: dict[int, ViewParams] = {}
        if view_cache is not None:
            view_cache.check(self._cache_key)
            self._params = view_cache.params  # shared with the other replays
        self.decode_seconds = 0.0
        self.render_seconds = 0.0

    # -- checks ------------------------------------------------------------------------
    def _record(self) -> dict[str, Any]:
        name = str(self.reader.path)
        if tuple(self.reader.layout.dims) != LAYOUT_DIMS:
            raise ArchiveFormatError(
                f"archive {name!r} has layout {list(self.reader.layout.dims)}, not "
                f"{list(LAYOUT_DIMS)}: it was not written by `labelzip relabel`"
            )
        record = self.reader.header.user.get(RELABEL_KEY)
        if not isinstance(record, dict) or "view" not in record or "seed" not in record:
            raise ArchiveFormatError(
                f"archive {name!r} has no relabel recipe (view config and seed) in "
                "its metadata; re-create it with `labelzip relabel`"
            )
        return record

    def _check(
        self, image_set: ImageSet, record: dict[str, Any], num_classes: int | None
    ) -> None:
        name = str(self.reader.path)
        images = check_image_tensor(image_set.images, "distilled images")
        want = tuple(int(s) for s in record.get("image_shape", images.shape[1:]))
        if tuple(images.shape[1:]) != want:
            raise InputError(
                f"the images have shape {tuple(images.shape[1:])} but archive "
                f"{name!r} labels views of {want} images; pass the set it was "
                "relabelled from"
            )
        if len(images) != self.reader.layout.shape[1]:
            raise CodecMismatchError(
                f"archive {name!r} labels {self.reader.layout.shape[1]} images, the "
                f"set has {len(images)}; pass the set it was relabelled from"
            )
        stored = self.reader.header.dataset_fingerprint
        if stored != image_set.fingerprint:
            raise CodecMismatchError(
                f"archive {name!r} was made for distilled set {str(stored)[:12]}, "
                f"not for this one ({image_set.fingerprint[:12]}); pair each archive "
                "with the set it was relabelled from"
            )
        names = self.reader.header.class_names
        if names is not None and tuple(names) != tuple(image_set.class_names):
            raise CodecMismatchError(
                f"archive {name!r} class order {names[:3]}... differs from the set's "
                f"{list(image_set.class_names[:3])}...; labels would be misread"
            )
        if num_classes is not None:
            self.check_num_classes(num_classes)

    def check_num_classes(self, num_classes: int, what: str = "the model") -> None:
        """Raise CodecMismatchError when a model's class count is not the archive's."""
        if num_classes != self.reader.num_classes:
            raise CodecMismatchError(
                f"{what} has {num_classes} classes but archive "
                f"{str(self.reader.path)!r} holds {self.reader.num_classes}-class "
                f"labels; use a model with {self.reader.num_classes} outputs"
            )

    # -- access ------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.reader.num_classes

    def source_epochs(self, epoch: int, index: torch.Tensor) -> torch.Tensor:
        """(B,) epoch of the view (and label) used for view (epoch, i)."""
        if self._kept_flat is None:
            return torch.full_like(index, epoch)
        prune = self.reader.prune
        assert prune is not None
        flat = self.reader.layout.ravel(epoch, index)
        source = self._kept_flat[prune.stored_index(flat)]
        return source // self.num_images

    def batch(self, epoch: int, index: torch.Tensor) -> ReplayBatch:
        """The batch of views (epoch, i) for i in ``index`` (B,) with their labels."""
        if not 0 <= epoch < self.num_epochs:
            raise InputError(
                f"epoch {epoch} outside the archive's [0, {self.num_epochs})"
            )
        index = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
        sources = self.source_epochs(epoch, index)
        t0 = time.perf_counter()
        views, partner, lam = self._views(sources, index)
        t1 = time.perf_counter()
        logits = self.reader.decode(self.reader.layout.ravel(epoch, index), self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()
        self.render_seconds += t1 - t0
        self.decode_seconds += t2 - t1
        return ReplayBatch(epoch, index, sources, views, logits, partner, lam)

    def batches(
        self,
        epoch: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[ReplayBatch]:
        """The epoch's batches (this rank's shard) in a seeded order."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        order = epoch_order(
            self.num_images,
            epoch,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
        for start in range(0, len(order), batch_size):
            yield self.batch(epoch, order[start : start + batch_size])

    def _views(
        self, sources: torch.Tensor, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Render (or fetch) views grouped by source epoch; also partner and lambda."""
        c = self.images.shape[1]
        h, w = self.view.output_size
        views = torch.empty((len(index), c, h, w), device=self.device)
        partner = torch.empty(len(index), dtype=torch.int64)
        lam = torch.empty(len(index), dtype=torch.float64)
        for epoch in torch.unique(sources).tolist():
            where = (sources == epoch).nonzero().reshape(-1)
            sel = index[where]
            params = self.epoch_params(int(epoch))
            partner[where], lam[where] = params.partner[sel], params.lam[sel]
            cached = self._cached_epoch(int(epoch))
            if cached is not None:
                views[where.to(self.device)] = cached[sel.to(self.device)]
            else:
                views[where.to(self.device)] = render_views(
                    self.images, _subset(params, sel), self.view, device=self.device
                )
        return views, partner, lam

    def epoch_params(self, epoch: int) -> ViewParams:
        """Parameters of the views (epoch, i) of every image (computed once)."""
        if epoch not in self._params:
            self._params[epoch] = sample_view_params(
                self.images,
                torch.arange(self.num_images),
                seed=self.seed,
                epoch=epoch,
                config=self.view,
            )
        return self._params[epoch]

    def _cached_epoch(self, epoch: int) -> torch.Tensor | None:
        if self.view_cache is None:
            return None
        found = self.view_cache.views.get(epoch)
        if found is None:
            params = self.epoch_params(epoch)
            found = render_views(self.images, params, self.view, device=self.device)
            self.view_cache.put(epoch, found)
        return found

    def close(self) -> None:
        self.reader.close()


ReplayItem = tuple[torch.Tensor, torch.Tensor, int, int, int, float]


class ReplayEpoch(Dataset[ReplayItem]):
    """One epoch of a :class:`ReplayDataset` as a map-style dataset, for DataLoaders.

    Item ``i`` is ``(view, logits, i, source_epoch, partner, lam)`` of view
    (epoch, i): what :meth:`ReplayDataset.batch` returns for one image. A
    DataLoader's batch of indices reaches :meth:`__getitems__` whole, so each
    batch is rendered and decoded with one call. Worker processes each read
    the archive through their own reader (it pickles as its path; a forked
    worker opens its own file descriptor), so ``num_workers >= 2`` needs
    nothing else. Use a CPU replay in workers (the DataLoader moves batches to
    the GPU with ``pin_memory``).

    Args:
        replay: the replay (its device must be CPU when workers are used).
        epoch: the archive epoch served; change it with :meth:`set_epoch`
            between epochs (workers started afterwards see the new one).

    Example:
        >>> data = ReplayEpoch(ReplayDataset(distilled, "labels.lz"), epoch=0)
        >>> loader = DataLoader(data, batch_size=256, shuffle=True, num_workers=2)
        >>> for epoch in range(epochs):
        ...     data.set_epoch(epoch)
        ...     for views, logits, *_ in loader:
        ...         ...
    """

    def __init__(self, replay: ReplayDataset, epoch: int = 0) -> None:
        self.replay = replay
        self.epoch = 0
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Serve the views of archive epoch ``epoch``.

        Raises:
            InputError: an epoch outside the archive's.
        """
        if not 0 <= epoch < self.replay.num_epochs:
            raise InputError(
                f"epoch {epoch} outside the archive's [0, {self.replay.num_epochs})"
            )
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.replay.num_images)

    def __getitem__(self, index: int) -> ReplayItem:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[ReplayItem]:
        """The items of a batch of image indices, rendered and decoded at once."""
        index = torch.as_tensor(list(indices), dtype=torch.int64)
        if index.numel() == 0:
            raise InputError("no images requested")
        if int(index.min()) < 0 or int(index.max()) >= self.replay.num_images:
            raise InputError(
                f"image indices must lie in [0, {self.replay.num_images}), got "
                f"{int(index.min())}..{int(index.max())}"
            )
        batch = self.replay.batch(self.epoch, index)
        return [
            (
                batch.views[k],
                batch.logits[k],
                int(batch.index[k]),
                int(batch.source_epoch[k]),
                int(batch.partner[k]),
                float(batch.lam[k]),
            )
            for k in range(len(batch))
        ]
