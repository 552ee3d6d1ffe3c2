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
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

import torch

from labelzip.accounting import StorageAccount, reference_bytes
from labelzip.archive.format import (
    DEFAULT_CHUNK_SIZE,
    DIGEST_BYTES,
    DIGESTS_NAME,
    MAX_CHUNK_LABELS,
    MAX_CHUNK_VALUES,
    MAX_NUM_CLASSES,
    MAX_NUM_LABELS,
    MODEL_PREFIX,
    SIDE_PREFIX,
    ArchiveHeader,
    ArchiveMetadata,
    Layout,
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
from labelzip.codecs.base import Codec, LabelContext, check_logits
from labelzip.codecs.prune import PrunePlan
from labelzip.errors import ConfigError, InputError
from labelzip.io import atomic_path

__all__ = ["ArchiveWriter", "save_archive"]

logger = logging.getLogger(__name__)

_COPY_BYTES = 1 << 20


class ArchiveWriter:
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
        folder = self.path.parent if str(self.path.parent) else Path(".")
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
                raise ConfigError(
                    "pruning needs the layout of the label set; pass layout="
                )
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
        if codec.needs_context:
            self._context_at(torch.zeros(0, dtype=torch.int64))  # recipe usable?
        self._seen = 0  # labels received through write()
        self._stored = 0  # labels handed to the chunker
        self._mode: str | None = None  # "all" (write) or "kept" (write_kept)
        # (labels, bytes, binary sha256 of the bytes) of each chunk
        self._chunks: list[tuple[int, int, bytes]] = []
        self._spill: IO[bytes] | None = tempfile.TemporaryFile(
            prefix=f".{self.path.name}.", suffix=".chunks", dir=folder
        )
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

    def _context_at(self, flat: torch.Tensor) -> LabelContext:
        """The view context of flat labels, from the metadata's relabel recipe."""
        from labelzip.pipelines.relabel_types import recipe_context

        if self.layout is None:
            raise ConfigError(
                f"codec {self.codec.kind} encodes labels with their view context and "
                "needs the relabel layout [epoch, sample]; pass layout= and the "
                "relabel metadata (or write with `labelzip relabel`)"
            )
        return recipe_context(
            self.metadata.user,
            self.layout.dims,
            self.layout.shape,
            flat,
            error=ConfigError,
        )

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
            if len(context) != len(flat) or not context.equals(self._context_at(flat)):
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
        if rows.shape[0] * self.num_classes > MAX_CHUNK_VALUES:
            raise ConfigError(
                f"a chunk of {rows.shape[0]} labels x {self.num_classes} classes "
                f"exceeds the {MAX_CHUNK_VALUES} values a reader decodes at once; "
                "use a smaller chunk_size"
            )
        if self.codec.needs_context:
            assert flat is not None and len(flat) == rows.shape[0]
            block = self.codec.encode_in_context(rows, self._context_at(flat))
        else:
            block = self.codec.encode(rows)
        if block.num_labels != rows.shape[0]:
            raise ConfigError(
                f"{self.codec.kind} encoded {block.num_labels} labels from {rows.shape[0]}"
            )
        data = tensor_bytes(block.data.detach().to("cpu", torch.uint8))
        self._spill.write(data)
        self._chunks.append((rows.shape[0], len(data), hashlib.sha256(data).digest()))
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
                }
            )
            static, checksums = self._digests(static)
            digests = dict(static)[DIGESTS_NAME]
            header = build_header(
                codec_name=self.codec.kind,
                codec_id=self.codec.codec_id,
                codec_config=self.codec.to_config(),
                num_classes=self.num_classes,
                layout=layout,
                num_stored=self._stored,
                chunk_size=self.chunk_size,
                chunk_labels=[c[0] for c in self._chunks],
                prune=self.prune.to_dict() if self.prune is not None else None,
                metadata=self.metadata,
                checksums=checksums,
                reference=self.reference,
            )
            prefix = container_prefix(header, static, [c[1] for c in self._chunks])
            with atomic_path(self.path) as tmp, open(tmp, "wb") as out:
                out.write(prefix)
                for _, tensor in static:
                    out.write(tensor_bytes(tensor))
                self._spill.seek(0)
                shutil.copyfileobj(self._spill, out, _COPY_BYTES)
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
            + [(chunk_name(i), "U8", [c[1]], c[1]) for i, c in enumerate(self._chunks)]
        )
        by_name = {e.name: e for e in entries}
        checksums = {n: sha256_entry(by_name[n], t) for n, t in static}
        for i, (_, _, data_sha) in enumerate(self._chunks):
            e = by_name[chunk_name(i)]
            descriptor = entry_descriptor(e.name, e.dtype, e.shape, e.start, e.end)
            checksums[e.name] = entry_digest(descriptor, data_sha)
        table = digest_table(checksums)
        order = [(n, table if n == DIGESTS_NAME else t) for n, t in order]
        return order, {DIGESTS_NAME: sha256_entry(by_name[DIGESTS_NAME], table)}

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
            payload_bytes=sum(c[1] for c in self._chunks),
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
        self._pending, self._pending_rows, self._pending_flat = [], 0, []

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


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


def save_archive(
    path: str | os.PathLike[str],
    codec: Codec,
    logits: torch.Tensor,
    *,
    layout: Layout | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    prune: PrunePlan | None = None,
    metadata: ArchiveMetadata | None = None,
    side_tensors: Mapping[str, torch.Tensor] | None = None,
    batch_size: int = 4096,
    context: LabelContext | None = None,
) -> StorageAccount:
    """Encode a whole in-memory label set into an archive (fits the codec if needed).

    Args:
        path: destination archive.
        codec: a codec; fitted on the (kept) labels here if it is not yet.
        logits: (N, C), (N, E, C) or any (*layout.shape, C) float tensor.
        layout: defaults to :meth:`Layout.for_shape` of ``logits.shape[:-1]``.

        context: the view context of every label (flat order), for context
            codecs; default: rebuilt from the relabel recipe in ``metadata``.

    Returns:
        The archive's :class:`StorageAccount`; ``total_bytes`` is its file size.

    Example:
        >>> account = save_archive("labels.lz", create_codec("topk", k=10), logits)
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() < 2:
        raise InputError("save_archive needs (..., C) logits")
    layout = layout if layout is not None else Layout.for_shape(logits.shape[:-1])
    rows = _flat(logits, layout)
    if codec.needs_context and context is None:
        from labelzip.pipelines.relabel_types import recipe_context

        context = recipe_context(
            (metadata or ArchiveMetadata()).user,
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
    with ArchiveWriter(
        path,
        codec,
        layout=layout,
        chunk_size=chunk_size,
        prune=prune,
        metadata=metadata,
        side_tensors=side_tensors,
    ) as writer:
        for start in range(0, rows.shape[0], batch_size):
            part = (
                context.select(slice(start, start + batch_size))
                if context is not None and codec.needs_context
                else None
            )
            writer.write(rows[start : start + batch_size], part)
    assert writer.account is not None
    return writer.account
