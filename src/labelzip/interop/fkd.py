"""FKD's per-image soft-label files (szq0214/FKD, ``FKD_SLG/generate_soft_label.py``).

One ``.tar`` per training image, mirroring the image tree
(``<save>/train/<wnid>/<image>.tar``); each is a ``torch.save``d 3-list of
numpy arrays for the image's ``n`` crops: coords ``(n, 4)`` (normalised
``i/H, j/W, h/H, w/W``), flip ``(n,)`` bool and the quantised label of each
crop, post-softmax probabilities at the relabel ``--temp``:

- ``marginal_smoothing_k5`` / ``_k10`` (also ``marginal_renorm_k5``):
  ``(n, 2, k)``, row 0 the class ids as floats, row 1 their probabilities;
- ``smoothing``: ``(n, 2)``, the top class id and its probability;
- ``hard``: ``(n,)`` int64 top class ids.

labelzip keeps the ids and probabilities as top-k labels (``hard``: probability
one), so a lossless import stores exactly what the files hold. The files do not
say C (``--num-classes``) or the temperature (``--temperature``, recorded when
given). Files are read in the image tree's order (sorted relative paths, which
is ImageFolder's order), crops in file order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from labelzip.archive.format import Layout
from labelzip.errors import InputError
from labelzip.interop.base import (
    ExportOptions,
    ImportedStore,
    ImportOptions,
    LabelSource,
    StoreFormat,
    StoreRecord,
)
from labelzip.interop.elements import dtype_name, flatten, rebuild
from labelzip.interop.safe_load import load_torch_file

__all__ = ["FKDFormat"]

# Smallest probability the dense view of a top-k label gives a class.
_MASS_FLOOR = 1e-12
# Bytes of the file-name list read at a time by an export.
_NAME_CHUNK = 1 << 20


class FKDFormat(StoreFormat):
    """FKD per-image files (see the module docstring)."""

    name: ClassVar[str] = "fkd"
    summary: ClassVar[str] = "FKD one .tar per image (top-k probabilities per crop)"

    def open(self, path: Path, options: ImportOptions) -> ImportedStore:
        if not path.is_dir():
            raise InputError(f"fkd store {str(path)!r} is not a folder")
        files = sorted(
            (p for p in path.rglob("*.tar") if p.is_file()),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        if not files:
            raise InputError(f"fkd store {str(path)!r} holds no .tar label files")
        if options.num_classes is None:
            raise InputError(
                "fkd files hold only the top classes of each crop; pass --num-classes "
                "(1000 for ImageNet-1K)"
            )
        return FKDStore(path, files, options)

    def export(self, source: LabelSource, dest: Path, options: ExportOptions) -> None:
        doc = source.interop
        label_type = doc["label_type"]
        dtype = np.dtype(doc["label_dtype"])
        temperature = float(doc["temperature"] or 1.0)
        start = 0
        for f, name in enumerate(_names(source)):
            rows = int(source.side("file_rows", f, f + 1)[0])
            got = source.take(rows)
            if got.values is not None and got.ids is not None:
                values, ids = got.values, got.ids
            else:
                assert got.dense is not None
                probs = torch.softmax(got.dense / temperature, dim=1)
                values, ids = probs.topk(int(doc["k"]), dim=1)
            parts = [
                rebuild(
                    spec,
                    source.side,
                    label_start=start,
                    label_stop=start + rows,
                    file_index=f,
                )
                for spec in doc["elements"]
            ]
            parts.append(_label_array(label_type, values, ids, dtype))
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.save(parts, target)
            start += rows


def _names(source: LabelSource) -> Iterator[str]:
    """The stored relative file names, read a slice of the name list at a time."""
    total = source.side_rows("file_names")
    tail = b""
    for begin in range(0, total, _NAME_CHUNK):
        piece = source.side("file_names", begin, min(total, begin + _NAME_CHUNK))
        lines = (tail + piece.numpy().tobytes()).split(b"\n")
        tail = lines.pop()
        for line in lines:
            yield line.decode("utf-8")
    if tail:
        yield tail.decode("utf-8")


def _label_array(
    label_type: str, values: torch.Tensor, ids: torch.Tensor, dtype: np.dtype
) -> np.ndarray:
    """The quantised label array FKD stores, from (n, k) values and ids."""
    if label_type == "hard":
        return ids[:, 0].numpy().astype(dtype)
    ids_f = ids.numpy().astype(dtype)
    vals = values.numpy().astype(dtype)
    if label_type == "smoothing":
        return np.stack([ids_f[:, 0], vals[:, 0]], axis=1)
    return np.stack([ids_f, vals], axis=1)


class FKDStore(ImportedStore):
    """An opened FKD store."""

    def __init__(self, root: Path, files: list[Path], options: ImportOptions) -> None:
        self.root = root
        self.files = files
        self.format = "fkd"
        assert options.num_classes is not None
        self.num_classes = options.num_classes
        self.temperature = options.temperature
        self.reader = str(options.extra.get("reader", "smoothing"))
        if self.reader not in ("smoothing", "renorm"):
            raise InputError(
                f"fkd --store-opt reader={self.reader!r}: choose smoothing (the "
                "marginal_smoothing label types) or renorm (marginal_renorm)"
            )
        t = "?" if options.temperature is None else f"{options.temperature:g}"
        self.value_convention = f"probabilities@{t}"
        first = self._load(files[0])
        self.label_type, self.value_dtype, self.k = _label_kind(first[2], self._name(0))
        self.label_dtype = str(first[2].dtype)
        self.kind = "topk"
        self.variant = self.label_type
        self.crops = int(first[0].shape[0])
        self.specs = self._flatten(first, self._name(0))[0]
        self.num_labels = self.crops * len(files)
        self.layout = Layout(("label",), (self.num_labels,))

    def _name(self, i: int) -> str:
        return self.files[i].relative_to(self.root).as_posix()

    def _load(self, path: Path) -> list[Any]:
        obj = load_torch_file(path, root=self.root)
        name = path.relative_to(self.root).as_posix()
        if (
            not isinstance(obj, list)
            or len(obj) != 3
            or not all(isinstance(x, np.ndarray) for x in obj)
        ):
            kinds = (
                [type(x).__name__ for x in obj]
                if isinstance(obj, list | tuple)
                else None
            )
            raise InputError(
                f"{name} is not an FKD label file: expected a 3-list of numpy arrays "
                f"[coords, flip, label], got {kinds or type(obj).__name__}"
            )
        return obj

    def _flatten(
        self, obj: list[Any], source: str
    ) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
        rows = int(obj[2].shape[0])
        specs: list[dict[str, Any]] = []
        side: dict[str, torch.Tensor] = {}
        for name, x in (("coords", obj[0]), ("flip", obj[1])):
            flat = flatten(x, name, per_label=True, rows=rows, source=source)
            specs.append(flat.spec)
            side.update(flat.label_rows)
        return specs, side

    def describe(self) -> dict[str, Any]:
        return {
            "format": "fkd",
            "variant": self.variant,
            "value_convention": self.value_convention,
            "temperature": self.temperature,
            "layout": "image-tree",
            "num_files": len(self.files),
            "crops_per_file": self.crops,
            "num_classes": self.num_classes,
            "label_type": self.label_type,
            "label_dtype": self.label_dtype,
            "k": self.k,
            "labels": {
                "kind": "topk",
                "dtype": dtype_name(self.value_dtype),
                "k": self.k,
            },
            "elements": self.specs,
            "per_label_side": ["coords", "flip"],
            "per_file_side": ["file_rows"],
            "file_list": "file_names",
            "reader": self.reader,
        }

    def records(self) -> Iterator[StoreRecord]:
        for i, path in enumerate(self.files):
            name = self._name(i)
            obj = self._load(path)
            label_type, dtype, k = _label_kind(obj[2], name)
            if (label_type, dtype, k) != (self.label_type, self.value_dtype, self.k):
                raise InputError(
                    f"mixed variants: {name} holds {label_type} labels "
                    f"({dtype_name(dtype)}, k={k}) but {self._name(0)} holds "
                    f"{self.label_type} ({dtype_name(self.value_dtype)}, k={self.k})"
                )
            if obj[2].shape[0] != self.crops:
                raise InputError(
                    f"{name} holds {obj[2].shape[0]} crops but {self._name(0)} holds "
                    f"{self.crops}; every file of a store has the same --num_crops"
                )
            specs, side = self._flatten(obj, name)
            if specs != self.specs:
                raise InputError(
                    f"mixed variants: {name} stores coords/flip with other dtypes or "
                    f"shapes than {self._name(0)}"
                )
            values, ids = _split_label(obj[2], self.label_type, name, self.num_classes)
            name_bytes = bytearray((name + "\n").encode("utf-8"))
            yield StoreRecord(
                source=name,
                topk_values=values,
                topk_ids=ids,
                side=side,
                file_side={"file_rows": torch.tensor([self.crops])},
                blobs={"file_names": torch.frombuffer(name_bytes, dtype=torch.uint8)},
            )

    def to_dense(self, record: StoreRecord) -> torch.Tensor:
        """FKD's reader semantics (``Recover_soft_label``) as ``T * log p`` (T =
        --temperature, or 1): the kept probabilities with the missing mass spread
        uniformly over the other classes (``smoothing``, the default), or the kept
        ones renormalised and nothing elsewhere (``--store-opt reader=renorm``; the
        other classes get a 1e-12 floor so the logits stay finite)."""
        assert record.topk_values is not None and record.topk_ids is not None
        probs = record.topk_values.double()
        kept = probs.shape[1]
        if self.reader == "renorm":
            probs = probs / probs.sum(dim=1, keepdim=True).clamp_min(_MASS_FLOOR)
            rest = torch.zeros(probs.shape[0], 1, dtype=torch.float64)
        else:
            rest = (1.0 - probs.sum(dim=1, keepdim=True)).clamp_min(0.0)
        fill = (rest / max(self.num_classes - kept, 1)).clamp_min(_MASS_FLOOR)
        out = fill.expand(probs.shape[0], self.num_classes).contiguous()
        out.scatter_(1, record.topk_ids, probs.clamp_min(_MASS_FLOOR))
        return (out.log() * float(self.temperature or 1.0)).float()


def _label_kind(label: np.ndarray, name: str) -> tuple[str, torch.dtype, int]:
    """(label type, value dtype, k) of an FKD label array, or a one-line error."""
    if label.dtype.hasobject:
        raise InputError(f"{name}: the label is a numpy object array; refused")
    if label.ndim == 1 and np.issubdtype(label.dtype, np.integer):
        return "hard", torch.float16, 1
    if (
        label.ndim == 2
        and label.shape[1] == 2
        and label.dtype in (np.float16, np.float32)
    ):
        return "smoothing", torch.from_numpy(label[:0]).dtype, 1
    if (
        label.ndim == 3
        and label.shape[1] == 2
        and label.dtype in (np.float16, np.float32)
    ):
        k = int(label.shape[2])
        return f"marginal_k{k}", torch.from_numpy(label[:0]).dtype, k
    raise InputError(
        f"{name} holds a label array of shape {label.shape} {label.dtype}, which is "
        "no FKD label type (hard (n,), smoothing (n, 2), marginal (n, 2, k))"
    )


def _split_label(
    label: np.ndarray, label_type: str, name: str, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, int64 ids) of a label array, ids checked to be classes."""
    if label_type == "hard":
        ids = torch.from_numpy(label.astype(np.int64)).reshape(-1, 1)
        values = torch.ones(ids.shape, dtype=torch.float16)
    else:
        arr = label.reshape(label.shape[0], 2, -1)
        raw_ids = arr[:, 0, :]
        if not np.all(np.isfinite(raw_ids)) or not np.all(raw_ids == np.round(raw_ids)):
            raise InputError(f"{name}: class ids (row 0 of the label) are not integers")
        ids = torch.from_numpy(raw_ids.astype(np.int64))
        values = torch.from_numpy(np.ascontiguousarray(arr[:, 1, :]))
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        raise InputError(
            f"{name} holds class ids {int(ids.min())}..{int(ids.max())}, outside "
            f"--num-classes {num_classes}"
        )
    return values, ids
