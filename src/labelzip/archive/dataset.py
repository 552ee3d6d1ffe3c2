"""A map-style torch Dataset of an archive's labels, for DataLoaders with workers.

Item ``i`` is the (C,) float32 label at flat index ``i``. A DataLoader's batch
of indices reaches :meth:`ArchiveLabels.__getitems__` whole, so the batch is
decoded with one :meth:`ArchiveReader.decode` call (parsed chunks, the decoder
run once on the batch's rows) instead of one call per label.

Each process reads through its own reader: the dataset pickles as the
archive's path and cache settings (spawn / forkserver workers reopen it), and a
forked worker opens its own file descriptor on first read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from labelzip.archive.reader import ArchiveReader
from labelzip.errors import InputError

__all__ = ["ArchiveLabels"]


class ArchiveLabels(Dataset[torch.Tensor]):
    """The labels of an archive by flat index, decoded a whole batch at a time.

    Args:
        archive: path of the archive (or an open reader, which is used as is).
        cache_bytes: parsed-chunk cache of each process's reader (default:
            the reader's).

    Example:
        >>> labels = ArchiveLabels("labels.lz", cache_bytes=1 << 28)
        >>> loader = DataLoader(labels, batch_size=256, shuffle=True, num_workers=2)
        >>> for soft in loader:                      # (256, C) float32
        ...     ...
    """

    def __init__(
        self,
        archive: str | os.PathLike[str] | ArchiveReader,
        *,
        cache_bytes: int | None = None,
    ) -> None:
        if isinstance(archive, ArchiveReader):
            self.reader = archive
        else:
            self.reader = ArchiveReader(archive, cache_bytes=cache_bytes)

    def __len__(self) -> int:
        return self.reader.num_labels

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.reader.decode(int(index))

    def __getitems__(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """The (C,) labels of a batch of flat indices, decoded in one call.

        A list of rows, as the DataLoader's default collate expects (it
        stacks them back into (B, C)).
        """
        if len(indices) == 0:
            raise InputError("no labels requested")
        flat = torch.as_tensor(list(indices), dtype=torch.int64)
        return list(self.reader.decode(flat).unbind(0))
