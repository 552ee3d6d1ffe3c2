"""Write labelzip archives: streaming, chunked, atomic, byte-for-byte deterministic.

:class:`ArchiveWriter` takes teacher logits in batches of any size, re-chunks
them into runs of ``chunk_size`` stored labels, encodes each run with the codec
and appends the bytes to an unnamed spill file beside the destination. On
``close()`` it writes the safetensors header, the model and side tensors and the
spilled chunk bytes into a temporary file that is renamed over the destination.

Memory bound: at most one chunk of pending logits (``chunk_size x C`` values of
the input dtype) plus the batch being written plus one encoded chunk, the model
and side tensors, ~250 bytes of bookkeeping per chunk, and with pruning the plan
(nothing when the reuse dimension is the last one, else 8 bytes per kept label
and, while it is built, 1 byte per represented label: see :class:`PrunePlan`).
Encoded bytes live in the spill file, never in memory all at once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypedDict, Unpack

import numpy as np
import torch

from labelzip.accounting import StorageAccount, reference_bytes
from labelzip.archive.chunks import ChunkEncoder, EncodedChunk
from labelzip.archive.format import (
    DEFAULT_CHUNK_SIZE,
    DIGEST_BYTES,
    DIGESTS_NAME,
    MAX_CHUNK_LABELS,
    MAX_NUM_CLASSES,
    MAX_NUM_LABELS,
    MODEL_PREFIX,
    SIDE_PREFIX,
    ArchiveHeader,
    ArchiveMetadata,
    ChunkTable,
    CodecEntry,
    Layout,
    TensorEntry,
    build_header,
    chunk_name,
    container_prefix,
    digest_table,
    dtype_to_code,
    entry_descriptor,
    entry_digest,
    plan_entries,
    sha256_entry,
    static_order,
    tensor_bytes,
)
from labelzip.closing import CommitOnExit
from labelzip.codecs.base import Codec, EncodedBlock, LabelContext, check_logits
from labelzip.codecs.context.recipe import recipe_context
from labelzip.codecs.prune import PrunePlan
from labelzip.errors import ChecksumError, ConfigError, InputError
from labelzip.io import atomic_path

__all__ = ["ArchiveWriter", "WriterOptions", "save_archive"]

logger = logging.getLogger(__name__)

_COPY_BYTES = 1 << 20


@dataclass(frozen=True)
class _ChunkRef:
    """Where one chunk's bytes are: in the spill file, or in a file linked by
    :meth:`ArchiveWriter.link_chunk` (then checked against ``sha256`` on copy)."""

    labels: int
    nbytes: int
    sha256: bytes
    offset: int
    source: Path | None = None  # None: the spill file


class ArchiveWriter(CommitOnExit):
    """Stream (B, C) logits into a labelzip archive.

    Args:
        path: destination file; written atomically on :meth:`close`.
        codec: a fitted codec.
        layout: named dims of the label set; required with ``prune``. Without it
            the archive gets ``("sample",)`` of however many labels were written.
        chunk_size: stored labels per chunk (the unit of random access).
        prune: an LPLD :class:`PrunePlan` over ``layout``; only kept labels are
            encoded.
        metadata: class names, dataset fingerprint, teacher, user metadata.
        side_tensors: side information stored as ``side/<name>`` (counted as
            side bytes), e.g. augmentation parameters.
        reference: dense reference of the stored ratio (``fp16``).

    Context codecs (``codec.needs_context``, e.g. ``vqae-ctx``) encode each
    label with its view context, which the writer rebuilds from the relabel
    view recipe in ``metadata`` (the reader does the same), so the archive
    stays self-contained; they need ``layout`` ``[epoch, sample]`` and that
    recipe. A ``context`` passed to :meth:`write` is checked against it.

    Example:
        >>> with ArchiveWriter("labels.lz", codec, layout=Layout.for_shape((N, E))) as w:
        ...     for batch in batches:  # (B, C) in row-major label order
        ...         w.write(batch)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        codec: Codec,
        *,
        layout: Layout | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        prune: PrunePlan | None = None,
        metadata: ArchiveMetadata | None = None,
        side_tensors: Mapping[str, torch.Tensor] | None = None,
        reference: str = "fp16",
    ) -> None:
        self.path = Path(path)
        folder = _check_options(self.path, codec, layout, chunk_size, prune, reference)
        assert codec.num_classes is not None
        self.codec = codec
        self.num_classes: int = codec.num_classes
        self.reference = reference
        self.layout = layout
        self.chunk_size = chunk_size
        self.prune = prune
        self.metadata = metadata or ArchiveMetadata()
        if (
            self.metadata.class_names is not None
            and len(self.metadata.class_names) != self.num_classes
        ):
            raise ConfigError(
                f"class_names has {len(self.metadata.class_names)} names but the "
                f"labels have {self.num_classes} classes"
            )
        self.side_tensors = {
            SIDE_PREFIX + name: t.detach().cpu().contiguous()
            for name, t in (side_tensors or {}).items()
        }
        self._pending: list[torch.Tensor] = []
        self._pending_flat: list[torch.Tensor] = []
        self._pending_rows = 0
        self._pushed = 0  # labels handed to the chunker (emitted or pending)
        self._encoder = ChunkEncoder(codec, layout=layout, metadata=self.metadata)
        self._seen = 0  # labels received through write()
        self._stored = 0  # labels handed to the chunker
        self._mode: str | None = None  # "all" (write) or "kept" (write_kept)
        self._chunks: list[_ChunkRef] = []
        self._spill_bytes = 0
        self._spill: IO[bytes] | None = tempfile.TemporaryFile(
            prefix=f".{self.path.name}.", suffix=".chunks", dir=folder
        )
        self._folder = folder
        self._side_spills: dict[str, _SideSpill] = {}  # streamed by append_side()
        self.account: StorageAccount | None = None

    # -- feeding labels ------------------------------------------------------------
    @property
    def num_expected(self) -> int | None:
        """Labels write() expects in all (``None`` if the layout is open)."""
        return self.layout.num_labels if self.layout is not None else None

    def write(self, logits: torch.Tensor, context: LabelContext | None = None) -> None:
        """Append labels in row-major layout order: (B, C) or (..., C) logits.

        ``context`` (one entry per row, optional) is checked against the
        context rebuilt from the view recipe; plain codecs ignore it.
        """
        rows = self._rows(logits, "write", "all")
        start = self._seen
        total = self.num_expected
        if total is not None and start + rows.shape[0] > total:
            raise InputError(
                f"layout {self.layout.to_dict() if self.layout else None} holds "
                f"{total} labels but {start + rows.shape[0]} were written"
            )
        self._seen += rows.shape[0]
        flat = torch.arange(start, start + rows.shape[0], dtype=torch.int64)
        if self.prune is not None:
            keep = self.prune.kept_range(start, start + rows.shape[0])
            rows = rows[keep.to(rows.device)]
            flat = flat[keep]
            context = context.select(keep) if context is not None else None
        self._push(rows, flat, context)

    def write_kept(
        self, logits: torch.Tensor, context: LabelContext | None = None
    ) -> None:
        """Append only the kept labels of a pruned archive, in increasing flat index.

        Lets a relabel pipeline run the teacher on kept views only
        (``prune.kept_indices()``).
        """
        if self.prune is None:
            raise ConfigError("write_kept() is for pruned archives; use write()")
        rows = self._rows(logits, "write_kept", "kept")
        if self._pushed + rows.shape[0] > self.prune.num_kept:
            raise InputError(
                f"the prune plan keeps {self.prune.num_kept} labels but "
                f"{self._pushed + rows.shape[0]} were written"
            )
        flat = None
        if self.codec.needs_context:
            stored = torch.arange(self._pushed, self._pushed + len(rows))
            flat = self.prune.kept_flat(stored)
        self._push(rows, flat, context)

    def write_block(self, block: EncodedBlock) -> None:
        """Append labels the caller encoded itself (e.g. ``TopKCodec.encode_topk``).

        Blocks become chunks as they are (see :meth:`write_chunk`).
        """
        self.write_chunk(EncodedChunk.of_block(block))

    def write_chunk(self, chunk: EncodedChunk) -> None:
        """Append one encoded chunk (e.g. from :class:`ChunkEncoder` in another process).

        Every chunk but the last must hold exactly ``chunk_size`` labels, and
        nothing may be pending from :meth:`write`. With pruning, chunks hold
        kept labels (as :meth:`write_kept` takes them); context codecs' chunks
        must have been encoded with the archive's layout and metadata.
        """
        self._check_chunk(chunk.num_labels)
        assert self._spill is not None
        self._spill.write(chunk.data)
        self._add_chunk(
            _ChunkRef(
                chunk.num_labels, len(chunk.data), chunk.sha256, self._spill_bytes
            )
        )
        self._spill_bytes += len(chunk.data)

    def link_chunk(
        self,
        source: str | os.PathLike[str],
        offset: int,
        num_labels: int,
        nbytes: int,
        sha256: bytes,
    ) -> None:
        """Append a chunk whose bytes lie in ``source`` at ``offset``, without copying
        them now: :meth:`close` copies them into the archive and checks them
        against ``sha256`` (the binary digest of the chunk's bytes). Same rules as
        :meth:`write_chunk`; ``source`` must stay unchanged until :meth:`close`.
        """
        self._check_chunk(num_labels)
        if nbytes < 0 or offset < 0 or len(sha256) != hashlib.sha256().digest_size:
            raise ConfigError(
                f"invalid chunk reference: offset {offset}, {nbytes} bytes, "
                f"{len(sha256)}-byte digest"
            )
        self._add_chunk(_ChunkRef(num_labels, nbytes, sha256, offset, Path(source)))

    def _check_chunk(self, num_labels: int) -> None:
        if self._spill is None:
            raise ConfigError("write_chunk() called on a closed ArchiveWriter")
        mode = "kept" if self.prune is not None else "all"
        if self._pending or self._mode not in (None, mode):
            raise ConfigError(
                "encoded chunks need no labels pending from write() and, with "
                "pruning, no write() of all labels (write_kept() may precede them)"
            )
        if self._chunks and self._chunks[-1].labels != self.chunk_size:
            raise ConfigError(
                "only the last block (chunk) may be shorter than chunk_size"
            )
        if not 1 <= num_labels <= self.chunk_size:
            raise ConfigError(
                f"a chunk holds 1..{self.chunk_size} labels, got {num_labels}"
            )
        total = self.prune.num_kept if self.prune is not None else self.num_expected
        if total is not None and self._stored + num_labels > total:
            raise InputError(
                f"the archive stores {total} labels but "
                f"{self._stored + num_labels} were written"
            )
        self._mode = mode

    def _add_chunk(self, ref: _ChunkRef) -> None:
        self._chunks.append(ref)
        if self.prune is None:
            self._seen += ref.labels
        self._pushed += ref.labels
        self._stored += ref.labels

    def append_side(self, name: str, rows: torch.Tensor) -> None:
        """Append rows to side tensor ``side/<name>``, spilled to a temporary file.

        The tensor grows along its first dimension; every call must give the
        same dtype and trailing shape. Memory does not grow with the rows
        appended: they are written to disk at once and copied into the archive
        on :meth:`close`. A name may not also be given in ``side_tensors``.
        """
        if self._spill is None:
            raise ConfigError("append_side() called on a closed ArchiveWriter")
        key = SIDE_PREFIX + name
        if key in self.side_tensors:
            raise ConfigError(f"side tensor {name!r} was given in side_tensors too")
        rows = rows.detach().to("cpu").contiguous()
        if rows.dim() < 1:
            raise ConfigError(f"append_side({name!r}) needs rows with a first dim")
        spill = self._side_spills.get(key)
        if spill is None:
            spill = _SideSpill(key, rows.dtype, tuple(rows.shape[1:]), self._folder)
            self._side_spills[key] = spill
        spill.append(rows)

    def _rows(self, logits: torch.Tensor, method: str, mode: str) -> torch.Tensor:
        if self._spill is None:
            raise ConfigError(f"{method}() called on a closed ArchiveWriter")
        if self._mode not in (None, mode):
            raise ConfigError(
                "use either write() or write_kept() on one archive, not both"
            )
        self._mode = mode
        if not isinstance(logits, torch.Tensor) or logits.dim() < 2:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else None
            raise InputError(f"{method}() needs (B, C) or (..., C) logits, got {shape}")
        return check_logits(logits.reshape(-1, logits.shape[-1]), self.num_classes)

    def _push(
        self,
        rows: torch.Tensor,
        flat: torch.Tensor | None = None,
        context: LabelContext | None = None,
    ) -> None:
        if not self.codec.needs_context:
            flat = None
        elif flat is not None and context is not None:
            expected = self._encoder.context_at(flat)
            if len(context) != len(flat) or not context.equals(expected):
                raise InputError(
                    "the context passed to write() differs from the one the archive's "
                    "view recipe gives for these labels; write labels in layout order "
                    "with the metadata of the relabel run that made them"
                )
        self._pushed += rows.shape[0]
        while rows.shape[0]:
            need = self.chunk_size - self._pending_rows
            take, rows = rows[:need], rows[need:]
            part = None
            if flat is not None:
                part, flat = flat[:need], flat[need:]
            if not self._pending and take.shape[0] == self.chunk_size:
                self._emit(take, part)
                continue
            self._pending.append(take.detach().to("cpu").clone())
            if part is not None:
                self._pending_flat.append(part)
            self._pending_rows += take.shape[0]
            if self._pending_rows == self.chunk_size:
                self._flush()

    def _flush(self) -> None:
        if self._pending:
            dtypes = {t.dtype for t in self._pending}
            parts = (
                self._pending
                if len(dtypes) == 1
                else [t.float() for t in self._pending]
            )
            flat = torch.cat(self._pending_flat) if self._pending_flat else None
            self._emit(torch.cat(parts), flat)
        self._pending, self._pending_rows, self._pending_flat = [], 0, []

    def _emit(self, rows: torch.Tensor, flat: torch.Tensor | None = None) -> None:
        assert self._spill is not None
        chunk = self._encoder.encode(rows, flat)
        self._spill.write(chunk.data)
        ref = _ChunkRef(
            chunk.num_labels, len(chunk.data), chunk.sha256, self._spill_bytes
        )
        self._chunks.append(ref)
        self._spill_bytes += len(chunk.data)
        self._stored += rows.shape[0]

    # -- finishing ----------------------------------------------------------------
    def close(self) -> StorageAccount:
        """Encode the last short chunk and write the archive atomically."""
        if self._spill is None:
            if self.account is None:
                raise ConfigError("ArchiveWriter was aborted; nothing was written")
            return self.account
        try:
            self._flush()
            layout = self._final_layout()
            static = static_order(
                {
                    **{
                        MODEL_PREFIX + k: v
                        for k, v in self.codec.model_tensors().items()
                    },
                    **self.side_tensors,
                    **{k: v.tensor() for k, v in self._side_spills.items()},
                }
            )
            static, checksums = self._digests(static)
            digests = dict(static)[DIGESTS_NAME]
            header = build_header(
                codec=CodecEntry(
                    name=self.codec.kind,
                    id=self.codec.codec_id,
                    config=self.codec.to_config(),
                ),
                num_classes=self.num_classes,
                layout=layout,
                chunks=ChunkTable(self.chunk_size, [c.labels for c in self._chunks]),
                prune=self.prune.to_dict() if self.prune is not None else None,
                metadata=self.metadata,
                checksums=checksums,
                reference=self.reference,
            )
            prefix = container_prefix(header, static, [c.nbytes for c in self._chunks])
            with atomic_path(self.path) as tmp, open(tmp, "wb") as out:
                out.write(prefix)
                for _, tensor in static:
                    _write_tensor(out, tensor)
                self._copy_payload(out)
                out.flush()
                os.fsync(out.fileno())
            head = len(prefix) + digests.numel()  # the table counts as header
            self.account = self._account(header, static, head)
            logger.info("wrote %s: %s", self.path, self.account)
            return self.account
        finally:
            self._release()

    def _digests(
        self, static: list[tuple[str, torch.Tensor]]
    ) -> tuple[list[tuple[str, torch.Tensor]], dict[str, str]]:
        """Format 3: every tensor's entry digest in the ``digests`` table.

        Offsets depend on sizes only, so the entries are planned with a zero
        table of the right shape first. Returns the model/side tensors with the
        table in storage order, and the document's ``checksums`` (the table's
        own entry digest).
        """
        count = len(static) + len(self._chunks)
        placeholder = torch.zeros(count, DIGEST_BYTES, dtype=torch.uint8)
        order = static_order({**dict(static), DIGESTS_NAME: placeholder})
        entries = plan_entries(
            [(n, dtype_to_code(t.dtype), list(t.shape), _nbytes(t)) for n, t in order]
            + [
                (chunk_name(i), "U8", [c.nbytes], c.nbytes)
                for i, c in enumerate(self._chunks)
            ]
        )
        by_name = {e.name: e for e in entries}
        checksums = {
            n: self._side_spills[n].entry_digest(by_name[n])
            if n in self._side_spills
            else sha256_entry(by_name[n], t)
            for n, t in static
        }
        for i, chunk in enumerate(self._chunks):
            e = by_name[chunk_name(i)]
            descriptor = entry_descriptor(e.name, e.dtype, e.shape, e.start, e.end)
            checksums[e.name] = entry_digest(descriptor, chunk.sha256)
        table = digest_table(checksums)
        order = [(n, table if n == DIGESTS_NAME else t) for n, t in order]
        return order, {DIGESTS_NAME: sha256_entry(by_name[DIGESTS_NAME], table)}

    def _copy_payload(self, out: IO[bytes]) -> None:
        """Every chunk's bytes into ``out``, in order: runs of spilled chunks in
        one copy, linked chunks read from their files and checked on the way."""
        assert self._spill is not None
        index = 0
        while index < len(self._chunks):
            ref = self._chunks[index]
            if ref.source is None:
                stop = index
                while stop < len(self._chunks) and self._chunks[stop].source is None:
                    stop += 1
                nbytes = sum(c.nbytes for c in self._chunks[index:stop])
                _copy_range(self._spill, ref.offset, nbytes, out)
                index = stop
                continue
            try:
                with open(ref.source, "rb") as handle:
                    digest = _copy_range(
                        handle, ref.offset, ref.nbytes, out, hashed=True
                    )
            except OSError as exc:
                raise InputError(
                    f"cannot read chunk {index} from {str(ref.source)!r}: "
                    f"{exc.strerror or exc}"
                ) from exc
            if digest != ref.sha256:
                raise ChecksumError(
                    f"chunk {index} in {str(ref.source)!r} does not match its "
                    "digest: the file changed or is damaged"
                )
            index += 1

    def _final_layout(self) -> Layout:
        if self._stored == 0:
            raise InputError("no labels were written; an archive needs at least one")
        if self.layout is None:
            return Layout(("sample",), (self._stored,))
        if self.prune is not None and self._mode == "kept":
            got, want, what = self._stored, self.prune.num_kept, "kept labels"
        else:
            got, want, what = self._seen, self.layout.num_labels, "labels"
        if got != want:
            raise InputError(
                f"layout {list(self.layout.dims)} {list(self.layout.shape)} needs {want} "
                f"{what} but {got} were written"
            )
        return self.layout

    def _account(
        self, header: ArchiveHeader, static: list[tuple[str, torch.Tensor]], head: int
    ) -> StorageAccount:
        def nbytes(prefix: str) -> int:
            return sum(
                t.numel() * t.element_size() for n, t in static if n.startswith(prefix)
            )

        return StorageAccount(
            codec=self.codec.kind,
            num_labels=header.num_labels,
            num_classes=self.num_classes,
            payload_bytes=sum(c.nbytes for c in self._chunks),
            model_bytes=nbytes(MODEL_PREFIX),
            side_bytes=nbytes(SIDE_PREFIX),
            header_bytes=head,
            reference=header.reference,
        )

    def abort(self) -> None:
        """Drop everything; the destination is left untouched."""
        self._release()

    def _release(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None
        for spill in self._side_spills.values():
            spill.close()
        self._side_spills = {}
        self._pending, self._pending_rows, self._pending_flat = [], 0, []


def _check_options(
    path: Path,
    codec: Codec,
    layout: Layout | None,
    chunk_size: int,
    prune: PrunePlan | None,
    reference: str,
) -> Path:
    """Check an :class:`ArchiveWriter`'s arguments; the folder it writes into."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(
            f"output folder {str(folder)!r} does not exist; create it first"
        )
    if not codec.is_fitted:
        raise ConfigError(
            "ArchiveWriter needs a fitted codec; call codec.fit(batches) first"
        )
    if not 1 <= chunk_size <= MAX_CHUNK_LABELS:
        raise ConfigError(
            f"chunk_size must be in [1, {MAX_CHUNK_LABELS}], got {chunk_size}"
        )
    if prune is not None:
        if layout is None:
            raise ConfigError("pruning needs the layout of the label set; pass layout=")
        if (prune.dims, prune.shape) != (layout.dims, layout.shape):
            raise ConfigError(
                f"prune plan is for {list(prune.dims)} {list(prune.shape)} but the "
                f"layout is {list(layout.dims)} {list(layout.shape)}"
            )
    reference_bytes(1, 1, reference)  # validates the name
    assert codec.num_classes is not None
    if codec.num_classes > MAX_NUM_CLASSES:
        raise ConfigError(
            f"archives hold at most {MAX_NUM_CLASSES} classes, got {codec.num_classes}"
        )
    if layout is not None and layout.num_labels > MAX_NUM_LABELS:
        raise ConfigError(
            f"archives hold at most {MAX_NUM_LABELS} labels, layout has "
            f"{layout.num_labels}"
        )
    return folder


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _copy_range(
    src: IO[bytes], offset: int, nbytes: int, out: IO[bytes], *, hashed: bool = False
) -> bytes:
    """Copy ``nbytes`` of ``src`` from ``offset`` into ``out``; with ``hashed``,
    returns their sha256 (else ``b""``).

    Raises:
        InputError: ``src`` ends before ``offset + nbytes``.
    """
    digest = hashlib.sha256() if hashed else None
    src.seek(offset)
    left = nbytes
    while left:
        piece = src.read(min(left, _COPY_BYTES))
        if not piece:
            raise InputError(
                f"{getattr(src, 'name', 'a chunk file')!r} ends {left} bytes before "
                "the chunk it should hold"
            )
        if digest is not None:
            digest.update(piece)
        out.write(piece)
        left -= len(piece)
    return digest.digest() if digest is not None else b""


class _SideSpill:
    """One side tensor streamed to an unnamed temporary file, hashed as it grows."""

    def __init__(
        self, name: str, dtype: torch.dtype, tail: tuple[int, ...], folder: Path
    ) -> None:
        self.name, self.dtype, self.tail = name, dtype, tail
        self.rows = 0
        self._file: IO[bytes] = tempfile.TemporaryFile(
            prefix=".side.", suffix=".tmp", dir=folder
        )
        self._hash = hashlib.sha256()

    def append(self, rows: torch.Tensor) -> None:
        if rows.dtype != self.dtype or tuple(rows.shape[1:]) != self.tail:
            raise ConfigError(
                f"side tensor {self.name!r} has rows of {self.dtype} {list(self.tail)}; "
                f"got {rows.dtype} {list(rows.shape[1:])}"
            )
        data = tensor_bytes(rows)
        self._file.write(data)
        self._hash.update(data)
        self.rows += int(rows.shape[0])

    def entry_digest(self, entry: TensorEntry) -> str:
        """Format 3 digest of the whole tensor stored under ``entry``, without
        reading the spilled rows back (:func:`entry_digest` of the running hash)."""
        descriptor = entry_descriptor(
            entry.name, entry.dtype, entry.shape, entry.start, entry.end
        )
        return entry_digest(descriptor, self._hash.digest())

    def tensor(self) -> torch.Tensor:
        """The rows as a tensor mapped from the spill file (not read into memory)."""
        shape = (self.rows, *self.tail)
        if math.prod(shape) == 0:
            return torch.empty(shape, dtype=self.dtype)
        self._file.flush()
        raw = np.memmap(
            self._file, dtype=np.uint8, mode="c"
        )  # copy-on-write: writable view
        return torch.from_numpy(raw).view(self.dtype).reshape(shape)

    def close(self) -> None:
        self._file.close()


def _write_tensor(out: IO[bytes], tensor: torch.Tensor) -> None:
    """Write a tensor's stored bytes in pieces (a mapped side tensor stays on disk)."""
    flat = tensor.detach().reshape(-1).view(torch.uint8)
    for start in range(0, flat.numel(), _COPY_BYTES):
        out.write(flat[start : start + _COPY_BYTES].numpy().tobytes())


def _flat(logits: torch.Tensor, layout: Layout) -> torch.Tensor:
    if logits.dim() < 2 or logits.shape[:-1].numel() != layout.num_labels:
        raise InputError(
            f"logits of shape {tuple(logits.shape)} do not match layout "
            f"{list(layout.dims)} {list(layout.shape)} (expected (..., C) with "
            f"{layout.num_labels} labels)"
        )
    return logits.reshape(layout.num_labels, logits.shape[-1])


def _batches(rows: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, rows.shape[0], size):
        yield rows[start : start + size]


class WriterOptions(TypedDict, total=False):
    """The keyword options of :class:`ArchiveWriter`, as :func:`save_archive` takes them."""

    layout: Layout | None
    chunk_size: int
    prune: PrunePlan | None
    metadata: ArchiveMetadata | None
    side_tensors: Mapping[str, torch.Tensor] | None
    reference: str


def save_archive(
    path: str | os.PathLike[str],
    codec: Codec,
    logits: torch.Tensor,
    *,
    batch_size: int = 4096,
    context: LabelContext | None = None,
    **options: Unpack[WriterOptions],
) -> StorageAccount:
    """Encode a whole in-memory label set into an archive (fits the codec if needed).

    Args:
        path: destination archive.
        codec: a codec; fitted on the (kept) labels here if it is not yet.
        logits: (N, C), (N, E, C) or any (*layout.shape, C) float tensor.
        batch_size: labels handed to the codec's fit and the writer at a time.
        context: the view context of every label (flat order), for context
            codecs; default: rebuilt from the relabel recipe in ``metadata``.
        options: :class:`ArchiveWriter`'s keyword options (``layout``,
            ``chunk_size``, ``prune``, ``metadata``, ``side_tensors``,
            ``reference``); ``layout`` defaults to :meth:`Layout.for_shape` of
            ``logits.shape[:-1]``.

    Returns:
        The archive's :class:`StorageAccount`; ``total_bytes`` is its file size.

    Example:
        >>> account = save_archive("labels.lz", create_codec("topk", k=10), logits)
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() < 2:
        raise InputError("save_archive needs (..., C) logits")
    layout = options.get("layout")
    layout = layout if layout is not None else Layout.for_shape(logits.shape[:-1])
    options["layout"] = layout
    prune = options.get("prune")
    rows = _flat(logits, layout)
    if codec.needs_context and context is None:
        context = recipe_context(
            (options.get("metadata") or ArchiveMetadata()).user,
            layout.dims,
            layout.shape,
            torch.arange(layout.num_labels),
            error=ConfigError,
        )
    if context is not None and len(context) != rows.shape[0]:
        raise InputError(f"{rows.shape[0]} labels but a context of {len(context)}")
    if not codec.is_fitted:
        index = prune.kept_indices() if prune is not None else None
        kept = rows[index] if index is not None else rows
        kept_ctx = (
            context.select(index)
            if context is not None and index is not None
            else context
        )
        codec.fit_in_context(
            lambda: _batches(kept, batch_size), kept_ctx, num_labels=kept.shape[0]
        )
    with ArchiveWriter(path, codec, **options) as writer:
        for start in range(0, rows.shape[0], batch_size):
            part = (
                context.select(slice(start, start + batch_size))
                if context is not None and codec.needs_context
                else None
            )
            writer.write(rows[start : start + batch_size], part)
    assert writer.account is not None
    return writer.account
