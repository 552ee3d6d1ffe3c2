"""What an imported FKD-mix archive says about each stored batch, for replaying it.

``labelzip import`` keeps every stored batch file's structure in
``metadata.user["interop"]`` and its augmentation parameters as side tensors
(:mod:`labelzip.interop.fkd_mix`): per label ``coords``, ``flip``,
``mix_index`` and, where the files or their JSON name them, ``image_index``;
per file ``file_rows``, ``mix_lam`` and the four ``mix_bbox.i``. A
:class:`ReplayPlan` reads that back: the list of stored batches (their labels,
epoch and number, and their mix), and per batch the parameters needed to
re-render its views. SRe2L / CDA files name no images; their indices are
re-derived from the recorded sampler seed and batch size
(:func:`~labelzip.interop.view_replay.seeded_epochs`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from labelzip.archive.reader import ArchiveReader
from labelzip.errors import ConfigError, InputError
from labelzip.interop.archive_source import ArchiveLabelSource
from labelzip.interop.view_replay import MixKind, MixParams, seeded_epochs

__all__ = ["REPLAYABLE_FORMATS", "BatchParams", "ReplayPlan", "StoredBatch"]

REPLAYABLE_FORMATS = ("sre2l", "lpld", "lpqld", "gvbsm", "edc")


@dataclass(frozen=True)
class StoredBatch:
    """One stored batch file.

    Attributes:
        position: 0-based place among the archive's batches (label order).
        start: flat index of its first label.
        size: its labels.
        epoch: its epoch folder, or None for a flat store (LPQLD).
        number: its batch number within the epoch (the global counter when flat).
        mix: its stored mix; ``mix.index`` is read per batch (:class:`BatchParams`).
    """

    position: int
    start: int
    size: int
    epoch: int | None
    number: int
    mix: MixParams


@dataclass(frozen=True, eq=False)
class BatchParams:
    """Per-label replay parameters of one stored batch (rows in label order).

    Attributes:
        coords: (B, 4) crop coords as stored (dtype kept).
        flip: (B,) bool.
        mix_index: (B,) int64 partner row within the batch, or None.
        images: (B,) int64 dataset index of each view's image.
    """

    coords: torch.Tensor
    flip: torch.Tensor
    mix_index: torch.Tensor | None
    images: torch.Tensor


def _leaf_side(spec: dict[str, Any]) -> str | None:
    return None if spec.get("t") == "none" else spec.get("side")


class ReplayPlan:
    """The stored batches of an imported FKD-mix archive and their parameters.

    Args:
        reader: an open archive made by ``labelzip import`` with format
            sre2l / cda, lpld, lpqld, gvbsm or edc.

    Raises:
        InputError: an archive of another format, or a variant whose
            augmentation cannot be replayed here (cutout, RandAugment).
    """

    def __init__(self, reader: ArchiveReader) -> None:
        self.source = ArchiveLabelSource(reader)
        doc = self.source.interop
        self.format: str = doc["format"]
        name = str(reader.path)
        if self.format not in REPLAYABLE_FORMATS:
            raise InputError(
                f"archive {name!r} was imported from a {self.format} store; batch "
                f"replay covers {', '.join(REPLAYABLE_FORMATS)}"
            )
        elements = dict(zip(doc["element_names"], doc["elements"], strict=True))
        unsupported = [n for n in ("coords_cutout", "rand_params") if n in elements]
        if unsupported:
            raise InputError(
                f"archive {name!r} holds {unsupported[0]} ({doc['variant']}): replaying "
                "cutout or RandAugment views is not supported; coords and flip are"
            )
        self.num_labels = reader.num_labels
        self._elements = elements
        self._has_images = self.source.has_side("image_index")
        self._sampler: dict[str, Any] | None = doc.get("sampler")
        if not self._has_images and self._sampler is None:
            raise InputError(
                f"archive {name!r} names no images and records no sampler seed"
            )
        self.batches = self._read_batches(doc)
        self._epoch_index: dict[int | None, list[int]] = {}
        for batch in self.batches:
            self._epoch_index.setdefault(batch.epoch, []).append(batch.position)
        self._starts = torch.tensor([b.start for b in self.batches], dtype=torch.int64)
        self._seeded: OrderedDict[int, list[list[int]]] = OrderedDict()
        self._seeded_iter: Iterator[list[list[int]]] | None = None
        self._seeded_next = 0

    # -- structure ------------------------------------------------------------------
    @property
    def num_images(self) -> int | None:
        """Images the seeded sampler ran over (SRe2L), else None (indices stored)."""
        if self._has_images or self._sampler is None:
            return None
        return int(self._sampler["num_images"])

    def _mix_kind(self) -> MixKind:
        index = self._elements.get("mix_index", {"t": "none"})
        if index.get("t") == "none":
            return "none"
        if self._elements.get("mix_bbox", {"t": "none"}).get("t") != "none":
            return "cutmix"
        if self._elements.get("mix_lam", {"t": "none"}).get("t") != "none":
            return "mixup"
        return "none"

    def _file_column(self, spec: dict[str, Any], num_files: int) -> list[float]:
        """One per-file scalar (``mix_lam``, a box corner) of every file, read at once."""
        side = _leaf_side(spec)
        if side is None:
            raise InputError(f"a {spec.get('t')} mix element has no stored value")
        rows = self.source.side(side, 0, num_files).reshape(num_files, -1)
        return [float(v) for v in rows[:, 0].tolist()]

    def _read_batches(self, doc: dict[str, Any]) -> list[StoredBatch]:
        num_files = int(doc["num_files"])
        rows = self.source.side("file_rows", 0, num_files).to(torch.int64).tolist()
        if doc["layout"] == "flat":
            places: list[tuple[int | None, int]] = [(None, b) for b in range(num_files)]
        else:
            places = [
                (e, b)
                for e, count in enumerate(doc["epoch_batches"])
                for b in range(count)
            ]
        if len(places) != num_files or sum(rows) != self.num_labels:
            raise InputError(
                f"archive {str(self.source.reader.path)!r} records {num_files} files "
                f"of {sum(rows)} labels but holds {self.num_labels}"
            )
        kind = self._mix_kind()
        lams: list[float] | None = None
        boxes: list[list[float]] = []
        if kind != "none":
            lams = self._file_column(self._elements["mix_lam"], num_files)
        if kind == "cutmix":
            items = self._elements["mix_bbox"].get("items", [])
            if len(items) != 4:
                raise InputError(f"a cutmix box holds {len(items)} values, not 4")
            boxes = [self._file_column(item, num_files) for item in items]
        out: list[StoredBatch] = []
        start = 0
        for f, ((epoch, number), size) in enumerate(zip(places, rows, strict=True)):
            lam = None if lams is None else lams[f]
            bbox = None
            if boxes:
                x1, y1, x2, y2 = (int(column[f]) for column in boxes)
                bbox = (x1, y1, x2, y2)
            mix = MixParams(kind, None, lam, bbox)
            out.append(StoredBatch(f, start, int(size), epoch, number, mix))
            start += int(size)
        return out

    def epoch_batches(self, epoch: int) -> list[int]:
        """Positions of the batches of stored epoch ``epoch``, in batch order.

        Raises:
            ConfigError: a flat store (no epochs) or an epoch it does not hold.
        """
        if None in self._epoch_index:
            raise ConfigError(
                f"a {self.format} store has no epochs, only a global batch counter; "
                "choose batches with set_batches"
            )
        if epoch not in self._epoch_index:
            held = sorted(e for e in self._epoch_index if e is not None)
            raise ConfigError(
                f"epoch {epoch} is not stored; the archive holds epochs "
                f"{held[0]}..{held[-1]}"
            )
        return list(self._epoch_index[epoch])

    def batch_positions(self, labels: torch.Tensor) -> torch.Tensor:
        """The stored batch each flat label index lies in."""
        return torch.searchsorted(self._starts, labels, right=True) - 1

    # -- per-batch parameters -------------------------------------------------------------
    def batch_params(self, batch: StoredBatch) -> BatchParams:
        """Crop coords, flips, mix index and image indices of one stored batch.

        Raises:
            InputError: a mix index outside the batch, or image indices that
                the seeded sampler does not give for this batch's size.
        """
        stop = batch.start + batch.size
        coords = self.source.side("coords", batch.start, stop)
        flip = self.source.side("flip", batch.start, stop).to(torch.bool)
        mix_index = None
        if batch.mix.kind != "none":
            mix_index = self.source.side("mix_index", batch.start, stop).to(torch.int64)
            if batch.size and (
                int(mix_index.min()) < 0 or int(mix_index.max()) >= batch.size
            ):
                raise InputError(
                    f"stored batch {batch.position} mixes with rows "
                    f"{int(mix_index.min())}..{int(mix_index.max())} of a batch of "
                    f"{batch.size}"
                )
        if self._has_images:
            images = self.source.side("image_index", batch.start, stop).to(torch.int64)
        else:
            images = self._seeded_images(batch)
        return BatchParams(coords, flip, mix_index, images)

    def _seeded_images(self, batch: StoredBatch) -> torch.Tensor:
        assert self._sampler is not None and batch.epoch is not None
        batches = self._seeded_epoch(batch.epoch)
        if batch.number >= len(batches) or len(batches[batch.number]) != batch.size:
            raise InputError(
                f"the recorded sampler (seed {self._sampler['seed']}, batch size "
                f"{self._sampler['batch_size']}) does not give epoch {batch.epoch}'s "
                f"batch {batch.number} of {batch.size} images"
            )
        return torch.tensor(batches[batch.number], dtype=torch.int64)

    def _seeded_epoch(self, epoch: int) -> list[list[int]]:
        """Epoch ``epoch`` of the seeded sampler; sequential access stays linear."""
        if epoch in self._seeded:
            self._seeded.move_to_end(epoch)
            return self._seeded[epoch]
        assert self._sampler is not None
        if self._seeded_iter is None or epoch < self._seeded_next:
            self._seeded_iter = seeded_epochs(
                int(self._sampler["num_images"]),
                int(self._sampler["batch_size"]),
                int(self._sampler["seed"]),
                1 << 30,
            )
            self._seeded_next = 0
        while self._seeded_next <= epoch:
            batches = next(self._seeded_iter)
            self._seeded_next += 1
        self._seeded[epoch] = batches
        while len(self._seeded) > 2:
            self._seeded.popitem(last=False)
        return batches
