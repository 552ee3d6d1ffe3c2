"""A map-style torch Dataset of an archive's labels, for DataLoaders with workers.

Item ``i`` is the (C,) float32 label at flat index ``i``. A DataLoader's batch
of indices reaches :meth:`ArchiveLabels.__getitems__` whole, so the batch is
decoded with one :meth:`ArchiveReader.decode` call (parsed chunks, the decoder
run once on the batch's rows) instead of one call per label.

Each process reads through its own reader: the dataset pickles as the
archive's path and cache settings (spawn / forkserver workers reopen it), and a
forked worker opens its own file descriptor on first read.

:class:`WindowShuffleSampler` shuffles an archive far larger than the reader's
parsed-chunk cache without thrashing it: a plain ``shuffle=True`` over millions
of labels makes nearly every batch parse one chunk per label it uses, while
windows of consecutive labels keep each batch inside a few cached chunks.
:class:`ArchiveLabels` warns once (``RuntimeWarning``) when its reads thrash
the cache that way, naming the sampler.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from labelzip.archive.reader import ArchiveReader
from labelzip.errors import ConfigError, InputError

__all__ = ["ArchiveLabels", "WindowShuffleSampler"]

# Labels per window by default: 16 chunks of 4096, ~5 MB of parsed VQAE or
# top-k chunks at C = 1000 (~130 MB of dense fp16), inside the default cache.
DEFAULT_WINDOW = 1 << 16
# Mixes the epoch into the seed (a large odd constant, as in splitmix64).
_EPOCH_STRIDE = 0x9E3779B97F4A7C15
# Thrashing: chunks parsed again after eviction while each parse serves fewer
# labels than this on average (a contiguous or windowed read serves thousands).
THRASH_LABELS_PER_PARSE = 8


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
        self._served = 0  # labels served by __getitems__ (thrash check)
        self._warned = False

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
        rows = self.reader.decode(flat)
        self._served += len(indices)
        self._check_thrash()
        return list(rows.unbind(0))

    def _check_thrash(self) -> None:
        """Warn once when the reader parses chunks again and again for a few
        labels each: a shuffle over more chunks than its cache holds (a plain
        ``shuffle=True`` over a large archive), decoding whole chunks per label.
        """
        reads = self.reader.chunk_reads
        if (
            self._warned
            or reads <= 2 * self.reader.num_chunks  # chunks re-read after eviction
            or self._served >= THRASH_LABELS_PER_PARSE * reads
        ):
            return
        self._warned = True
        warnings.warn(
            f"labelzip: shuffled reads are parsing archive chunks again and again "
            f"({reads} chunk parses for {self._served} labels; the reader's cache "
            f"holds {self.reader.cache_bytes >> 20} MiB of {self.reader.num_chunks} "
            "chunks): pass sampler=WindowShuffleSampler(len(labels)) to the "
            "DataLoader instead of shuffle=True, or open ArchiveLabels with a larger "
            "cache_bytes",
            RuntimeWarning,
            stacklevel=3,
        )


class WindowShuffleSampler(Sampler[int]):
    """Every flat index once per epoch: windows of consecutive labels in a
    shuffled order, the labels of each window shuffled.

    A batch then draws from one window (two where it straddles), whose chunks
    the reader parses once and keeps, instead of from the whole archive. The
    order depends only on ``(seed, epoch)``; call :meth:`set_epoch` before each
    epoch, as with ``DistributedSampler``. Labels within a window are mixed
    completely; labels of different windows meet in a batch only where windows
    join, which is what bounds the cache a shuffle needs.

    Args:
        num_labels: labels of the archive (``len(ArchiveLabels(...))``).
        window: consecutive labels per window (a multiple of the archive's
            chunk size keeps windows on chunk boundaries).
        seed: the order's seed.

    Example:
        >>> labels = ArchiveLabels("labels.lz")
        >>> sampler = WindowShuffleSampler(len(labels), seed=0)
        >>> loader = DataLoader(labels, batch_size=256, sampler=sampler, num_workers=2)
        >>> for epoch in range(epochs):
        ...     sampler.set_epoch(epoch)
        ...     for soft in loader:
        ...         ...
    """

    def __init__(
        self, num_labels: int, *, window: int = DEFAULT_WINDOW, seed: int = 0
    ) -> None:
        if num_labels < 0:
            raise ConfigError(f"num_labels must be >= 0, got {num_labels}")
        if window < 1:
            raise ConfigError(f"window must be >= 1 label, got {window}")
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        self.num_labels = num_labels
        self.window = window
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (>= 0) from the next iteration on."""
        if epoch < 0:
            raise ConfigError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_labels

    def __iter__(self) -> Iterator[int]:
        mixed = (self.seed + self.epoch * _EPOCH_STRIDE) % (1 << 63)
        gen = torch.Generator().manual_seed(mixed)
        starts = torch.arange(0, self.num_labels, self.window, dtype=torch.int64)
        for start in starts[torch.randperm(len(starts), generator=gen)].tolist():
            size = min(self.window, self.num_labels - start)
            yield from (start + torch.randperm(size, generator=gen)).tolist()
