"""The FKD-mix batch stores: SRe2L / CDA, LPLD, LPQLD, G-VBSM and EDC.

All five save one ``torch.save``d list per batch of the relabel loader:
augmentation parameters of every image of the batch (crop coords, flip or
cutout, RandAugment parameters), the batch's mix (index, lambda, box) and the
teacher's labels (dense logits, or LPQLD's top-k values and int16 ids), plus,
for G-VBSM and EDC, the dataset index of every image. They differ in list
length, order, dtypes and folder layout; each format here is a table of the
variants its writer produces (see docs/interop.md), detected from the first
file and checked on every other one.

Layouts: ``epoch_{e}/batch_{b}.tar`` (SRe2L, LPLD, G-VBSM, EDC; LPLD's last
epoch folder is partial and ``sampler_indices_epoch.json`` names the images)
or flat ``batch_{counter}.tar`` (LPQLD, with ``sampler_indices_batch.json``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
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
from labelzip.interop.elements import dtype_name, flatten, rebuild, torch_dtype
from labelzip.interop.fkd_lists import (
    ELEMENTS,
    RAND_PARAMS_DTYPES,
    Variant,
    describe_list,
    first_difference,
    mix_name,
    rand_params_casts,
    restore_dtypes,
)
from labelzip.interop.safe_load import load_torch_file

__all__ = [
    "EDCFormat",
    "FKDMixFormat",
    "GVBSMFormat",
    "LPLDFormat",
    "LPQLDFormat",
    "SRe2LFormat",
    "lossy_topk_width",
]

_EPOCH = re.compile(r"epoch_(\d+)")
_BATCH = re.compile(r"batch_(\d+)\.tar")


@dataclass(frozen=True)
class _File:
    """One batch file: where it is, its name in the store, its place."""

    path: Path
    name: str
    epoch: int | None
    batch: int


class FKDMixFormat(StoreFormat):
    """Shared reader / writer of the batch-list stores; subclasses are tables.

    Class attributes:
        variants: the list layouts this framework's writer produces.
        flat: ``batch_{counter}.tar`` at the top (LPQLD) instead of epoch folders.
        partial_last_epoch: the last epoch folder may hold fewer batches (LPLD).
        json_name: the JSON file naming each batch's images, or None.
        needs_sampler: files name no images: ``--sampler-seed`` / ``--batch-size``.
        convention: value convention of the stored labels.
    """

    variants: ClassVar[tuple[Variant, ...]] = ()
    flat: ClassVar[bool] = False
    partial_last_epoch: ClassVar[bool] = False
    json_name: ClassVar[str | None] = None
    needs_sampler: ClassVar[bool] = False
    convention: ClassVar[str] = "logits"

    # -- import ------------------------------------------------------------------
    def open(self, path: Path, options: ImportOptions) -> ImportedStore:
        if not path.is_dir():
            raise InputError(f"{self.name} store {str(path)!r} is not a folder")
        files, epochs = self._scan(path)
        return FKDMixStore(self, path, files, epochs, options)

    def detect(self, obj: Any, source: str) -> Variant:
        """The variant ``obj`` (a loaded file) is, or a one-line error."""
        for variant in self.variants:
            if variant.matches(obj):
                return variant
        known = "; ".join(
            f"{v.name}: {len(v.elements)} elements" for v in self.variants
        )
        raise InputError(
            f"{source} is not a known {self.name} variant: it holds {describe_list(obj)} "
            f"(known: {known})"
        )

    def _scan(self, root: Path) -> tuple[list[_File], list[int]]:
        """Every batch file in label order, and the batch count of each epoch."""
        if self.flat:
            batches = _numbered(root, _BATCH, "batch_{}.tar", root, self.name)
            return [_File(p, p.name, None, b) for b, p in enumerate(batches)], []
        folders = _numbered(root, _EPOCH, "epoch_{}", root, self.name, dirs=True)
        files: list[_File] = []
        counts: list[int] = []
        for e, folder in enumerate(folders):
            batches = _numbered(
                folder,
                _BATCH,
                "batch_{}.tar",
                root,
                self.name,
                allow_empty=e == len(folders) - 1,
            )
            counts.append(len(batches))
            files += [
                _File(p, f"epoch_{e}/{p.name}", e, b) for b, p in enumerate(batches)
            ]
        for e, count in enumerate(counts):
            last = e == len(counts) - 1
            if count != counts[0] and not (
                last and self.partial_last_epoch and count < counts[0]
            ):
                raise InputError(
                    f"epoch_{e} holds {count} batches but epoch_0 holds {counts[0]}; "
                    f"a batch is missing or the folder mixes runs"
                )
        if not files:
            raise InputError(f"{self.name} store {str(root)!r} holds no batch files")
        return files, counts

    # -- export --------------------------------------------------------------------
    def export(self, source: LabelSource, dest: Path, options: ExportOptions) -> None:
        doc = source.interop
        specs: list[dict[str, Any]] = doc["elements"]
        names: list[str] = doc["element_names"]
        labels = doc["labels"]
        label_start = 0
        casts: dict[str, dict[str, str]] = {}
        if source.has_side(RAND_PARAMS_DTYPES):
            raw = source.side(
                RAND_PARAMS_DTYPES, 0, source.side_rows(RAND_PARAMS_DTYPES)
            )
            casts = json.loads(raw.numpy().tobytes())
        for f, name in enumerate(_file_names(doc)):
            rows = int(source.side("file_rows", f, f + 1)[0])
            got = source.take(rows)
            values, ids = _export_labels(got, labels)
            out: list[Any] = []
            for element, spec in zip(names, specs, strict=True):
                role = ELEMENTS[element][0]
                if role == "dense" or role == "values":
                    out.append(values)
                elif role == "ids":
                    out.append(ids)
                else:
                    element = rebuild(
                        spec,
                        source.side,
                        label_start=label_start,
                        label_stop=label_start + rows,
                        file_index=f,
                    )
                    if str(f) in casts:
                        element = restore_dtypes(element, spec, casts[str(f)])
                    out.append(element)
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.save(out, target)
            label_start += rows
        for e in range(len(doc.get("epoch_batches", []))):
            (dest / f"epoch_{e}").mkdir(exist_ok=True)  # an empty last epoch stays
        if doc.get("json") is not None:
            _write_json(source, dest, doc)


def _numbered(
    folder: Path,
    pattern: re.Pattern[str],
    template: str,
    root: Path,
    fmt: str,
    *,
    dirs: bool = False,
    allow_empty: bool = False,
) -> list[Path]:
    """``template.format(0..n-1)`` entries of ``folder``, in order; a gap is an error."""
    found: dict[int, Path] = {}
    for entry in folder.iterdir():
        m = pattern.fullmatch(entry.name)
        if m is not None and entry.is_dir() == dirs:
            found[int(m.group(1))] = entry
    where = "" if folder == root else f"{folder.relative_to(root)}/"
    if not found:
        if allow_empty:
            return []
        raise InputError(
            f"{fmt} store {str(root)!r}: no {where}{template.format(0)} found"
        )
    for i in range(max(found) + 1):
        if i not in found:
            raise InputError(
                f"{fmt} store {str(root)!r}: {where}{template.format(i)} is missing "
                f"(found up to {template.format(max(found))})"
            )
    return [found[i] for i in range(len(found))]


def _file_names(doc: dict[str, Any]) -> Iterator[str]:
    if doc["layout"] == "flat":
        for b in range(int(doc["num_files"])):
            yield f"batch_{b}.tar"
        return
    for e, count in enumerate(doc["epoch_batches"]):
        for b in range(int(count)):
            yield f"epoch_{e}/batch_{b}.tar"


def _export_labels(got: Any, labels: dict[str, Any]) -> tuple[torch.Tensor, Any]:
    """The file's label element(s) in the stored dtypes (top-k of decoded labels
    after a lossy import)."""
    # Copies, never views: torch.save of a view writes its whole storage (the
    # archive chunk the file's rows were cut from).
    dtype = torch_dtype(labels["dtype"])
    if labels["kind"] == "dense":
        assert got.dense is not None
        return got.dense.to(dtype, copy=True), None
    ids_dtype = torch_dtype(labels["ids_dtype"])
    if got.values is not None:
        return got.values.to(dtype, copy=True), got.ids.to(ids_dtype, copy=True)
    values, ids = got.dense.topk(lossy_topk_width(got.dense, int(labels["k"])), dim=1)
    return values.to(dtype), ids.to(ids_dtype)


def lossy_topk_width(decoded: torch.Tensor, k: int) -> int:
    """Columns an export of decoded labels writes for a top-k store of ``k``.

    ``k``, unless the codec kept fewer classes (a top-k codec with a smaller K
    decodes ``-inf`` elsewhere): then the classes every row keeps, so the file
    holds no ``-inf`` logits and no ids of classes without mass.
    """
    if decoded.shape[0] == 0:
        return k
    finite = int(torch.isfinite(decoded).sum(dim=1).min())
    return max(1, min(k, finite))


class FKDMixStore(ImportedStore):
    """An opened FKD-mix store (see :class:`FKDMixFormat`)."""

    def __init__(
        self,
        fmt: FKDMixFormat,
        root: Path,
        files: list[_File],
        epoch_batches: list[int],
        options: ImportOptions,
    ) -> None:
        self.fmt = fmt
        self.root = root
        self.files = files
        self.epoch_batches = epoch_batches
        self.format = fmt.name
        self.value_convention = fmt.convention
        first = self._load(files[0])
        self.first_variant = fmt.detect(first, files[0].name)
        self.names = self.first_variant.elements
        self.batch_rows, self.num_classes, labels = self._labels(first, files[0].name)
        self.kind = "topk" if "topk_values" in self.names else "dense"
        self.value_dtype = labels["values"].dtype
        self.k = int(labels["values"].shape[1]) if self.kind == "topk" else None
        if self.kind == "topk":
            if options.num_classes is None:
                raise InputError(
                    f"{files[0].name} holds top-k labels, which do not say how many "
                    "classes there are; pass --num-classes (1000 for ImageNet-1K)"
                )
            self.num_classes = options.num_classes
        self.specs = self._flatten(first, files[0].name, self.batch_rows)[0]
        self.variant = self.first_variant.name + mix_name(first, self.names)
        del first, labels  # one file in memory: _rows() loads others
        self.json_data, json_bytes = self._read_json()
        self.rows_from_json = False
        self.file_rows = self._rows()
        self.num_labels = sum(self.file_rows)
        self.layout = Layout(("label",), (self.num_labels,))
        self.sampler = self._sampler(options)
        self.json_doc, self.json_index, self.json_raw = self._json(json_bytes)

    # -- scanning ----------------------------------------------------------------
    def _load(self, file: _File) -> Any:
        return load_torch_file(file.path, root=self.root)

    def _labels(self, obj: list[Any], source: str) -> tuple[int, int, dict[str, Any]]:
        found = {n: x for n, x in zip(self.names, obj, strict=True)}
        values = found.get("output", found.get("topk_values"))
        assert isinstance(values, torch.Tensor)
        rows = int(values.shape[0])
        num_classes = int(values.shape[1])
        out: dict[str, Any] = {"values": values}
        if "topk_indices" in found:
            ids = found["topk_indices"]
            if tuple(ids.shape) != tuple(values.shape):
                raise InputError(
                    f"{source}: top-k ids {tuple(ids.shape)} and values "
                    f"{tuple(values.shape)} differ in shape"
                )
            out["ids"] = ids
            num_classes = -1  # C is not in the file; see _rows
        if rows < 1:
            raise InputError(f"{source} holds no labels")
        return rows, num_classes, out

    def _rows(self) -> list[int]:
        """Rows of every file: B for all but each epoch's (or the store's) last
        batch, which is loaded to count (checked again when streamed).

        A flat store's files do not say where its epochs end: unpruned, LPQLD's
        loader keeps each epoch's short last batch, anywhere in the counter. Its
        JSON file lists every batch's images, so their counts are the rows.
        """
        if self.fmt.flat and isinstance(self.json_data, dict):
            listed = [self.json_data.get(str(i)) for i in range(len(self.files))]
            if all(isinstance(x, list) for x in listed):
                self.rows_from_json = True
                return [len(x) for x in listed]  # type: ignore[arg-type]
        rows = [self.batch_rows] * len(self.files)
        last = [i for i in range(len(self.files)) if self._is_last(i)]
        for i in last:
            if i == 0:
                continue
            obj = self._load(self.files[i])
            self.fmt.detect(obj, self.files[i].name)
            rows[i] = int(self._labels(obj, self.files[i].name)[0])
        return rows

    def _is_last(self, i: int) -> bool:
        if i == len(self.files) - 1:
            return True
        a, b = self.files[i], self.files[i + 1]
        return a.epoch != b.epoch

    def _sampler(self, options: ImportOptions) -> dict[str, Any] | None:
        if not self.fmt.needs_sampler:
            return None
        missing = [
            flag
            for flag, value in (
                ("--sampler-seed", options.sampler_seed),
                ("--batch-size", options.batch_size),
            )
            if value is None
        ]
        if missing:
            raise InputError(
                f"{self.fmt.name} files do not name their images: pass "
                f"{' and '.join(missing)} (the relabel run's --fkd-seed and -b)"
            )
        if options.batch_size != self.batch_rows:
            raise InputError(
                f"--batch-size {options.batch_size} does not match "
                f"{self.files[0].name}, which holds {self.batch_rows} labels"
            )
        return {
            "kind": "torch.utils.data.RandomSampler",
            "seed": options.sampler_seed,
            "batch_size": options.batch_size,
            "num_images": sum(self.file_rows[: self.epoch_batches[0]])
            if self.epoch_batches
            else None,
        }

    def _read_json(self) -> tuple[Any, bytes]:
        """The parsed JSON file naming each batch's images, and its bytes."""
        name = self.fmt.json_name
        if name is None:
            return None, b""
        path = self.root / name
        if not path.is_file():
            raise InputError(
                f"{self.fmt.name} store {str(self.root)!r} has no {name}, which names "
                "the images of every batch"
            )
        raw = path.read_bytes()
        try:
            return json.loads(raw), raw
        except ValueError as exc:
            raise InputError(f"{name} is not valid JSON: {exc}") from exc

    def _json(
        self, raw: bytes
    ) -> tuple[dict[str, Any] | None, list[np.ndarray], bytes]:
        """The JSON file naming each batch's images: one index array per key
        (checked against the files' label counts), and its bytes when
        ``json.dumps`` does not give them back exactly."""
        name = self.fmt.json_name
        if name is None:
            return None, [], b""
        data = self.json_data
        self.json_data = None  # held as index arrays from here on
        groups = self._json_groups()
        if not isinstance(data, dict) or list(data) != [str(g) for g, _ in groups]:
            raise InputError(
                f"{name} has keys {list(data)[:4]}... but the store's "
                f"{'batches' if self.fmt.flat else 'epochs'} are "
                f"{[str(g) for g, _ in groups][:4]}..."
            )
        index: list[np.ndarray] = []
        for g, rows in groups:
            values = data[str(g)]
            if not isinstance(values, list) or len(values) != rows:
                raise InputError(
                    f"{name}[{g!r}] lists {len(values) if isinstance(values, list) else 0} "
                    f"images but the store holds {rows} labels there"
                )
            try:
                index.append(np.asarray(values, dtype=np.int64))
            except (TypeError, ValueError, OverflowError) as exc:
                raise InputError(f"{name}[{g!r}] holds non-integer indices") from exc
        exact = json.dumps(data).encode("utf-8") == raw
        return {"name": name, "regenerates": exact}, index, b"" if exact else raw

    def _json_groups(self) -> list[tuple[int, int]]:
        """(JSON key, labels under it): one per batch (flat) or non-empty epoch."""
        if self.fmt.flat:
            return list(enumerate(self.file_rows))
        out: list[tuple[int, int]] = []
        start = 0
        for e, count in enumerate(self.epoch_batches):
            if count:
                out.append((e, sum(self.file_rows[start : start + count])))
            start += count
        return out

    # -- description -----------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        labels: dict[str, Any] = {
            "kind": self.kind,
            "dtype": dtype_name(self.value_dtype),
            "k": self.k,
        }
        if self.kind == "topk":
            ids_spec = self.specs[self.names.index("topk_indices")]
            labels["ids_dtype"] = ids_spec["dtype"]
        doc: dict[str, Any] = {
            "format": self.format,
            "variant": self.variant,
            "value_convention": self.value_convention,
            "layout": "flat" if self.fmt.flat else "epochs",
            "num_files": len(self.files),
            "batch_size": self.batch_rows,
            "num_classes": self.num_classes,
            "element_names": list(self.names),
            "elements": self.specs,
            "labels": labels,
            "per_label_side": sorted(self._side_names("label")),
            "per_file_side": ["file_rows", *sorted(self._side_names("file"))],
            "sampler": self.sampler,
            "json": self.json_doc,
        }
        if not self.fmt.flat:
            doc["epoch_batches"] = self.epoch_batches
        if self.json_doc is not None:
            doc["per_label_side"] = sorted([*doc["per_label_side"], "image_index"])
        return doc

    def _side_names(self, per: str) -> list[str]:
        out: list[str] = []

        def walk(spec: dict[str, Any]) -> None:
            if spec["t"] in ("list", "tuple"):
                for item in spec["items"]:
                    walk(item)
            elif spec["t"] != "none":
                leaf_per = spec.get("per", "file")
                if leaf_per == per:
                    out.append(spec["side"])

        for name, spec in zip(self.names, self.specs, strict=True):
            if ELEMENTS[name][0] in ("label", "file"):
                walk(spec)
        return out

    # -- streaming -------------------------------------------------------------------
    def _flatten(
        self, obj: list[Any], source: str, rows: int
    ) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        specs: list[dict[str, Any]] = []
        per_label: dict[str, torch.Tensor] = {}
        per_file: dict[str, torch.Tensor] = {}
        for name, x in zip(self.names, obj, strict=True):
            role = ELEMENTS[name][0]
            if role in ("dense", "values", "ids"):
                specs.append({"t": "labels", "dtype": dtype_name(x.dtype)})
                continue
            flat = flatten(x, name, per_label=role == "label", rows=rows, source=source)
            specs.append(flat.spec)
            per_label.update(flat.label_rows)
            per_file.update(flat.file_rows)
        return specs, per_label, per_file

    def records(self) -> Iterator[StoreRecord]:
        self.rand_params_dtypes: dict[str, dict[str, str]] = {}
        label_start = 0
        offset = 0  # first label of the file within its epoch (JSON key)
        for i, file in enumerate(self.files):
            obj = self._load(file)
            variant = self.fmt.detect(obj, file.name)
            if variant != self.first_variant:
                raise InputError(
                    f"mixed variants: {file.name} is {variant.name} but "
                    f"{self.files[0].name} is {self.first_variant.name}"
                )
            rows, num_classes, labels = self._labels(obj, file.name)
            if rows != self.file_rows[i]:
                raise InputError(
                    f"{file.name} holds {rows} labels but {self.fmt.json_name} lists "
                    f"{self.file_rows[i]} images for it"
                    if self.rows_from_json
                    else f"{file.name} holds {rows} labels; every batch but the last "
                    f"of an epoch must hold {self.file_rows[i]}"
                )
            ids = labels.get("ids")
            if ids is not None and ids.numel() and int(ids.max()) >= self.num_classes:
                raise InputError(
                    f"{file.name} holds class id {int(ids.max())}, outside "
                    f"--num-classes {self.num_classes}"
                )
            if self.kind == "dense" and num_classes != self.num_classes:
                raise InputError(
                    f"{file.name} holds {num_classes} classes but "
                    f"{self.files[0].name} holds {self.num_classes}"
                )
            specs, per_label, per_file = self._flatten(obj, file.name, rows)
            if specs != self.specs and "rand_params" in self.names:
                cast = rand_params_casts(specs, self.specs, per_label)
                if cast is not None:
                    specs = self.specs
                    if cast:
                        self.rand_params_dtypes[str(i)] = cast
            if specs != self.specs:
                raise InputError(
                    f"mixed variants: {file.name} stores its elements with other "
                    f"types, dtypes or None-ness than {self.files[0].name} "
                    f"({first_difference(self.names, specs, self.specs)})"
                )
            record = StoreRecord(source=file.name, side=per_label)
            record.file_side = {"file_rows": torch.tensor([rows]), **per_file}
            if self.kind == "dense":
                record.dense = labels["values"]
            else:
                record.topk_values = labels["values"]
                record.topk_ids = labels["ids"].long()
                if record.topk_ids.numel() and int(record.topk_ids.min()) < 0:
                    raise InputError(f"{file.name} holds negative class ids")
            if self.json_index:
                # Only the last epoch may be empty, so epoch e is JSON group e.
                key = i if file.epoch is None else file.epoch
                offset = 0 if file.epoch is None or file.batch == 0 else offset
                index = self.json_index[key][offset : offset + rows]
                record.side["image_index"] = torch.from_numpy(index.copy())
                offset += rows
            if i == 0 and self.json_raw:
                raw = bytearray(self.json_raw)
                record.blobs["json_raw"] = torch.frombuffer(raw, dtype=torch.uint8)
            if i == len(self.files) - 1 and self.rand_params_dtypes:
                text = json.dumps(self.rand_params_dtypes, sort_keys=True)
                record.blobs[RAND_PARAMS_DTYPES] = torch.frombuffer(
                    bytearray(text.encode("utf-8")), dtype=torch.uint8
                )
            label_start += rows
            yield record


def _write_json(source: LabelSource, dest: Path, doc: dict[str, Any]) -> None:
    """Rebuild the JSON side file from the per-label image indices."""
    info = doc["json"]
    name = info["name"]
    if not info["regenerates"]:
        raw = source.side("json_raw", 0, source.side_rows("json_raw"))
        (dest / name).write_bytes(raw.numpy().tobytes())
        return
    out: dict[str, list[int]] = {}
    start = 0
    if doc["layout"] == "flat":
        for b in range(int(doc["num_files"])):
            rows = int(source.side("file_rows", b, b + 1)[0])
            out[str(b)] = source.side("image_index", start, start + rows).tolist()
            start += rows
    else:
        f = 0
        for e, count in enumerate(doc["epoch_batches"]):
            rows = sum(
                int(source.side("file_rows", f + b, f + b + 1)[0]) for b in range(count)
            )
            if count:
                out[str(e)] = source.side("image_index", start, start + rows).tolist()
            start += rows
            f += count
    (dest / name).write_text(json.dumps(out), encoding="utf-8")


_BASE = ("coords", "flip", "mix_index", "mix_lam", "mix_bbox")
_CUTOUT = ("coords", "coords_cutout", "mix_index", "mix_lam", "mix_bbox")
_RANDAUG = ("coords", "flip", "rand_params", "mix_index", "mix_lam", "mix_bbox")


class SRe2LFormat(FKDMixFormat):
    """SRe2L and CDA: ``epoch_{e}/batch_{b}.tar``, 6-lists, images by sampler seed."""

    name = "sre2l"
    aliases = ("cda",)
    summary = "SRe2L / CDA epoch_{e}/batch_{b}.tar (dense logits)"
    variants = (Variant("dense", (*_BASE, "output")),)
    needs_sampler = True


class LPLDFormat(FKDMixFormat):
    """LPLD: SRe2L's files, pruned (partial last epoch), images in a JSON file."""

    name = "lpld"
    summary = "LPLD pruned epoch folders + sampler_indices_epoch.json"
    variants = (
        Variant("dense", (*_BASE, "output")),
        Variant("dense+cutout", (*_CUTOUT, "output")),
    )
    partial_last_epoch = True
    json_name = "sampler_indices_epoch.json"


class LPQLDFormat(FKDMixFormat):
    """LPQLD: flat ``batch_{counter}.tar``, top-k values + int16 ids (or dense)."""

    name = "lpqld"
    summary = "LPQLD flat batch_{counter}.tar (top-k) + sampler_indices_batch.json"
    variants = (
        Variant("topk", (*_BASE, "topk_values", "topk_indices")),
        Variant("topk+cutout", (*_CUTOUT, "topk_values", "topk_indices")),
        Variant("topk+randaug", (*_RANDAUG, "topk_values", "topk_indices")),
        Variant("dense", (*_BASE, "output")),
        Variant("dense+cutout", (*_CUTOUT, "output")),
        Variant("dense+randaug", (*_RANDAUG, "output")),
    )
    flat = True
    json_name = "sampler_indices_batch.json"


class GVBSMFormat(FKDMixFormat):
    """G-VBSM: SRe2L's 6-list + the dataset index of every image (ensemble logits)."""

    name = "gvbsm"
    summary = "G-VBSM epoch folders, 7-lists with image indices"
    variants = (Variant("dense", (*_BASE, "output", "image_index")),)


class EDCFormat(FKDMixFormat):
    """EDC: G-VBSM's 7-list + ``indices_status`` (patch-shuffle ids) per image,
    or the plain 7-list (its CIFAR and Tiny-ImageNet branches)."""

    name = "edc"
    summary = "EDC epoch folders, 8-lists with image indices and indices_status"
    # The ImageNet branches save indices_status; EDC's CIFAR-10/100 and
    # Tiny-ImageNet branches save G-VBSM's 7-list.
    variants = (
        Variant("dense", (*_BASE, "output", "image_index", "indices_status")),
        Variant("dense-7list", (*_BASE, "output", "image_index")),
    )
