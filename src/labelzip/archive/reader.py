"""Read labelzip archives lazily: header first, chunks only when their labels are asked for.

Opening an archive parses and checks the safetensors framing and the labelzip
header (its own sha256, the format version, the codec id). Model tensors are
read and checksummed when the codec is first needed; a chunk is read,
checksummed and parsed only when a requested label lives in it, so a training
loop can fetch the labels of one batch of views without touching the rest.

Tensors are read with positional reads (``os.pread``) at the offsets of the
container header into fresh buffers, not through a memory map: a process that
streams a whole archive keeps only what it holds, not the file's mapped pages.

Random access decodes in two steps (:meth:`Codec.parse_block`, then
:meth:`Codec.decode_parsed`): parsed chunks are small and cached under a byte
budget, and a batch's rows, gathered from every chunk they live in, go through
the expensive part of decoding once. A shuffled batch thus costs about what its
own labels cost (docs/reading.md). An archive whose parsed chunks exceed the
cache can be parsed once into memory-mapped files
(:meth:`ArchiveReader.prefetch` with ``spill_dir``), from which any label is
one row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from labelzip.accounting import StorageAccount
from labelzip.archive.checks import (
    check_tensors,
    parse_header,
    tensor_digest,
    tensor_from_bytes,
)
from labelzip.archive.format import (
    CHUNK_PREFIX,
    DIGESTS_NAME,
    INTEGRITY,
    MODEL_PREFIX,
    SIDE_PREFIX,
    ArchiveHeader,
    ArchiveMetadata,
    ContainerHeader,
    chunk_name,
    digest_map,
    dtype_from_code,
    read_container_header,
)
from labelzip.archive.spill import SpillStore
from labelzip.closing import ClosesOnExit
from labelzip.codecs.base import Codec, EncodedBlock, LabelContext, ParsedBlock
from labelzip.codecs.context.recipe import recipe_context
from labelzip.codecs.prune import PrunePlan
from labelzip.codecs.registry import codec_class
from labelzip.errors import ArchiveFormatError, ChecksumError, ConfigError, InputError

__all__ = [
    "DECODE_ALL_MEMORY",
    "DEFAULT_CACHE_BYTES",
    "ArchiveReader",
    "LabelIndex",
    "load_archive",
    "open_archive",
]

logger = logging.getLogger(__name__)

LabelIndex = int | slice | Sequence[int] | torch.Tensor

# decode_all holds a pruned archive's stored labels decoded up to this many bytes.
DECODE_ALL_MEMORY = 1 << 29


# Parsed chunks kept between decode calls when neither cache argument is given.
DEFAULT_CACHE_BYTES = 1 << 28

_HASH_PIECE_BYTES = 1 << 20
# decode_parsed runs on at most this many gathered rows per call (bounds memory).
_DECODE_PIECE_ROWS = 4096


class ArchiveReader(ClosesOnExit):
    """Lazy, random-access reader of a labelzip archive.

    Args:
        path: the archive file.
        cache_chunks: (backwards compatible) size the parsed-chunk cache as
            this many decoded chunks would take, ``chunk_size x C x 4`` bytes
            each; ``0`` turns the cache off.
        cache_bytes: bytes of parsed chunks kept (LRU) between :meth:`decode`
            calls; default :data:`DEFAULT_CACHE_BYTES`. Parsed chunks are far
            smaller than decoded ones for vqae, top-k and RS-KD, so an epoch's
            chunks usually stay parsed (docs/reading.md sizes it).

    The reader holds no open file between processes: pickled, it travels as
    its path and cache settings and reopens lazily, and a forked child opens
    its own file descriptor on first read. Each DataLoader worker thus reads
    through its own handle.

    Raises:
        ArchiveFormatError: not a safetensors file, not a labelzip archive,
            truncated, unknown format version or codec id, inconsistent header.
        ChecksumError: the header does not match its checksum.
        ConfigError: both or negative cache sizes.

    Example:
        >>> with ArchiveReader("labels.lz") as reader:
        ...     views = reader.layout.ravel(sample_ids, epoch)   # flat label ids
        ...     logits = reader.decode(views, device="cuda")      # (B, C)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        cache_chunks: int | None = None,
        cache_bytes: int | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"archive {str(self.path)!r} does not exist")
        if cache_chunks is not None and cache_bytes is not None:
            raise ConfigError("give cache_chunks or cache_bytes, not both")
        if (cache_chunks or 0) < 0 or (cache_bytes or 0) < 0:
            raise ConfigError("cache sizes must be >= 0")
        self.container: ContainerHeader = read_container_header(self.path)
        self.header: ArchiveHeader = parse_header(self.container, str(self.path))
        self.layout = check_tensors(self.container, self.header, str(self.path))
        self.num_classes = self.header.num_classes
        self.chunk_reads = 0  # chunks read from disk so far (for tests and profiling)
        self._options = {"cache_chunks": cache_chunks, "cache_bytes": cache_bytes}
        if cache_bytes is None:
            per_chunk = self.header.chunk_size * self.num_classes * 4
            chunks = cache_chunks
            cache_bytes = DEFAULT_CACHE_BYTES if chunks is None else chunks * per_chunk
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[int, str], ParsedBlock] = OrderedDict()
        self._cached_bytes = 0
        # Per device: the chunks pinned by prefetch() joined into one parsed
        # block, and each chunk's first row in it (-1: not pinned).
        self._pinned: dict[str, tuple[ParsedBlock, torch.Tensor]] = {}
        # Chunks spilled to memory-mapped files by prefetch(spill_dir=...), and
        # each chunk's first row in the store (-1: not spilled); any device.
        self._spill: tuple[SpillStore, torch.Tensor] | None = None
        self._fingerprint: str | None = None
        self._codec: Codec | None = None
        self._prune: PrunePlan | None = None
        starts = [0]
        for count in self.header.chunk_labels:
            starts.append(starts[-1] + count)
        self._chunk_starts = torch.tensor(starts, dtype=torch.int64)
        self._fd: int | None = None
        self._fd_pid: int | None = None
        self._checksums: dict[str, str] | None = None  # every tensor's hex sha256
        _ = self.prune  # checked at open: O(1), the plan's lookups are lazy

    @property
    def cache_chunks(self) -> int | None:
        """The ``cache_chunks`` the reader was opened with (None: by bytes)."""
        return self._options["cache_chunks"]

    @property
    def cached_bytes(self) -> int:
        """Bytes of parsed chunks held now (the LRU cache and the pinned chunks)."""
        return self._cached_bytes + self._pinned_bytes

    @property
    def cached_chunks(self) -> int:
        """Parsed chunks held now (LRU and pinned, all devices)."""
        pinned = sum(int((o >= 0).sum()) for _, o in self._pinned.values())
        return len(self._cache) + pinned

    @property
    def _pinned_bytes(self) -> int:
        return sum(block.nbytes for block, _ in self._pinned.values())

    # -- description ---------------------------------------------------------------
    @property
    def codec_name(self) -> str:
        return self.header.codec.name

    @property
    def num_labels(self) -> int:
        return self.header.num_labels

    @property
    def num_chunks(self) -> int:
        return len(self.header.chunk_labels)

    @property
    def metadata(self) -> ArchiveMetadata:
        h = self.header
        names = tuple(h.class_names) if h.class_names is not None else None
        return ArchiveMetadata(names, h.dataset_fingerprint, h.teacher, dict(h.user))

    def __len__(self) -> int:
        return self.num_labels

    def account(self) -> StorageAccount:
        """All-in storage; ``total_bytes`` equals the file size on disk exactly."""
        entries = self.container.entries

        def nbytes(prefix: str) -> int:
            return sum(e.nbytes for n, e in entries.items() if n.startswith(prefix))

        return StorageAccount(
            codec=self.codec_name,
            num_labels=self.num_labels,
            num_classes=self.num_classes,
            payload_bytes=nbytes(CHUNK_PREFIX),
            model_bytes=nbytes(MODEL_PREFIX),
            side_bytes=nbytes(SIDE_PREFIX),
            # Everything but payload, model and side: the framing, the JSON and,
            # in format 2, the digests table.
            header_bytes=self.container.file_size
            - sum(nbytes(p) for p in (CHUNK_PREFIX, MODEL_PREFIX, SIDE_PREFIX)),
            reference=self.header.reference,
        )

    def info(self) -> dict[str, Any]:
        """The account plus codec, layout and format details, JSON-ready."""
        h = self.header
        return {
            **self.account().to_dict(),
            "format": h.format,
            "format_version": h.format_version,
            "integrity": INTEGRITY[h.format_version],
            "codec_id": h.codec.id,
            "codec_config": h.codec.config,
            "layout": h.layout.model_dump(),
            "num_stored": h.num_stored,
            "chunk_size": h.chunk_size,
            "num_chunks": self.num_chunks,
            "prune": h.prune,
            "teacher": h.teacher,
            "dataset_fingerprint": h.dataset_fingerprint,
            "has_class_names": h.class_names is not None,
            "user": h.user,
            "file_bytes": self.container.file_size,
        }

    # -- lazy parts ------------------------------------------------------------------
    def _file(self) -> int:
        """This process's read-only descriptor of the archive (opened on first use).

        A child forked from the opening process does not read through the
        parent's descriptor: it drops its inherited copy and opens its own.
        """
        pid = os.getpid()
        if self._fd is not None and self._fd_pid != pid:
            os.close(self._fd)  # the child's copy only; the parent's stays open
            self._fd = None
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            except OSError as exc:
                raise ArchiveFormatError(
                    f"cannot open archive {str(self.path)!r}: {exc}"
                ) from exc
            self._fd_pid = pid
        return self._fd

    def _read_bytes(self, name: str) -> bytearray:
        """The stored bytes of tensor ``name``, read at its offsets into a new buffer."""
        entry = self.container.entries[name]
        fd = self._file()
        buffer = bytearray(entry.nbytes)
        view = memoryview(buffer)
        done, offset = 0, self.container.data_start + entry.start
        try:
            while done < entry.nbytes:
                got = os.preadv(fd, [view[done:]], offset + done)
                if got == 0:
                    break
                done += got
        except OSError as exc:
            raise ArchiveFormatError(
                f"cannot read tensor {name!r} of archive {str(self.path)!r}: {exc}"
            ) from exc
        if done != entry.nbytes:
            raise ArchiveFormatError(
                f"cannot read tensor {name!r} of archive {str(self.path)!r}: the file "
                f"ends {entry.nbytes - done} bytes early (truncated?)"
            )
        return buffer

    @property
    def checksums(self) -> dict[str, str]:
        """Tensor name -> hex sha256, for every tensor of the file.

        Format 1 lists them in the header; formats 2 and 3 store them in the
        ``digests`` tensor, which is read and checked on first use. What each
        digest covers depends on the version (:data:`~labelzip.archive.format.INTEGRITY`).
        """
        if self._checksums is None:
            if self.header.format_version == 1:
                self._checksums = dict(self.header.checksums)
            else:
                table = self._raw_tensor(
                    DIGESTS_NAME, self.header.checksums[DIGESTS_NAME]
                )
                names = [n for n in self.container.entries if n != DIGESTS_NAME]
                self._checksums = {
                    **digest_map(table, names),
                    DIGESTS_NAME: self.header.checksums[DIGESTS_NAME],
                }
        return self._checksums

    def _tensor(self, name: str) -> torch.Tensor:
        return self._raw_tensor(name, self.checksums[name])

    def _raw_tensor(self, name: str, want: str) -> torch.Tensor:
        entry = self.container.entries[name]
        dtype = dtype_from_code(entry.dtype)
        itemsize = torch.empty(0, dtype=dtype).element_size()
        count = 1
        for size in entry.shape:
            count *= size
        if count * itemsize != entry.nbytes:
            raise ArchiveFormatError(
                f"archive {str(self.path)!r} is corrupted: tensor {name!r} holds "
                f"{entry.nbytes} bytes, its header entry says {entry.shape} "
                f"{entry.dtype} ({count * itemsize} bytes)"
            )
        data = self._read_bytes(name)
        if tensor_digest(self.header.format_version, entry, [data]) != want:
            raise ChecksumError(
                f"archive {str(self.path)!r} is corrupted: tensor {name!r} does not "
                "match its checksum; re-create or re-download the file"
            )
        return tensor_from_bytes(data, dtype, entry.shape)

    def verify_tensor(self, name: str) -> None:
        """Check one stored tensor against its digest, reading it in 1 MiB pieces.

        The same check as a full read (what the digest covers depends on the
        format version), for tensors too large to hold in memory at once, e.g.
        the per-label side tensors of an imported store.

        Raises:
            ChecksumError: the tensor's bytes (or, in format 3, its header entry)
                do not match the stored digest.
        """
        entry = self.container.entries[name]
        left = entry.end - entry.start

        def pieces() -> Iterator[bytes]:
            nonlocal left
            with open(self.path, "rb") as handle:
                handle.seek(self.container.data_start + entry.start)
                while left:
                    piece = handle.read(min(left, _HASH_PIECE_BYTES))
                    if not piece:
                        return
                    left -= len(piece)
                    yield piece

        got = tensor_digest(self.header.format_version, entry, pieces())
        if left or got != self.checksums.get(name):
            raise ChecksumError(
                f"archive {str(self.path)!r} is corrupted: tensor {name!r} does not "
                "match its checksum; re-create or re-download the file"
            )

    @property
    def codec(self) -> Codec:
        """The fitted codec, rebuilt from the stored config and model tensors."""
        if self._codec is None:
            names = [n for n in self.container.entries if n.startswith(MODEL_PREFIX)]
            tensors = {n[len(MODEL_PREFIX) :]: self._tensor(n) for n in sorted(names)}
            cls = codec_class(self.codec_name)
            self._codec = cls.from_stored(dict(self.header.codec.config), tensors)
            if self._codec.num_classes != self.num_classes:
                raise ArchiveFormatError(
                    f"archive codec decodes {self._codec.num_classes} classes but the "
                    f"header says {self.num_classes}"
                )
            if self._codec.needs_context:
                self.stored_context(torch.zeros(0, dtype=torch.int64))
        return self._codec

    def stored_context(self, stored: torch.Tensor) -> LabelContext:
        """The view context of stored labels ``stored`` (N,), for context codecs.

        Rebuilt from the archive's relabel view recipe (seed, view config,
        image shape) and layout, so decoding needs nothing but the file.

        Raises:
            ArchiveFormatError: the archive has no usable recipe or layout.
        """
        stored = torch.as_tensor(stored, dtype=torch.int64).reshape(-1)
        plan = self.prune
        flat = plan.kept_flat(stored) if plan is not None else stored
        try:
            return recipe_context(
                self.header.user, self.layout.dims, self.layout.shape, flat
            )
        except ArchiveFormatError as exc:
            raise ArchiveFormatError(
                f"archive {str(self.path)!r} uses codec {self.codec_name}, which "
                f"decodes labels from their view context, but {exc}"
            ) from exc

    def _decode_block(self, index: int, device: torch.device) -> torch.Tensor:
        codec = self.codec
        block = self.read_chunk(index)
        if not codec.needs_context:
            return codec.decode(block, device=device)
        start = int(self._chunk_starts[index])
        stored = torch.arange(start, start + block.num_labels, dtype=torch.int64)
        return codec.decode_in_context(block, self.stored_context(stored), device)

    @property
    def prune(self) -> PrunePlan | None:
        """The LPLD plan mapping every label to a stored one, or None."""
        if self._prune is None and self.header.prune is not None:
            plan = PrunePlan.from_dict(
                self.layout.dims, self.layout.shape, self.header.prune
            )
            if plan.num_kept != self.header.num_stored:
                raise ArchiveFormatError(
                    f"archive {str(self.path)!r} stores {self.header.num_stored} labels "
                    f"but its prune plan keeps {plan.num_kept}"
                )
            self._prune = plan
        return self._prune

    def side_tensors(self) -> dict[str, torch.Tensor]:
        """Side information tensors (``side/<name>``), checksummed."""
        names = sorted(n for n in self.container.entries if n.startswith(SIDE_PREFIX))
        return {n[len(SIDE_PREFIX) :]: self._tensor(n) for n in names}

    def read_chunk(self, index: int) -> EncodedBlock:
        """The stored bytes of chunk ``index`` (checksummed)."""
        if not 0 <= index < self.num_chunks:
            raise InputError(f"chunk index {index} outside [0, {self.num_chunks})")
        self.chunk_reads += 1
        data = self._tensor(chunk_name(index))
        return EncodedBlock(num_labels=self.header.chunk_labels[index], data=data)

    def parsed_chunk(
        self, index: int, device: torch.device | str | None = None
    ) -> ParsedBlock:
        """Chunk ``index`` read, checksummed and parsed (:meth:`Codec.parse_block`).

        Served from the pinned chunks or the cache when held; otherwise parsed
        and cached (least recently used chunks make room) unless it alone
        exceeds :attr:`cache_bytes`.
        """
        dev = torch.device(device if device is not None else "cpu")
        key = (index, str(dev))
        pinned = self._pinned.get(str(dev))
        if pinned is not None and int(pinned[1][index]) >= 0:
            first = int(pinned[1][index])
            stop = first + self.header.chunk_labels[index]
            parts = {name: part[first:stop] for name, part in pinned[0].parts.items()}
            return ParsedBlock(stop - first, parts)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if self._spill is not None and int(self._spill[1][index]) >= 0:
            first = int(self._spill[1][index])
            stop = first + self.header.chunk_labels[index]
            spilled = self._spill[0].block.parts.items()
            return ParsedBlock(stop - first, {n: p[first:stop] for n, p in spilled})
        parsed = self._parse_chunk(index, dev)
        self._remember(key, parsed)
        return parsed

    def _parse_chunk(self, index: int, device: torch.device) -> ParsedBlock:
        """Chunk ``index`` read, checksummed and parsed, bypassing every cache."""
        codec = self.codec
        block = self.read_chunk(index)
        context = None
        if codec.needs_context:
            start = int(self._chunk_starts[index])
            stored = torch.arange(start, start + block.num_labels, dtype=torch.int64)
            context = self.stored_context(stored)
        parsed = codec.parse_block(block, context, device)
        if parsed.num_labels != block.num_labels:
            raise ArchiveFormatError(
                f"chunk {index} parsed to {parsed.num_labels} labels, expected "
                f"{block.num_labels}"
            )
        return parsed

    def _remember(self, key: tuple[int, str], parsed: ParsedBlock) -> None:
        """Cache a parsed chunk, evicting the least recently used beyond the budget."""
        budget = self.cache_bytes - self._pinned_bytes
        if parsed.nbytes > budget:
            return
        self._cache[key] = parsed
        self._cached_bytes += parsed.nbytes
        while self._cached_bytes > budget:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= dropped.nbytes

    def prefetch(
        self,
        index: LabelIndex | None = None,
        device: torch.device | str | None = None,
        *,
        spill_dir: str | os.PathLike[str] | None = None,
        share_spill: bool = True,
    ) -> int:
        """Parse and pin every chunk the labels at ``index`` live in.

        For a sampler that knows its coming epoch: the chunks are read and
        parsed up front, in file order, and joined into one parsed block, so
        each batch of the epoch is one gather plus the decoder, however many
        chunks it spans. ``None`` means every chunk. A later call replaces
        the pinned chunks (of that device) and any spilled ones. Returns the
        number of chunks parsed.

        When the parsed chunks do not fit :attr:`cache_bytes` (estimated from
        the first one): with ``spill_dir`` they are written to memory-mapped
        files in a private directory under it (:class:`SpillStore`, removed
        when the reader closes or the process exits) and served from there,
        for any device; without it they go through the LRU cache, which then
        keeps only the most recent (docs/reading.md sizes the cache). With
        ``share_spill`` the files stay named, so that a pickled copy of the
        reader (a DataLoader worker) maps them too; without it they are
        unlinked at once and vanish with this process, however it ends.

        Raises:
            InputError: ``spill_dir`` is missing, not writable or lacks the space.
        """
        dev = torch.device(device if device is not None else "cpu")
        if index is None:
            chunk_ids = list(range(self.num_chunks))
        else:
            stored = self._stored_index(self._flat_indices(index))
            found = torch.searchsorted(self._chunk_starts, stored, right=True) - 1
            chunk_ids = [int(c) for c in torch.unique(found).tolist()]
        self._pinned.pop(str(dev), None)
        self._drop_spill()
        if spill_dir is not None and chunk_ids:
            first = self.parsed_chunk(chunk_ids[0], dev)
            rows = sum(self.header.chunk_labels[c] for c in chunk_ids)
            estimate = first.nbytes * rows // max(1, first.num_labels)
            if estimate > self.cache_bytes - self._pinned_bytes:
                self._spill_chunks(chunk_ids, first, rows, spill_dir, share_spill)
                return len(chunk_ids)
        parsed = []
        for cid in chunk_ids:
            block = self._cache.pop((cid, str(dev)), None)
            if block is not None:
                self._cached_bytes -= block.nbytes
            else:
                block = self.parsed_chunk(cid, dev)
                if self._cache.pop((cid, str(dev)), None) is not None:
                    self._cached_bytes -= block.nbytes
            parsed.append(block)
        size = sum(block.nbytes for block in parsed)
        if parsed and size <= self.cache_bytes - self._pinned_bytes:
            offsets = torch.full((self.num_chunks,), -1, dtype=torch.int64)
            counts = torch.tensor([block.num_labels for block in parsed])
            firsts = torch.cumsum(counts, 0) - counts
            offsets[torch.tensor(chunk_ids)] = firsts
            self._pinned[str(dev)] = (ParsedBlock.cat(parsed), offsets)
        else:
            for cid, block in zip(chunk_ids, parsed, strict=True):
                self._remember((cid, str(dev)), block)
        return len(chunk_ids)

    def _spill_chunks(
        self,
        chunk_ids: list[int],
        first: ParsedBlock,
        rows: int,
        parent: str | os.PathLike[str],
        shared: bool,
    ) -> None:
        """Write the parsed ``chunk_ids`` (``first`` already parsed) to a spill store."""
        cpu = torch.device("cpu")
        rest = (self._parse_chunk(cid, cpu) for cid in chunk_ids[1:])
        store = SpillStore.build(
            parent, self.fingerprint, rows, first, rest, shared=shared
        )
        offsets = torch.full((self.num_chunks,), -1, dtype=torch.int64)
        counts = torch.tensor([self.header.chunk_labels[c] for c in chunk_ids])
        offsets[torch.tensor(chunk_ids)] = torch.cumsum(counts, 0) - counts
        self._spill = (store, offsets)
        # The LRU copies of spilled chunks are no longer needed.
        for key in [key for key in self._cache if int(offsets[key[0]]) >= 0]:
            self._cached_bytes -= self._cache.pop(key).nbytes
        logger.info(
            "parsed %d chunks (%d labels, %d MiB) of %s into %s",
            len(chunk_ids),
            rows,
            store.nbytes >> 20,
            self.path,
            store.directory,
        )

    def _drop_spill(self) -> None:
        if self._spill is not None:
            self._spill[0].close()
            self._spill = None

    @property
    def spilled_bytes(self) -> int:
        """Bytes of parsed chunks in the spill store's files (0: none)."""
        return self._spill[0].nbytes if self._spill is not None else 0

    @property
    def fingerprint(self) -> str:
        """sha256 over the archive's header metadata and every tensor's digest.

        Identifies the archive's content, for the spill store a worker maps.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(json.dumps(self.container.metadata, sort_keys=True).encode())
            digest.update(json.dumps(self.checksums, sort_keys=True).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def _pinned_rows(
        self, device: torch.device, chunk_ids: torch.Tensor, stored: torch.Tensor
    ) -> tuple[ParsedBlock, torch.Tensor] | None:
        """The pinned (or else spilled) block holding every chunk in
        ``chunk_ids``, and the rows of ``stored`` in it; None when neither does.
        """
        held = []
        if str(device) in self._pinned:
            held.append(self._pinned[str(device)])
        if self._spill is not None:
            held.append((self._spill[0].block, self._spill[1]))
        for block, offsets in held:
            if bool((offsets[chunk_ids] >= 0).all()):
                local = stored - self._chunk_starts[chunk_ids]
                return block, offsets[chunk_ids] + local
        return None

    # -- decoding ---------------------------------------------------------------------
    def _flat_indices(self, index: LabelIndex) -> torch.Tensor:
        if isinstance(index, slice):
            return torch.arange(*index.indices(self.num_labels), dtype=torch.int64)
        flat = torch.as_tensor(index)
        if flat.is_floating_point() or flat.dtype == torch.bool:
            raise InputError(f"label indices must be integers, got {flat.dtype}")
        flat = flat.to("cpu", torch.int64)
        if flat.numel():
            lo, hi = int(flat.min()), int(flat.max())
            if lo < 0 or hi >= self.num_labels:
                raise InputError(
                    f"label indices must lie in [0, {self.num_labels}), got {lo}..{hi}"
                )
        return flat

    def decode(
        self, index: LabelIndex, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Decode the labels at flat ``index``, reading only the chunks they live in.

        Args:
            index: an int, slice, list or int tensor of flat label indices
                (row-major over :attr:`layout`; see :meth:`Layout.ravel`).
            device: where to decode (default CPU).

        Returns:
            ``index.shape + (C,)`` float32 logits (or log-probabilities) on
            ``device``; an int index gives (C,).
        """
        device = torch.device(device if device is not None else "cpu")
        flat = self._flat_indices(index)
        codec = self.codec  # rebuilt and checked against the header before allocating
        stored = self._stored_index(flat)
        out = torch.empty((stored.numel(), self.num_classes), device=device)
        if stored.numel() == 0:
            return out.reshape(*flat.shape, self.num_classes)
        chunk_ids = torch.searchsorted(self._chunk_starts, stored, right=True) - 1
        pinned = self._pinned_rows(device, chunk_ids, stored)
        if pinned is not None:
            block, rows = pinned
            for start in range(0, rows.numel(), _DECODE_PIECE_ROWS):
                piece = block.take(rows[start : start + _DECODE_PIECE_ROWS])
                decoded = self._decode_parsed(codec, piece, device)
                out[start : start + piece.num_labels] = decoded
            return out.reshape(*flat.shape, self.num_classes)
        found, counts = torch.unique(chunk_ids, return_counts=True)
        order = torch.argsort(chunk_ids, stable=True)  # the batch grouped by chunk
        local = stored[order] - self._chunk_starts[chunk_ids[order]]
        target = order.to(device)
        pending: list[ParsedBlock] = []
        held = written = 0
        groups = zip(found.tolist(), local.split(counts.tolist()), strict=True)
        for cid, rows in groups:
            pending.append(self.parsed_chunk(int(cid), device).take(rows))
            held += rows.numel()
            if held >= _DECODE_PIECE_ROWS or written + held == stored.numel():
                decoded = self._decode_parsed(codec, ParsedBlock.cat(pending), device)
                out[target[written : written + held]] = decoded
                written += held
                pending, held = [], 0
        return out.reshape(*flat.shape, self.num_classes)

    def _decode_parsed(
        self, codec: Codec, parsed: ParsedBlock, device: torch.device
    ) -> torch.Tensor:
        """``codec.decode_parsed`` on ``device``, its shape checked."""
        decoded = codec.decode_parsed(parsed, device).to(device)
        want = (parsed.num_labels, self.num_classes)
        if tuple(decoded.shape) != want:
            raise ArchiveFormatError(
                f"archive {str(self.path)!r}: {want[0]} labels decoded to shape "
                f"{tuple(decoded.shape)}, expected {want}"
            )
        return decoded

    def _stored_index(self, flat: torch.Tensor) -> torch.Tensor:
        """(n,) stored label index of flat label indices (through the prune plan)."""
        prune = self.prune
        stored = prune.stored_index(flat) if prune is not None else flat
        return stored.reshape(-1)

    def __getitem__(self, index: LabelIndex) -> torch.Tensor:
        return self.decode(index)

    def decode_all(
        self,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        *,
        max_memory_bytes: int = DECODE_ALL_MEMORY,
    ) -> Iterator[torch.Tensor]:
        """Stream every label in flat order as (B, C) float32 batches.

        Every chunk is read and decoded once. With pruning, labels reuse stored
        labels anywhere in the file (an epoch-major layout spreads one sample's
        kept views over all epochs), so the stored labels are decoded into
        memory once when they fit in ``max_memory_bytes``; otherwise each batch
        goes through :meth:`decode` and its chunk cache (fast for sample-major
        layouts, where a batch's reused labels sit in the same few chunks).

        Args:
            batch_size: labels per batch (default ``chunk_size``).
            device: where to decode (default CPU).
            max_memory_bytes: budget for holding all stored labels decoded.
        """
        size = batch_size or self.header.chunk_size
        dev = torch.device(device if device is not None else "cpu")
        plan = self.prune
        if plan is None:
            yield from _rebatch(self._stored_chunks(dev), size)
            return
        if self.header.num_stored * self.num_classes * 4 <= max_memory_bytes:
            stored = torch.cat(list(self._stored_chunks(dev)))
            for start in range(0, self.num_labels, size):
                flat = torch.arange(start, min(start + size, self.num_labels))
                yield stored[plan.stored_index(flat).to(dev)]
            return
        for start in range(0, self.num_labels, size):
            yield self.decode(slice(start, min(start + size, self.num_labels)), dev)

    def _stored_chunks(self, device: torch.device) -> Iterator[torch.Tensor]:
        for cid in range(self.num_chunks):
            yield self._decode_block(cid, device)

    def verify(self) -> None:
        """Check every tensor against its digest, then rebuild the codec and prune plan.

        Raises ChecksumError on the first tensor that does not match, and
        ArchiveFormatError when the stored codec tensors do not fit the codec's
        config or the prune plan does not fit the layout. What the digests
        cover depends on the format version; docs/format.md ("What --verify
        guarantees") states it.
        """
        for name in sorted(self.checksums):
            self._tensor(name)
        _ = self.codec
        _ = self.prune

    # -- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        """Close this process's file descriptor and drop the parsed-chunk cache."""
        if self._fd is not None and self._fd_pid == os.getpid():
            os.close(self._fd)
        self._fd = None
        self._fd_pid = None
        self._cache.clear()
        self._cached_bytes = 0
        self._pinned.clear()
        self._drop_spill()

    def __getstate__(self) -> dict[str, Any]:
        # A reader travels as its path and cache settings: the receiving process
        # re-reads and re-checks the header and opens its own file. A spill
        # store travels as its directory, which the receiver maps read-only.
        state: dict[str, Any] = {"path": str(self.path), **self._options}
        if self._spill is not None and self._spill[0].shared:
            state["spill"] = (str(self._spill[0].directory), self._spill[1])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["path"],
            cache_chunks=state["cache_chunks"],
            cache_bytes=state["cache_bytes"],
        )
        spill = state.get("spill")
        if spill is not None:
            try:
                store = SpillStore.open(spill[0], self.fingerprint)
            except InputError as err:
                logger.warning("%s; reading %s without it", err, self.path)
            else:
                self._spill = (store, spill[1])

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None and getattr(self, "_fd_pid", None) == os.getpid():
            try:
                os.close(fd)
            except OSError:  # pragma: no cover - already closed
                pass


def _rebatch(chunks: Iterator[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """Re-cut a stream of (n_i, C) tensors into (size, C) batches (last may be short)."""
    pending: list[torch.Tensor] = []
    held = 0
    for rows in chunks:
        pending.append(rows)
        held += rows.shape[0]
        while held >= size:
            joined = torch.cat(pending) if len(pending) > 1 else pending[0]
            yield joined[:size]
            pending, held = [joined[size:]], held - size
    if held:
        yield torch.cat(pending)


def open_archive(path: str | os.PathLike[str]) -> ArchiveReader:
    """An :class:`ArchiveReader` on ``path`` (use as a context manager)."""
    return ArchiveReader(path)


def load_archive(
    path: str | os.PathLike[str], device: torch.device | str | None = None
) -> torch.Tensor:
    """Decode a whole archive to dense (*layout.shape, C) float32 logits."""
    with ArchiveReader(path) as reader:
        out = torch.empty((reader.num_labels, reader.num_classes), device=device)
        start = 0
        for batch in reader.decode_all(device=device):
            out[start : start + batch.shape[0]] = batch
            start += batch.shape[0]
        return out.reshape(*reader.layout.shape, reader.num_classes)
