"""The labelzip archive format: the single source of truth for what is on disk.

An archive is a plain safetensors file (8-byte little-endian header length, a
JSON header, then the raw bytes of every tensor), so any safetensors reader can
open it and memory-map it. labelzip adds:

- ``__metadata__["labelzip"]``: one JSON document (:class:`ArchiveHeader`) that
  describes the codec, the label layout, the chunks, pruning and checksums;
- ``__metadata__["labelzip_sha256"]``: the sha256 of that document's UTF-8 bytes;
- tensors ``model/<name>`` (stored once), ``side/<name>`` (side information) and
  ``chunk/<000000>`` (``uint8`` blocks of consecutive stored labels);
- (version 2) tensor ``digests``: the binary sha256 of every other tensor's
  name and bytes (:func:`sha256_named`), one 32-byte row per tensor in sorted
  name order; the document's ``checksums`` holds only the hex sha256 of
  ``digests`` (version 1 listed every tensor's hex sha256 of its bytes there:
  ~84 header bytes per tensor instead of 32).

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

from labelzip.errors import ArchiveFormatError, ConfigError

__all__ = [
    "CHUNK_PREFIX",
    "DEFAULT_CHUNK_SIZE",
    "DIGESTS_NAME",
    "DIGEST_BYTES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "METADATA_SHA_KEY",
    "MODEL_PREFIX",
    "READABLE_VERSIONS",
    "SIDE_PREFIX",
    "ArchiveHeader",
    "ArchiveMetadata",
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
    "encode_container_header",
    "read_container_header",
    "sha256_named",
    "sha256_tensor",
    "static_order",
    "tensor_bytes",
]

FORMAT_NAME = "labelzip"
FORMAT_VERSION = 2  # what the writer writes
READABLE_VERSIONS = (1, 2)  # what the reader reads
DIGESTS_NAME = "digests"  # version 2: the (T, 32) uint8 sha256 table
DIGEST_BYTES = 32
METADATA_KEY = "labelzip"
METADATA_SHA_KEY = "labelzip_sha256"
MODEL_PREFIX = "model/"
SIDE_PREFIX = "side/"
CHUNK_PREFIX = "chunk/"
DEFAULT_CHUNK_SIZE = 4096

# safetensors refuses headers above 100 MB; we refuse earlier with our own words.
MAX_HEADER_BYTES = 100_000_000

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
    entries: list[TensorEntry] = []
    offset = 0
    for name, code, shape, nbytes in tensors:
        entries.append(TensorEntry(name, code, tuple(shape), offset, offset + nbytes))
        offset += nbytes
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
    try:
        doc = json.loads(raw.decode("utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("header is not a JSON object")
        metadata = doc.pop("__metadata__", None) or {}
        entries = {
            key: TensorEntry(
                key,
                str(value["dtype"]),
                tuple(int(s) for s in value["shape"]),
                int(value["data_offsets"][0]),
                int(value["data_offsets"][1]),
            )
            for key, value in doc.items()
        }
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ArchiveFormatError(
            f"{name!r} is not a labelzip archive: its header is not a valid "
            f"safetensors header ({exc})"
        ) from exc
    data_start = 8 + length
    data_end = max((entry.end for entry in entries.values()), default=0)
    if data_start + data_end > file_size:
        raise ArchiveFormatError(
            f"archive {name!r} is truncated: its header describes "
            f"{data_start + data_end} bytes but the file has {file_size}"
        )
    if data_start + data_end < file_size:
        raise ArchiveFormatError(
            f"archive {name!r} has {file_size - data_start - data_end} unexpected "
            "bytes after its last tensor; it was not written by labelzip"
        )
    return ContainerHeader(
        metadata={str(k): str(v) for k, v in metadata.items()},
        entries=entries,
        data_start=data_start,
        file_size=file_size,
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


def build_header(
    *,
    codec_name: str,
    codec_id: int,
    codec_config: dict[str, Any],
    num_classes: int,
    layout: Layout,
    num_stored: int,
    chunk_size: int,
    chunk_labels: list[int],
    prune: dict[str, Any] | None,
    metadata: ArchiveMetadata,
    checksums: dict[str, str],
    reference: str,
) -> ArchiveHeader:
    """The labelzip metadata document of an archive (validated)."""
    try:
        json.dumps(codec_config)
        json.dumps(dict(metadata.user))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"archive metadata must be JSON-serialisable: {exc}") from exc
    return ArchiveHeader(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        codec=CodecEntry(name=codec_name, id=codec_id, config=codec_config),
        num_classes=num_classes,
        num_labels=layout.num_labels,
        num_stored=num_stored,
        layout=LayoutEntry(dims=list(layout.dims), shape=list(layout.shape)),
        chunk_size=chunk_size,
        chunk_labels=chunk_labels,
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
