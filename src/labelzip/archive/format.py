"""The labelzip archive format: the single source of truth for what is on disk.

An archive is a plain safetensors file (8-byte little-endian header length, a
JSON header, then the raw bytes of every tensor), so any safetensors reader can
open it and memory-map it. labelzip adds:

- ``__metadata__["labelzip"]``: one JSON document (:class:`ArchiveHeader`) that
  describes the codec, the label layout, the chunks, pruning and checksums;
- ``__metadata__["labelzip_sha256"]``: the sha256 of that document's UTF-8 bytes;
- tensors ``model/<name>`` (stored once), ``side/<name>`` (side information) and
  ``chunk/<000000>`` (``uint8`` blocks of consecutive stored labels);
- (version 2 and 3) tensor ``digests``: one binary sha256 per other tensor,
  32-byte rows in sorted name order; the document's ``checksums`` holds only
  the hex digest of ``digests`` (version 1 listed every tensor's hex sha256 of
  its bytes there: ~84 header bytes per tensor instead of 32).

What a digest covers (:data:`INTEGRITY`): version 3 (:func:`sha256_entry`)
binds each tensor's whole header entry (name, dtype, shape, data offsets) and
its bytes, and the document binds the ``digests`` tensor the same way, so the
document's own sha256 covers everything a decoder reads. Version 2
(:func:`sha256_named`) covers each tensor's name and bytes, version 1 its
bytes only: a dtype or shape edit in the safetensors header is not detected by
their digests (the codecs' own tensor checks still refuse most of them).

docs/format.md is the human-readable specification of the same rules.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from labelzip.archive.jsonlimits import load_json
from labelzip.errors import ArchiveFormatError, ConfigError

__all__ = [
    "CHUNK_PREFIX",
    "DEFAULT_CHUNK_SIZE",
    "DIGESTS_NAME",
    "DIGEST_BYTES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INTEGRITY",
    "MAX_CHUNK_LABELS",
    "MAX_CHUNK_VALUES",
    "MAX_NUM_CLASSES",
    "MAX_NUM_LABELS",
    "METADATA_KEY",
    "METADATA_SHA_KEY",
    "MODEL_PREFIX",
    "READABLE_VERSIONS",
    "SIDE_PREFIX",
    "ArchiveHeader",
    "ArchiveMetadata",
    "ChunkTable",
    "CodecEntry",
    "ContainerHeader",
    "Layout",
    "LayoutEntry",
    "TensorEntry",
    "build_header",
    "chunk_name",
    "container_prefix",
    "digest_map",
    "digest_table",
    "dtype_from_code",
    "dtype_to_code",
    "entry_descriptor",
    "entry_digest",
    "encode_container_header",
    "read_container_header",
    "plan_entries",
    "sha256_entry",
    "sha256_named",
    "sha256_tensor",
    "static_order",
    "tensor_bytes",
]

FORMAT_NAME = "labelzip"
FORMAT_VERSION = 3  # what the writer writes
READABLE_VERSIONS = (1, 2, 3)  # what the reader reads
# What `--verify` checks, per version (reported by `labelzip info`).
INTEGRITY = {
    1: "tensor bytes only (format 1)",
    2: "tensor names and bytes only (format 2)",
    3: "header entries, labelzip document and tensor bytes (format 3)",
}
DIGESTS_NAME = "digests"  # version 2 and 3: the (T, 32) uint8 sha256 table
DIGEST_BYTES = 32
METADATA_KEY = "labelzip"
METADATA_SHA_KEY = "labelzip_sha256"
MODEL_PREFIX = "model/"
SIDE_PREFIX = "side/"
CHUNK_PREFIX = "chunk/"
DEFAULT_CHUNK_SIZE = 4096

# safetensors refuses headers above 100 MB; we refuse earlier with our own words.
MAX_HEADER_BYTES = 100_000_000
# Limits of the format, checked by the reader before it allocates anything and
# by the writer before it writes (docs/format.md, "Limits").
MAX_NUM_CLASSES = 1 << 24  # C: 16.7 M values per label (LLM vocabularies: < 1 M)
MAX_NUM_LABELS = 1 << 48  # labels represented (pruned included)
MAX_CHUNK_LABELS = 1 << 24  # stored labels per chunk
MAX_CHUNK_VALUES = 1 << 31  # chunk labels x C: one decoded chunk, 8 GiB of float32
MAX_TENSOR_DIMS = 16  # dimensions of a stored tensor

_DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint64: "U64",
    torch.uint32: "U32",
    torch.uint16: "U16",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}


def dtype_to_code(dtype: torch.dtype) -> str:
    """safetensors dtype string (``"F16"``, ``"U8"``, ...) of a torch dtype."""
    if dtype not in _DTYPE_CODES:
        raise ConfigError(f"tensors of dtype {dtype} cannot be stored in an archive")
    return _DTYPE_CODES[dtype]


def dtype_from_code(code: str) -> torch.dtype:
    """torch dtype of a safetensors dtype string."""
    if code not in _CODE_DTYPES:
        raise ArchiveFormatError(
            f"archive holds a tensor of unsupported dtype {code!r}"
        )
    return _CODE_DTYPES[code]


def chunk_name(index: int) -> str:
    """Tensor name of chunk ``index`` (``chunk/000042``)."""
    return f"{CHUNK_PREFIX}{index:06d}"


def sha256_tensor(tensor: torch.Tensor) -> str:
    """Hex sha256 of a tensor's bytes exactly as stored (row-major, little-endian)."""
    data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()


def sha256_named(name: str, tensor: torch.Tensor) -> str:
    """Hex sha256 of a tensor's name (UTF-8), one zero byte, then its stored bytes.

    Format 2's per-tensor digest: it covers the name too, so a renamed tensor
    fails its check as in format 1, where the names were in the checksummed
    document.
    """
    data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    digest = hashlib.sha256(name.encode("utf-8") + b"\x00")
    digest.update(data.numpy().tobytes())
    return digest.hexdigest()


def entry_descriptor(
    name: str, code: str, shape: Sequence[int], start: int, end: int
) -> bytes:
    """Canonical bytes of one safetensors header entry, as format 3 hashes it.

    Compact JSON with sorted keys:
    ``{"data_offsets":[start,end],"dtype":code,"name":name,"shape":[...]}``
    (ASCII, non-ASCII characters escaped as ``\\uXXXX``).
    """
    doc = {
        "data_offsets": [int(start), int(end)],
        "dtype": code,
        "name": name,
        "shape": [int(s) for s in shape],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")


def entry_digest(descriptor: bytes, data_sha256: bytes) -> str:
    """Format 3 digest: hex sha256 of ``descriptor``, one newline, then the
    32-byte binary sha256 of the tensor's bytes.

    The data digest has a fixed length at the end, so no two (entry, bytes)
    pairs hash the same input; the writer hashes each chunk once while
    streaming and binds its entry when the offsets are known.
    """
    if len(data_sha256) != DIGEST_BYTES:
        raise ConfigError("entry_digest needs the 32-byte binary sha256 of the data")
    return hashlib.sha256(descriptor + b"\n" + data_sha256).hexdigest()


def sha256_entry(entry: TensorEntry, tensor: torch.Tensor) -> str:
    """Format 3 digest of a tensor stored under ``entry`` (see :func:`entry_digest`)."""
    data = hashlib.sha256(tensor_bytes(tensor)).digest()
    descriptor = entry_descriptor(
        entry.name, entry.dtype, entry.shape, entry.start, entry.end
    )
    return entry_digest(descriptor, data)


def digest_table(checksums: Mapping[str, str]) -> torch.Tensor:
    """The version-2 ``digests`` tensor: (T, 32) uint8, one binary sha256 per row.

    ``checksums`` maps names to :func:`sha256_named` digests. Rows follow the
    tensor names in sorted order (Python string order), so a reader ties each
    digest to a name without a stored list of names.
    """
    rows = [bytes.fromhex(checksums[name]) for name in sorted(checksums)]
    if any(len(row) != DIGEST_BYTES for row in rows):
        raise ConfigError("checksums must be hex sha256 digests (64 characters)")
    data = bytearray(b"".join(rows))
    if not data:
        return torch.zeros(0, DIGEST_BYTES, dtype=torch.uint8)
    table = torch.frombuffer(data, dtype=torch.uint8)
    return table.reshape(len(rows), DIGEST_BYTES).clone()


def digest_map(table: torch.Tensor, names: Sequence[str]) -> dict[str, str]:
    """Inverse of :func:`digest_table`: tensor name -> hex sha256.

    Raises:
        ArchiveFormatError: the table does not have one 32-byte row per name.
    """
    ordered = sorted(names)
    if table.dtype != torch.uint8 or tuple(table.shape) != (
        len(ordered),
        DIGEST_BYTES,
    ):
        raise ArchiveFormatError(
            f"the {DIGESTS_NAME!r} tensor should be ({len(ordered)}, {DIGEST_BYTES}) "
            f"uint8, got {tuple(table.shape)} {table.dtype}"
        )
    raw = table.contiguous().numpy().tobytes()
    return {
        name: raw[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES].hex()
        for i, name in enumerate(ordered)
    }


# -- label layout ----------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Named dimensions of the label set; labels are numbered row-major over them.

    A (N, E, C) logits tensor has ``Layout(("sample", "view"), (N, E))``: label
    ``n * E + e`` is view ``e`` of sample ``n``. The relabel pipeline writes
    ``("epoch", "sample")``; LM distillation ``("sequence", "position")``.
    """

    dims: tuple[str, ...]
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.dims) != len(self.shape) or not self.dims:
            raise ConfigError(
                f"layout needs one name per dimension, got dims {list(self.dims)} "
                f"for shape {list(self.shape)}"
            )
        if len(set(self.dims)) != len(self.dims):
            raise ConfigError(f"layout dims must be distinct, got {list(self.dims)}")
        for name in self.dims:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"layout dims must be non-empty names, got {name!r}")
        for size in self.shape:
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise ConfigError(
                    f"layout sizes must be positive integers, got {list(self.shape)}"
                )

    @classmethod
    def for_shape(
        cls, shape: Sequence[int], dims: Sequence[str] | None = None
    ) -> Layout:
        """Layout of a logits tensor whose shape without the class axis is ``shape``.

        Default names: ``("sample",)`` for (N, C), ``("sample", "view")`` for
        (N, E, C), ``dim0, dim1, ...`` otherwise.
        """
        shape = tuple(int(s) for s in shape)
        if dims is None:
            defaults = {1: ("sample",), 2: ("sample", "view")}
            dims = defaults.get(len(shape), tuple(f"dim{i}" for i in range(len(shape))))
        return cls(tuple(dims), shape)

    @property
    def num_labels(self) -> int:
        return math.prod(self.shape)

    def ravel(self, *coords: torch.Tensor | int) -> torch.Tensor:
        """Flat label index of coordinates given per dimension (broadcast)."""
        if len(coords) != len(self.dims):
            raise ConfigError(
                f"layout {list(self.dims)} needs {len(self.dims)} coordinates, "
                f"got {len(coords)}"
            )
        flat = torch.zeros((), dtype=torch.int64)
        for coord, size in zip(coords, self.shape, strict=True):
            flat = flat * size + torch.as_tensor(coord, dtype=torch.int64)
        return flat

    def to_dict(self) -> dict[str, Any]:
        return {"dims": list(self.dims), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Layout:
        return cls(tuple(data["dims"]), tuple(data["shape"]))


@dataclass(frozen=True)
class ArchiveMetadata:
    """Descriptive metadata stored in the header; none of it is needed to decode.

    Attributes:
        class_names: name of each class id (length C), so a class-order mismatch
            between teacher and student can be detected.
        dataset_fingerprint: anything that identifies the images or tokens the
            labels belong to (e.g. a sha256 of the distilled image files).
        teacher: identifier of the teacher model.
        user: free-form JSON-serialisable key/values.
    """

    class_names: tuple[str, ...] | None = None
    dataset_fingerprint: str | None = None
    teacher: str | None = None
    user: Mapping[str, Any] = field(default_factory=dict)


# -- the JSON document under __metadata__["labelzip"] ---------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CodecEntry(_Strict):
    """Which codec wrote the chunks and how to rebuild it."""

    name: str = Field(description="registry name of the codec, e.g. 'topk'")
    id: int = Field(ge=0, description="stable integer id from registry.CODEC_IDS")
    config: dict[str, Any] = Field(description="codec.to_config(), JSON")


class LayoutEntry(_Strict):
    dims: list[str] = Field(min_length=1, description="dimension names")
    shape: list[int] = Field(min_length=1, description="dimension sizes")


class ArchiveHeader(_Strict):
    """The ``labelzip`` metadata document (schema in docs/format.md)."""

    format: str = Field(description="always 'labelzip'")
    format_version: int = Field(description="archive format version")
    codec: CodecEntry
    num_classes: int = Field(ge=2, description="C, values per dense label")
    num_labels: int = Field(ge=1, description="labels represented, pruned included")
    num_stored: int = Field(ge=1, description="labels stored in chunks")
    layout: LayoutEntry
    chunk_size: int = Field(
        ge=1, description="stored labels per chunk (last may be short)"
    )
    chunk_labels: list[int] = Field(description="stored labels in each chunk, in order")
    prune: dict[str, Any] | None = Field(
        default=None, description="PrunePlan.to_dict() or null"
    )
    reference: Literal["fp32", "fp16", "bf16"] = Field(
        default="fp16", description="dense reference the ratio is stated against"
    )
    class_names: list[str] | None = Field(
        default=None, description="name of each class id (length num_classes)"
    )
    dataset_fingerprint: str | None = Field(
        default=None, description="identifies the images/tokens the labels belong to"
    )
    teacher: str | None = Field(default=None, description="teacher model identifier")
    user: dict[str, Any] = Field(default_factory=dict, description="free-form metadata")
    checksums: dict[str, str] = Field(
        description="tensor name -> hex sha256 of its bytes: every tensor (version "
        "1), or only 'digests', which holds the others' (version 2)"
    )

    def to_json(self) -> str:
        """Canonical serialisation: sorted keys, no spaces (byte-identical reruns)."""
        return json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))


# -- the safetensors container ---------------------------------------------------------


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the container: its name, dtype code, shape and byte range."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def plan_entries(
    tensors: Sequence[tuple[str, str, Sequence[int], int]],
) -> list[TensorEntry]:
    """Entries of tensors stored back to back: ``(name, dtype code, shape, nbytes)``
    in storage order -> each one's byte range (offsets from the data start).

    Offsets depend on sizes only, so a writer knows every entry (and can hash
    it, format 3) before the header that holds them is built.
    """
    entries: list[TensorEntry] = []
    offset = 0
    for name, code, shape, nbytes in tensors:
        entries.append(TensorEntry(name, code, tuple(shape), offset, offset + nbytes))
        offset += nbytes
    return entries


def encode_container_header(
    metadata: Mapping[str, str],
    tensors: Sequence[tuple[str, str, Sequence[int], int]],
) -> tuple[bytes, list[TensorEntry]]:
    """The bytes before the tensor data of a safetensors file.

    Args:
        metadata: the ``__metadata__`` string map.
        tensors: ``(name, dtype code, shape, nbytes)`` in the order their bytes
            follow the header (each tensor's bytes directly after the previous).

    Returns:
        ``(prefix, entries)``: 8-byte length + JSON header padded with spaces to
        a multiple of 8 bytes, and the byte range of each tensor.
    """
    entries = plan_entries(tensors)
    doc: dict[str, Any] = {"__metadata__": dict(metadata)}
    for entry in entries:
        doc[entry.name] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [entry.start, entry.end],
        }
    header = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    header += b" " * (
        -len(header) % 8
    )  # data starts 8-byte aligned, as safetensors does
    return struct.pack("<Q", len(header)) + header, entries


@dataclass(frozen=True)
class ContainerHeader:
    """A parsed safetensors header: metadata, tensor entries and the data offset."""

    metadata: dict[str, str]
    entries: dict[str, TensorEntry]
    data_start: int
    file_size: int

    @property
    def tensor_bytes(self) -> int:
        return sum(entry.nbytes for entry in self.entries.values())


def read_container_header(path: str | os.PathLike[str]) -> ContainerHeader:
    """Parse and check the safetensors framing of ``path``.

    Raises:
        ArchiveFormatError: not a safetensors file, or truncated / over-long.
    """
    name = os.fspath(path)
    try:
        file_size = os.path.getsize(name)
        with open(name, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ArchiveFormatError(
                    f"{name!r} is not a labelzip archive: {file_size} bytes is too "
                    "short for a safetensors header"
                )
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_HEADER_BYTES, file_size - 8):
                raise ArchiveFormatError(
                    f"{name!r} is not a labelzip archive (or is truncated): its "
                    f"safetensors header claims {length} bytes but the file has "
                    f"{file_size}"
                )
            raw = handle.read(length)
    except OSError as exc:
        raise ArchiveFormatError(f"cannot read archive {name!r}: {exc}") from exc
    doc = load_json(
        raw,
        f"{name!r} is not a labelzip archive: its header is not a valid safetensors "
        "header",
    )
    if not isinstance(doc, dict):
        raise ArchiveFormatError(
            f"{name!r} is not a labelzip archive: its header is not a JSON object"
        )
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(v, str) for v in metadata.values()
    ):
        raise ArchiveFormatError(
            f"{name!r} is not a labelzip archive: its __metadata__ is not a map of "
            "strings"
        )
    data_start = 8 + length
    entries = {
        key: _parse_entry(key, value, file_size - data_start, name)
        for key, value in doc.items()
    }
    _check_contiguous(entries, file_size - data_start, name)
    return ContainerHeader(
        metadata={str(k): str(v) for k, v in metadata.items()},
        entries=entries,
        data_start=data_start,
        file_size=file_size,
    )


def _parse_entry(key: str, value: Any, data_bytes: int, name: str) -> TensorEntry:
    """One checked header entry: known dtype, int shape and offsets within the file,
    shape x element size = byte range (safetensors' own rule, checked before use)."""

    def bad(why: str) -> ArchiveFormatError:
        return ArchiveFormatError(
            f"{name!r} is not a valid archive: header entry {key[:80]!r} {why}"
        )

    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise bad("needs exactly dtype, shape and data_offsets")
    code, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if not isinstance(code, str) or code not in _CODE_DTYPES:
        raise bad(f"has unsupported dtype {str(code)[:20]!r}")
    ints = _counts(shape, MAX_TENSOR_DIMS)
    pair = _counts(offsets, 2)
    if ints is None or pair is None or len(pair) != 2:
        raise bad(
            f"needs a shape of at most {MAX_TENSOR_DIMS} non-negative integers and "
            "two non-negative integer data_offsets"
        )
    start, end = pair
    if end > data_bytes:
        raise ArchiveFormatError(
            f"archive {name!r} is truncated: its header describes tensor "
            f"{key[:80]!r} up to byte {end} of the data but the file has "
            f"{data_bytes} data bytes"
        )
    if start > end or any(s > data_bytes for s in ints):
        raise bad(f"has shape {ints[:8]} or offsets [{start}, {end}] out of range")
    dtype = _CODE_DTYPES[code]
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if math.prod(ints) * itemsize != end - start:
        raise bad(
            f"has shape {ints[:8]} of {code} but {end - start} bytes; the header "
            "was edited or is corrupted"
        )
    return TensorEntry(key, code, tuple(ints), start, end)


def _counts(value: Any, most: int) -> list[int] | None:
    """``value`` as a list of at most ``most`` non-negative ints, else None."""
    if not isinstance(value, list) or len(value) > most:
        return None
    if not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        return None
    return [int(v) for v in value]


def _check_contiguous(
    entries: Mapping[str, TensorEntry], data_bytes: int, name: str
) -> None:
    """Tensor byte ranges tile the data exactly: no gap, overlap or trailing bytes."""
    offset = 0
    for entry in sorted(entries.values(), key=lambda e: (e.start, e.end)):
        if entry.start != offset:
            raise ArchiveFormatError(
                f"archive {name!r} is corrupted: tensor {entry.name[:80]!r} starts at "
                f"byte {entry.start} of its data, expected {offset}"
            )
        offset = entry.end
    if offset < data_bytes:
        raise ArchiveFormatError(
            f"archive {name!r} has {data_bytes - offset} unexpected bytes after its "
            "last tensor; it was not written by labelzip"
        )


# -- building a header -----------------------------------------------------------------


def static_order(tensors: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """Model/side tensors in storage order: widest element first, then by name.

    Every tensor's byte size is a multiple of its element size, so this order
    keeps each tensor naturally aligned after the 8-byte-aligned header.
    """
    return sorted(tensors.items(), key=lambda kv: (-kv[1].element_size(), kv[0]))


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's bytes as stored (row-major, native little-endian)."""
    data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    return data.numpy().tobytes()


@dataclass(frozen=True)
class ChunkTable:
    """How the stored labels are cut into chunks.

    Attributes:
        size: stored labels per chunk (the archive's ``chunk_size``).
        labels: stored labels in each chunk, in order (only the last may hold
            fewer than ``size``).
    """

    size: int
    labels: Sequence[int]

    @property
    def num_stored(self) -> int:
        """Labels stored in all chunks together."""
        return sum(self.labels)


def build_header(
    *,
    codec: CodecEntry,
    num_classes: int,
    layout: Layout,
    chunks: ChunkTable,
    prune: dict[str, Any] | None,
    metadata: ArchiveMetadata,
    checksums: dict[str, str],
    reference: str,
) -> ArchiveHeader:
    """The labelzip metadata document of an archive (validated)."""
    try:
        json.dumps(codec.config)
        json.dumps(dict(metadata.user))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"archive metadata must be JSON-serialisable: {exc}") from exc
    return ArchiveHeader(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        codec=codec,
        num_classes=num_classes,
        num_labels=layout.num_labels,
        num_stored=chunks.num_stored,
        layout=LayoutEntry(dims=list(layout.dims), shape=list(layout.shape)),
        chunk_size=chunks.size,
        chunk_labels=list(chunks.labels),
        prune=prune,
        reference=reference,  # type: ignore[arg-type]  # pydantic checks the name
        class_names=list(metadata.class_names) if metadata.class_names else None,
        dataset_fingerprint=metadata.dataset_fingerprint,
        teacher=metadata.teacher,
        user=dict(metadata.user),
        checksums=checksums,
    )


def container_prefix(
    header: ArchiveHeader,
    static: Sequence[tuple[str, torch.Tensor]],
    chunk_nbytes: Sequence[int],
) -> bytes:
    """Everything before the tensor bytes: length, safetensors header, metadata.

    Args:
        header: the labelzip document (stored with its sha256).
        static: model and side tensors in :func:`static_order`.
        chunk_nbytes: byte size of each chunk, in chunk order (after ``static``).
    """
    doc = header.to_json()
    metadata = {
        METADATA_KEY: doc,
        METADATA_SHA_KEY: hashlib.sha256(doc.encode("utf-8")).hexdigest(),
    }
    entries: list[tuple[str, str, Sequence[int], int]] = [
        (name, dtype_to_code(t.dtype), list(t.shape), t.numel() * t.element_size())
        for name, t in static
    ]
    entries += [(chunk_name(i), "U8", [n], n) for i, n in enumerate(chunk_nbytes)]
    prefix, _ = encode_container_header(metadata, entries)
    return prefix
