"""Train from an imported FKD-mix archive with a stock DataLoader: no patched torch.

SRe2L, CDA, LPLD, LPQLD, G-VBSM and EDC train by hand-patching
``torch.utils.data._utils.fetch._MapDatasetFetcher`` so that the loader can
fetch a whole stored batch (crop coords, flips, the mix and the soft labels)
before rendering its views. Torch already has the hook they need: a map-style
dataset with ``__getitems__`` receives the whole list of indices a batch
sampler yields. So:

- :class:`StoredBatchSampler` yields, per stored batch, the flat label indices
  of its rows, in the framework's own order (epoch, then batch; or the global
  counter of flat stores; or an explicit list, as LPQLD's random batch pool).
- :class:`ImportedViews` renders each label's view from the user's images by
  replaying its stored crop and flip (:mod:`labelzip.interop.view_replay`),
  applies the per-view ``transform`` (normalisation), replays the batch's
  CutMix / Mixup with the stored partner, lambda and box, and returns the soft
  labels the archive decodes for exactly those labels.

Example:
    >>> views = ImportedViews("labels.lz", images, output_size=224, transform=norm)
    >>> loader = DataLoader(views, batch_sampler=StoredBatchSampler("labels.lz"),
    ...                     num_workers=4)
    >>> for epoch in range(epochs):
    ...     loader.batch_sampler.set_epoch(epoch)
    ...     for x, soft, image_index in loader:
    ...         loss = kl(log_softmax(model(x) / T), softmax(soft / T))

Each process (the main one and every loader worker) opens its own archive
reader on first use, so the dataset pickles cheaply into workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from labelzip.archive.reader import ArchiveReader
from labelzip.augment import ImageSource, image_sizes
from labelzip.errors import ConfigError, InputError
from labelzip.interop.replay_plan import BatchParams, ReplayPlan, StoredBatch
from labelzip.interop.view_replay import (
    coords_to_boxes,
    mix_pairs,
    replay_view,
    stack_views,
)

__all__ = ["ImportedViews", "StoredBatchSampler", "to_unit_range"]

ViewTransform = Callable[[torch.Tensor], torch.Tensor]
Sample = tuple[torch.Tensor, torch.Tensor, int]


def to_unit_range(view: torch.Tensor) -> torch.Tensor:
    """float32 view; uint8 scaled to [0, 1] as torchvision's ToTensor does."""
    if view.dtype == torch.uint8:
        return view.to(torch.float32).div_(255.0)
    return view.to(torch.float32)


class _ArchiveHandle:
    """An archive reader and replay plan, opened lazily once per process."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"archive {str(self.path)!r} does not exist")
        self._pid: int | None = None
        self._reader: ArchiveReader | None = None
        self._plan: ReplayPlan | None = None

    def _open(self) -> None:
        if self._pid != os.getpid():
            self._reader = ArchiveReader(self.path)
            self._plan = ReplayPlan(self._reader)
            self._pid = os.getpid()

    @property
    def reader(self) -> ArchiveReader:
        self._open()
        assert self._reader is not None
        return self._reader

    @property
    def plan(self) -> ReplayPlan:
        self._open()
        assert self._plan is not None
        return self._plan

    def __getstate__(self) -> dict[str, object]:
        # Readers hold file handles and caches: every process opens its own.
        return {"path": self.path, "_pid": None, "_reader": None, "_plan": None}


class StoredBatchSampler(Sampler[list[int]]):
    """Yields each stored batch's flat label indices, in the framework's order.

    Args:
        archive: an archive made by ``labelzip import`` from an FKD-mix store.
        epoch: start with only this epoch's batches (see :meth:`set_epoch`).

    By default every stored batch is yielded in stored order (epoch, batch; or
    the global counter of a flat store). :meth:`set_epoch` restricts to one
    epoch as SRe2L's training does each epoch; :meth:`set_batches` gives an
    explicit order of stored batches (LPLD's and LPQLD's random pool).
    """

    def __init__(self, archive: str | os.PathLike[str], *, epoch: int | None = None):
        self._handle = _ArchiveHandle(archive)
        self._order: list[int] = list(range(len(self._handle.plan.batches)))
        if epoch is not None:
            self.set_epoch(epoch)

    @property
    def plan(self) -> ReplayPlan:
        return self._handle.plan

    def set_epoch(self, epoch: int) -> None:
        """Yield the batches of stored epoch ``epoch`` in their batch order.

        Raises:
            ConfigError: the store has no epochs, or none numbered ``epoch``.
        """
        self._order = self.plan.epoch_batches(epoch)

    def set_batches(self, positions: Sequence[int]) -> None:
        """Yield the stored batches at these positions (0-based, stored order).

        Raises:
            ConfigError: a position outside the stored batches.
        """
        count = len(self.plan.batches)
        bad = [p for p in positions if not 0 <= int(p) < count]
        if bad:
            raise ConfigError(
                f"batch positions must lie in [0, {count}), got {bad[:5]}"
            )
        self._order = [int(p) for p in positions]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.plan.batches
        for position in self._order:
            batch = batches[position]
            yield list(range(batch.start, batch.start + batch.size))

    def __len__(self) -> int:
        return len(self._order)


class ImportedViews(Dataset[Sample]):
    """(view, soft label, image index) for each label of an imported FKD-mix archive.

    Args:
        archive: an archive made by ``labelzip import`` (sre2l/cda, lpld,
            lpqld, gvbsm, edc).
        images: the user's images by dataset index: a (N, C, H, W) tensor or a
            sequence of (C, H, W) tensors (uint8 or float); index i must be the
            image the framework's dataset had at index i (ImageFolder order).
        output_size: the training view size (SRe2L: 224).
        transform: applied to each (C, H, W) view after crop and flip, before
            mixing (as ToTensor + Normalize are); default :func:`to_unit_range`.
            Views of uint8 images are uint8 at that point (PIL's rounding).
        antialias: antialiased bilinear resize (PIL's, and torchvision's on
            PIL images).

    Items are ``(view, soft_label, image_index)``: the view mixed with its stored
    partner, the decoded (C,) float32 values for that label in the archive's
    value convention (raw logits for SRe2L-family stores), and the dataset index
    of the view's own image. Fetching a whole stored batch (as
    :class:`StoredBatchSampler` yields) renders each view once and decodes the
    labels with one call.
    """

    def __init__(
        self,
        archive: str | os.PathLike[str],
        images: ImageSource,
        *,
        output_size: int | tuple[int, int] = 224,
        transform: ViewTransform | None = None,
        antialias: bool = True,
    ) -> None:
        self._handle = _ArchiveHandle(archive)
        self.images = images
        size = (
            (output_size, output_size) if isinstance(output_size, int) else output_size
        )
        if len(size) != 2 or min(size) < 1:
            raise ConfigError(f"output_size must be positive, got {output_size}")
        self.output_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.transform = transform if transform is not None else to_unit_range
        self.antialias = antialias
        self.num_labels = self._handle.reader.num_labels
        needed = self._handle.plan.num_images
        if needed is not None and len(images) < needed:
            raise InputError(
                f"the archive's batches address {needed} images, but {len(images)} "
                "were given; pass the dataset the labels were made from"
            )

    @property
    def plan(self) -> ReplayPlan:
        return self._handle.plan

    def __len__(self) -> int:
        return self.num_labels

    def __getitem__(self, label: int) -> Sample:
        return self.__getitems__([label])[0]

    def __getitems__(self, labels: Sequence[int]) -> list[Sample]:
        flat = torch.as_tensor(list(labels), dtype=torch.int64)
        if flat.numel() == 0:
            raise InputError("no labels requested")
        if int(flat.min()) < 0 or int(flat.max()) >= self.num_labels:
            raise InputError(
                f"label indices must lie in [0, {self.num_labels}), got "
                f"{int(flat.min())}..{int(flat.max())}"
            )
        plan = self.plan
        positions = plan.batch_positions(flat)
        out_views: list[torch.Tensor | None] = [None] * len(flat)
        out_images = [0] * len(flat)
        for position in torch.unique(positions).tolist():
            where = (positions == position).nonzero().reshape(-1)
            batch = plan.batches[int(position)]
            rows = flat[where] - batch.start
            mixed, images = self._batch_views(batch, plan.batch_params(batch), rows)
            for k, w in enumerate(where.tolist()):
                out_views[w] = mixed[k]
                out_images[w] = int(images[k])
        views = stack_views([v for v in out_views if v is not None])
        soft = self._handle.reader.decode(flat)
        return [(views[k], soft[k], out_images[k]) for k in range(len(flat))]

    def _render(self, params: BatchParams, rows: torch.Tensor) -> torch.Tensor:
        images = params.images[rows]
        if len(self.images) and int(images.max()) >= len(self.images):
            raise InputError(
                f"the archive addresses image {int(images.max())}, but only "
                f"{len(self.images)} images were given"
            )
        boxes = coords_to_boxes(params.coords[rows], image_sizes(self.images, images))
        flips = params.flip[rows]
        views = [
            self.transform(
                replay_view(
                    self.images[int(i)],
                    boxes[k],
                    bool(flips[k]),
                    self.output_size,
                    antialias=self.antialias,
                )
            )
            for k, i in enumerate(images.tolist())
        ]
        return stack_views(views)

    def _batch_views(
        self, batch: StoredBatch, params: BatchParams, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed views of ``rows`` of one stored batch, and their image indices."""
        if params.mix_index is None or batch.mix.kind == "none":
            return self._render(params, rows), params.images[rows]
        partners = params.mix_index[rows]
        needed, inverse = torch.unique(torch.cat([rows, partners]), return_inverse=True)
        rendered = self._render(params, needed)
        own = rendered[inverse[: len(rows)]]
        other = rendered[inverse[len(rows) :]]
        return mix_pairs(own, other, batch.mix), params.images[rows]
