"""Check what an archive's file claims before a reader trusts it.

:func:`parse_header` reads the labelzip header from the container metadata
(its own sha256, the format version, the codec id); :func:`check_tensors`
checks that the header and the container agree, with every count bounded by
the format's limits before anything is allocated (:func:`header_limits`);
:func:`tensor_digest` recomputes a stored tensor's digest as its format version
defines it, and :func:`tensor_from_bytes` turns read bytes into a tensor.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable

import torch

from labelzip.archive.format import (
    CHUNK_PREFIX,
    DIGEST_BYTES,
    DIGESTS_NAME,
    FORMAT_NAME,
    MAX_CHUNK_LABELS,
    MAX_CHUNK_VALUES,
    MAX_NUM_CLASSES,
    MAX_NUM_LABELS,
    METADATA_KEY,
    METADATA_SHA_KEY,
    READABLE_VERSIONS,
    ArchiveHeader,
    ContainerHeader,
    Layout,
    TensorEntry,
    chunk_name,
    entry_descriptor,
    entry_digest,
)
from labelzip.archive.jsonlimits import load_json
from labelzip.codecs.registry import CODEC_IDS
from labelzip.errors import ArchiveFormatError, ChecksumError, ConfigError

__all__ = [
    "check_tensors",
    "header_limits",
    "parse_header",
    "tensor_digest",
    "tensor_from_bytes",
]


def tensor_digest(
    version: int, entry: TensorEntry, pieces: Iterable[bytes | bytearray]
) -> str:
    """The stored digest's value for a tensor whose bytes come in ``pieces``.

    Version 3 binds the entry (name, dtype, shape, offsets) and the bytes;
    version 2 the name and the bytes (the digests tensor: its bytes); version 1
    the bytes only (:data:`~labelzip.archive.format.INTEGRITY`).
    """
    if version == 2 and entry.name != DIGESTS_NAME:
        digest = hashlib.sha256(entry.name.encode("utf-8") + b"\x00")
    else:
        digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    if version >= 3:
        descriptor = entry_descriptor(
            entry.name, entry.dtype, entry.shape, entry.start, entry.end
        )
        return entry_digest(descriptor, digest.digest())
    return digest.hexdigest()


def tensor_from_bytes(
    data: bytearray, dtype: torch.dtype, shape: tuple[int, ...]
) -> torch.Tensor:
    """A tensor owning ``data`` (little-endian, as safetensors stores it)."""
    if not data:
        return torch.empty(shape, dtype=dtype)
    flat = torch.frombuffer(data, dtype=torch.uint8)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if sys.byteorder == "big" and itemsize > 1:  # pragma: no cover
        flat = flat.reshape(-1, itemsize).flip(1).reshape(-1).clone()
    return flat.view(dtype).reshape(shape)


def parse_header(container: ContainerHeader, name: str) -> ArchiveHeader:
    meta = container.metadata
    if METADATA_KEY not in meta:
        raise ArchiveFormatError(
            f"{name!r} is a safetensors file but not a labelzip archive (no "
            f"{METADATA_KEY!r} metadata); create one with `labelzip compress`"
        )
    doc = meta[METADATA_KEY]
    if hashlib.sha256(doc.encode("utf-8")).hexdigest() != meta.get(METADATA_SHA_KEY):
        raise ChecksumError(
            f"archive {name!r} is corrupted: its labelzip header does not match its "
            "checksum; re-create or re-download the file"
        )
    raw = load_json(doc, f"archive {name!r} has an unreadable header")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise ArchiveFormatError(f"{name!r} is not a labelzip archive (format field)")
    version = raw.get("format_version")
    if version not in READABLE_VERSIONS:
        readable = " or ".join(str(v) for v in READABLE_VERSIONS)
        raise ArchiveFormatError(
            f"archive {name!r} has format version {version!r}; this labelzip reads "
            f"version {readable}; upgrade labelzip to read it"
        )
    codec = raw.get("codec")
    codec = codec if isinstance(codec, dict) else {}
    known = {cid: cname for cname, (cid, _) in CODEC_IDS.items()}
    cid = codec.get("id")
    if not isinstance(cid, int) or cid not in known or known[cid] != codec.get("name"):
        raise ArchiveFormatError(
            f"archive {name!r} uses codec id {codec.get('id')!r} "
            f"({codec.get('name')!r}) which this labelzip does not know; upgrade "
            "labelzip to read it"
        )
    try:
        return ArchiveHeader.model_validate(raw)
    except Exception as exc:
        raise ArchiveFormatError(
            f"archive {name!r} has an invalid header: {exc}"
        ) from exc


def check_tensors(
    container: ContainerHeader, header: ArchiveHeader, name: str
) -> Layout:
    """Header and container agree: same tensors, chunk counts add up; the layout."""
    bad = header_limits(header, container)
    if bad:
        raise ArchiveFormatError(f"archive {name!r} has an invalid header: {bad}")
    chunk_names = {chunk_name(i) for i in range(len(header.chunk_labels))}
    found = set(container.entries)
    digests = container.entries.get(DIGESTS_NAME)
    if header.format_version == 1 and found != set(header.checksums):
        bad = f"tensors {sorted(found ^ set(header.checksums))[:4]} are not in both"
    elif header.format_version > 1 and set(header.checksums) != {DIGESTS_NAME}:
        bad = f"checksums should name only {DIGESTS_NAME!r}"
    elif header.format_version > 1 and (
        digests is None
        or digests.dtype != "U8"
        or digests.shape != (len(found) - 1, DIGEST_BYTES)
    ):
        bad = f"the {DIGESTS_NAME!r} tensor does not have one row per tensor"
    elif {n for n in found if n.startswith(CHUNK_PREFIX)} != chunk_names:
        bad = "chunk tensors do not match chunk_labels"
    elif sum(header.chunk_labels) != header.num_stored or min(header.chunk_labels) < 1:
        bad = f"chunk_labels add up to {sum(header.chunk_labels)}, not {header.num_stored}"
    elif any(
        container.entries[n].dtype != "U8"
        or container.entries[n].shape != (container.entries[n].nbytes,)
        for n in chunk_names
    ):
        bad = "chunk tensors must be one-dimensional uint8"
    elif (
        header.class_names is not None and len(header.class_names) != header.num_classes
    ):
        bad = f"{len(header.class_names)} class names for {header.num_classes} classes"
    else:
        try:
            layout = Layout.from_dict(header.layout.model_dump())
        except ConfigError as exc:
            raise ArchiveFormatError(
                f"archive {name!r} has an invalid layout: {exc}"
            ) from exc
        stored = header.num_labels if header.prune is None else None
        if layout.num_labels != header.num_labels:
            bad = f"layout holds {layout.num_labels} labels, header says {header.num_labels}"
        elif stored is not None and stored != header.num_stored:
            bad = f"{header.num_stored} labels stored but {stored} represented unpruned"
    if bad:
        raise ArchiveFormatError(f"archive {name!r} has an inconsistent header: {bad}")
    return layout


def header_limits(header: ArchiveHeader, container: ContainerHeader) -> str:
    """What is wrong with the header's counts, checked before anything is allocated.

    Every count is bounded by the format's limits (``MAX_*`` in
    :mod:`labelzip.archive.format`) and chunk counts by the chunk tensors the
    file holds, so neither a decode nor the chunk table can be asked for more
    memory than the limits allow.
    """
    h = header
    chunks = sum(1 for n in container.entries if n.startswith(CHUNK_PREFIX))
    sizes = h.layout.shape
    if h.num_classes > MAX_NUM_CLASSES:
        return f"{h.num_classes} classes exceed the limit of {MAX_NUM_CLASSES}"
    if not 1 <= h.chunk_size <= MAX_CHUNK_LABELS:
        return f"chunk_size {h.chunk_size} outside [1, {MAX_CHUNK_LABELS}]"
    if len(h.chunk_labels) != chunks:
        return f"{len(h.chunk_labels)} chunk counts for {chunks} chunk tensors"
    if any(not 1 <= n <= h.chunk_size for n in h.chunk_labels):
        return f"chunk label counts must lie in [1, chunk_size={h.chunk_size}]"
    widest = max(h.chunk_labels, default=0)
    if widest * h.num_classes > MAX_CHUNK_VALUES:
        return (
            f"a chunk of {widest} labels x {h.num_classes} classes exceeds the "
            f"limit of {MAX_CHUNK_VALUES} decoded values per chunk"
        )
    if any(s < 1 for s in sizes) or any(s > MAX_NUM_LABELS for s in sizes):
        return f"layout sizes {sizes[:8]} must lie in [1, {MAX_NUM_LABELS}]"
    represented = 1
    for size in sizes:
        represented *= size
        if represented > MAX_NUM_LABELS:
            return f"layout {sizes[:8]} exceeds the limit of {MAX_NUM_LABELS} labels"
    if not h.num_stored <= h.num_labels <= MAX_NUM_LABELS:
        return f"{h.num_stored} stored labels for {h.num_labels} represented"
    return ""
