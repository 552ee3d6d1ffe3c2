"""A map-style torch Dataset of an archive's labels, for DataLoaders with workers.

Item ``i`` is the (C,) float32 label at flat index ``i``. A DataLoader's batch
of indices reaches :meth:`ArchiveLabels.__getitems__` whole, so the batch is
decoded with one :meth:`ArchiveReader.decode` call (parsed chunks, the decoder
run once on the batch's rows) instead of one call per label.

Each process reads through its own reader: the dataset pickles as the
archive's path and cache settings (spawn / forkserver workers reopen it), and a
forked worker opens its own file descriptor on first read.

A plain ``shuffle=True`` over an archive whose parsed chunks exceed the
reader's cache would parse a whole chunk for nearly every label it uses. Two
ways out:

- :meth:`ArchiveLabels.prefetch` parses the whole archive once: into memory
  when it fits the cache, otherwise into memory-mapped files in a temporary
  directory (:class:`~labelzip.archive.spill.SpillStore`), from which any
  label is one row. Called before the DataLoader is made, its workers map the
  same files. When the reads thrash the cache without it, the dataset does
  this itself in the process that noticed (``auto_spill``) and says so once
  (``RuntimeWarning``).
- :class:`WindowShuffleSampler` shuffles windows of consecutive labels, so each
  batch stays inside a few cached chunks and nothing is written to disk.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

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
        spill_dir: where :meth:`prefetch` and ``auto_spill`` put parsed
            labels that do not fit the cache (default: the system's
            temporary directory).
        auto_spill: when shuffled reads thrash the cache, parse the whole
            archive into ``spill_dir`` and serve from there (else only warn).

    Example:
        >>> labels = ArchiveLabels("labels.lz")
        >>> labels.prefetch()                        # parse once, workers share it
        >>> loader = DataLoader(labels, batch_size=256, shuffle=True, num_workers=2)
        >>> for soft in loader:                      # (256, C) float32
        ...     ...
    """

    def __init__(
        self,
        archive: str | os.PathLike[str] | ArchiveReader,
        *,
        cache_bytes: int | None = None,
        spill_dir: str | os.PathLike[str] | None = None,
        auto_spill: bool = True,
    ) -> None:
        if isinstance(archive, ArchiveReader):
            self.reader = archive
        else:
            self.reader = ArchiveReader(archive, cache_bytes=cache_bytes)
        self.spill_dir = spill_dir
        self.auto_spill = auto_spill
        self._served = 0  # labels served by __getitems__ (thrash check)
        self._warned = False

    def prefetch(self) -> int:
        """Parse every chunk once and serve every label from the parsed rows.

        In memory when the parsed archive fits the reader's cache, otherwise
        in memory-mapped files under :attr:`spill_dir` (removed when this
        process exits or the reader closes). Call it before making a
        DataLoader: its workers, forked or spawned, then map the same rows
        instead of each parsing the archive. Returns the chunks parsed.

        Raises:
            InputError: the spill directory is missing, not writable or lacks
                the space.
        """
        return self.reader.prefetch(spill_dir=self._spill_parent())

    def _spill_parent(self) -> str | os.PathLike[str]:
        return self.spill_dir if self.spill_dir is not None else tempfile.gettempdir()

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
        """Act once when the reader parses chunks again and again for a few
        labels each: a shuffle over more chunks than its cache holds (a plain
        ``shuffle=True`` over a large archive), parsing whole chunks per label.

        With ``auto_spill`` the whole archive is parsed once into
        :attr:`spill_dir` and served from there (in a DataLoader worker, into
        files unlinked at once, which vanish with the worker); without it, or
        when that fails (no space), a warning names the ways out.
        """
        reads = self.reader.chunk_reads
        if (
            self._warned
            or reads <= self.reader.num_chunks  # some chunk parsed again after eviction
            or self._served >= THRASH_LABELS_PER_PARSE * reads
        ):
            return
        self._warned = True
        seen = (
            f"shuffled reads were parsing archive chunks again and again ({reads} "
            f"chunk parses for {self._served} labels; the reader's cache holds "
            f"{self.reader.cache_bytes >> 20} MiB of {self.reader.num_chunks} chunks)"
        )
        reason = ""
        if self.auto_spill:
            # A DataLoader worker spills privately: its files vanish with it.
            in_worker = get_worker_info() is not None
            try:
                self.reader.prefetch(
                    spill_dir=self._spill_parent(), share_spill=not in_worker
                )
            except InputError as err:
                reason = f" ({err})"
            else:
                warnings.warn(
                    f"labelzip: {seen}; parsed the whole archive once "
                    f"({(self.reader.spilled_bytes or self.reader.cached_bytes) >> 20} "
                    "MiB, in memory or under spill_dir, removed at exit) and serving "
                    "from it. With DataLoader workers, call labels.prefetch() before "
                    "making the DataLoader so that they share one copy (a worker that "
                    "is not persistent_workers=True spills again every epoch)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return
        warnings.warn(
            f"labelzip: {seen}{reason}: call labels.prefetch() before the DataLoader, "
            "pass sampler=WindowShuffleSampler(len(labels)) instead of shuffle=True, "
            "or open ArchiveLabels with a larger cache_bytes",
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
