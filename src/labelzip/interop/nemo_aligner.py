"""NeMo-Aligner top-k logit files: ``train_with_logits_{chunk}.jsonl``.

Written by NVIDIA/NeMo-Aligner @af2b3bd
``examples/nlp/synthetic_data_gen/compute_topk_logits.py`` (``write_generations``,
with ``compute_topk_logits_in_batched_sequence`` in ``nemo_aligner/utils/
distributed.py``) and read by ``KnowledgeDistillationDataset``
(``nemo_aligner/data/nlp/datasets.py``):

- one JSON object a line, ``json.dumps(obj, ensure_ascii=False)``: the SFT batch
  keys of the row (``tokens``, ``labels``, ``loss_mask``, ``contexts``,
  ``context_lengths``, ``answers``, ``metadata``; every per-position list padded
  to the batch's length), then ``topk_logits`` [seq][K] (the teacher's logits
  minus their maximum, top k descending, in the model's precision),
  ``topk_token_ids`` [seq][K], ``log_sum_exp_logits`` [seq] (of the shifted
  logits, float32) and ``index``;
- so position t's log-probabilities are ``topk_logits[t] - log_sum_exp_logits[t]``.

Label order: files (by name, numbers compared as numbers), rows, positions.
Nothing records the vocabulary: ``--num-classes``, else the largest id + 1.

Lossless import: ``topk`` (decoder ``mr``) with K and the narrowest of bf16 /
fp16 / fp32 that holds every stored value exactly (JSON numbers are doubles; a
bf16 model's logits are bf16 values). Side tensors: every per-position integer
list (``pos.tokens`` ...) and ``log_sum_exp_logits`` (float32 when exact, else
float64), one row per label; per row the remaining keys as JSON bytes
(``row_json``, with the key order) and ``row`` (positions, JSON bytes). Export
writes the same lines (same keys, order and numbers).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from labelzip.codecs.baseline.distillkit import spread_missing_mass
from labelzip.errors import InputError
from labelzip.interop.base import (
    ExportOptions,
    ImportedStore,
    ImportOptions,
    LabelSource,
    StoreFormat,
    StoreRecord,
)
from labelzip.interop.lm_common import decoded_topk, lm_layout, pieces, vocabulary

__all__ = ["LABEL_KEYS", "NemoAlignerFormat", "NemoAlignerStore"]

LABEL_KEYS = ("topk_logits", "topk_token_ids", "log_sum_exp_logits")
_LSE = "log_sum_exp_logits"
_ROW = "row"
_ROW_JSON = "row_json"
_POS = "pos."
_FLOATS = (torch.bfloat16, torch.float16, torch.float32)


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise InputError(f"NeMo-Aligner store {str(root)!r} does not exist")
    found = [p for p in root.iterdir() if p.suffix == ".jsonl"]
    if not found:
        raise InputError(
            f"no .jsonl files in {str(root)!r} (NeMo-Aligner top-k logits)"
        )

    def key(path: Path) -> list[Any]:
        return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", path.name)]

    return sorted(found, key=key)


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                where = f"{path.name}:{number}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{where}: not a JSON line ({exc.msg})") from exc
                if not isinstance(obj, dict):
                    raise InputError(f"{where}: not a JSON object")
                yield number, obj
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path.name}: unreadable ({exc})") from exc


def _is_int_list(value: Any, length: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == length
        and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
    )


class NemoAlignerStore(ImportedStore):
    """Opened NeMo-Aligner JSONL files (see the module docstring)."""

    def __init__(self, root: Path, options: ImportOptions) -> None:
        self.format = "nemo-aligner"
        self.variant = "topk-logits"
        self.kind = "topk"
        self.value_convention = "logits"
        self.files = _files(root)
        self.file_rows: list[int] = []
        self.position_keys: list[str] | None = None
        exact = dict.fromkeys(_FLOATS, True)
        lse32 = True
        largest, per_sequence = 0, []
        k: int | None = None
        for path in self.files:
            count = 0
            for number, obj in _rows(path):
                where = f"{path.name}:{number}"
                values, ids, lse = self._labels(obj, where)
                if k is None:
                    k = int(values.shape[1])
                if values.shape[1] != k:
                    raise InputError(
                        f"{where}: {values.shape[1]} top-k entries, earlier rows {k}"
                    )
                keys = [
                    key
                    for key in obj
                    if key not in LABEL_KEYS and _is_int_list(obj[key], len(values))
                ]
                if self.position_keys is None:
                    self.position_keys = keys
                if keys != self.position_keys:
                    raise InputError(
                        f"{where}: per-position keys {keys} differ from the first row's "
                        f"{self.position_keys}"
                    )
                for dtype in _FLOATS:
                    exact[dtype] = exact[dtype] and torch.equal(
                        values.to(dtype).double(), values
                    )
                lse32 = lse32 and torch.equal(lse.float().double(), lse)
                if ids.numel():
                    largest = max(largest, int(ids.max()))
                per_sequence.append(int(values.shape[0]))
                count += 1
            self.file_rows.append(count)
        if k is None:
            raise InputError(f"no rows in {str(root)!r}")
        exact_dtypes = [d for d in _FLOATS if exact[d]]
        if not exact_dtypes:
            raise InputError(
                f"{str(root)!r}: top-k logits need float64 to stay exact; no lossless "
                "codec keeps them (import with --codec)"
            )
        self.value_dtype = exact_dtypes[0]
        self.lse_dtype = torch.float32 if lse32 else torch.float64
        self.k = k
        self.num_classes = vocabulary(options.num_classes, largest, str(root))
        self.layout = lm_layout(per_sequence)
        self.num_labels = self.layout.num_labels

    @staticmethod
    def _labels(
        obj: dict[str, Any], where: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        missing = [key for key in LABEL_KEYS if key not in obj]
        if missing:
            raise InputError(f"{where}: no {', '.join(missing)}")
        try:
            values = torch.tensor(obj["topk_logits"], dtype=torch.float64)
            ids = torch.tensor(obj["topk_token_ids"], dtype=torch.int64)
            lse = torch.tensor(obj[_LSE], dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(
                f"{where}: top-k fields are not numeric lists ({exc})"
            ) from exc
        if (
            values.dim() != 2
            or ids.shape != values.shape
            or lse.shape != values.shape[:1]
        ):
            raise InputError(
                f"{where}: topk_logits {tuple(values.shape)}, topk_token_ids "
                f"{tuple(ids.shape)}, log_sum_exp_logits {tuple(lse.shape)} do not match"
            )
        if values.shape[0] < 1:
            raise InputError(f"{where}: a row with no positions")
        if ids.numel() and int(ids.min()) < 0:
            raise InputError(f"{where}: negative token id")
        return values, ids, lse

    # -- streaming -----------------------------------------------------------------
    def records(self) -> Iterator[StoreRecord]:
        keys = self.position_keys or []
        for path in self.files:
            for number, obj in _rows(path):
                where = f"{path.name}:{number}"
                values, ids, lse = self._labels(obj, where)
                if int(ids.max()) >= self.num_classes:
                    raise InputError(
                        f"{where}: token id {int(ids.max())} >= {self.num_classes}"
                    )
                rest = {
                    key: obj[key]
                    for key in obj
                    if key not in LABEL_KEYS and key not in keys
                }
                text = json.dumps(
                    {"order": list(obj), "rest": rest}, ensure_ascii=False
                )
                blob = text.encode("utf-8")
                n = int(values.shape[0])
                stored = values.to(self.value_dtype)
                side_all = {
                    _POS + key: torch.tensor(obj[key], dtype=torch.int64)
                    for key in keys
                }
                side_all[_LSE] = lse.to(self.lse_dtype)
                for i, part in enumerate(pieces(n)):
                    record = StoreRecord(
                        where,
                        topk_values=stored[part],
                        topk_ids=ids[part],
                        side={name: t[part] for name, t in side_all.items()},
                    )
                    if i == 0:
                        record.blobs[_ROW] = torch.tensor(
                            [[n, len(blob)]], dtype=torch.int64
                        )
                        record.blobs[_ROW_JSON] = torch.frombuffer(
                            bytearray(blob), dtype=torch.uint8
                        )
                    yield record

    def to_dense(self, record: StoreRecord) -> torch.Tensor:
        """Log-probabilities ``topk_logits - log_sum_exp``, the rest spread uniformly."""
        assert record.topk_values is not None and record.topk_ids is not None
        logprobs = record.topk_values.double() - record.side[_LSE].double()[:, None]
        return spread_missing_mass(logprobs.float(), record.topk_ids, self.num_classes)

    def describe(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "variant": self.variant,
            "value_convention": self.value_convention,
            "value_dtype": str(self.value_dtype).removeprefix("torch."),
            "lse_dtype": str(self.lse_dtype).removeprefix("torch."),
            "k": self.k,
            "position_keys": self.position_keys or [],
            "files": [
                {"name": path.name, "rows": rows}
                for path, rows in zip(self.files, self.file_rows, strict=True)
            ],
        }


class NemoAlignerFormat(StoreFormat):
    """NeMo-Aligner's ``compute_topk_logits.py`` JSONL files."""

    name = "nemo-aligner"
    summary = "NeMo-Aligner top-k logits: train_with_logits_<chunk>.jsonl"

    def open(self, path: Path, options: ImportOptions) -> ImportedStore:
        return NemoAlignerStore(path, options)

    def export(self, source: LabelSource, dest: Path, options: ExportOptions) -> None:
        doc = source.interop
        dtype = getattr(torch, str(doc["value_dtype"]))
        keys = [str(key) for key in doc["position_keys"]]
        label = row = at = 0
        for entry in doc["files"]:
            with open(dest / str(entry["name"]), "w", encoding="utf-8") as out:
                for _ in range(int(entry["rows"])):
                    n, size = (int(x) for x in source.side(_ROW, row, row + 1)[0])
                    raw = source.side(_ROW_JSON, at, at + size).numpy().tobytes()
                    head = json.loads(raw.decode("utf-8"))
                    obj = _row(source, head, keys, label, n, dtype, int(doc["k"]))
                    out.write(json.dumps(obj, ensure_ascii=False) + "\n")
                    label, row, at = label + n, row + 1, at + size


def _row(
    source: LabelSource,
    head: dict[str, Any],
    keys: list[str],
    label: int,
    n: int,
    dtype: torch.dtype,
    k: int,
) -> dict[str, Any]:
    """One JSON object in its stored key order, labels from the archive.

    Re-encoded labels are written as NeMo does: the top k of the decoded
    log-probabilities minus their maximum, and the log-sum-exp of that shift
    (minus the maximum log-probability).
    """
    values, ids, lse = [], [], []
    for part in pieces(n):
        got = source.take(part.stop - part.start)
        if got.exact and got.values is not None and got.ids is not None:
            values.append(got.values)
            ids.append(got.ids)
            lse.append(source.side(_LSE, label + part.start, label + part.stop))
            continue
        assert got.dense is not None
        top, top_ids = decoded_topk(got.dense, k)
        values.append((top - top[:, :1]).to(dtype))
        ids.append(top_ids)
        lse.append(-top[:, 0])
    fields: dict[str, Any] = {
        "topk_logits": torch.cat(values).tolist(),
        "topk_token_ids": torch.cat(ids).tolist(),
        _LSE: torch.cat(lse).tolist(),
    }
    for key in keys:
        fields[key] = source.side(_POS + key, label, label + n).tolist()
    rest = head["rest"]
    return {key: fields[key] if key in fields else rest[key] for key in head["order"]}
