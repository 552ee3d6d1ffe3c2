"""DistillKit captures: ``compression_config.yaml`` + ``data_{i}.parquet``.

Written by arcee-ai/DistillKit @a61c2e7 ``distillkit/sample_logits_vllm.py``
(``StreamingParquetWriter`` in ``sample_common.py``) and read by its
``OfflineSignalSource`` (``signals.py``) through ``LogprobCompressor``:

- ``compression_config.yaml``: the ``DistributionQuantizationConfig`` (vocabulary
  ``d``, ``k``, ``exact_k`` ...), see :mod:`labelzip.codecs.baseline.distillkit_quant`;
- ``data_0.parquet``, ``data_1.parquet`` ...: one row per sequence, columns
  ``input_ids`` ``list<uint64>`` (L tokens), ``compressed_logprobs``
  ``list<list<uint8>>`` and ``bytepacked_indices`` ``list<list<uint8>>``, one inner
  list per position after the first (L - 1: vLLM's prompt log-probabilities
  start at the second token). The writer buffers 1000 rows, writes them as one
  row group and starts a new file once a file holds 256 rows or more.
- legacy captures: ``packed_indices`` ``list<list<uint64>>``, ``exact_values`` and
  ``coeffs`` ``list<list<float32>>`` (config keys ``vocab_size``,
  ``polynomial_degree`` ...).

Label n of a row is the teacher's distribution after ``input_ids[: n + 1]``
(log-probabilities at T = 1, the top k sorted descending).

Lossless import keeps each position's quantised row and ids bit for bit in the
``distillkit`` codec (decode -> re-encode is not exact, see
:mod:`labelzip.codecs.baseline.distillkit_quant`). Side tensors: ``input_ids`` (one per
label: the token the position reads) and ``sequence`` (one row per sequence:
labels, last token). A lossy codec sees DistillKit's reader values with the
missing mass spread uniformly (its ``SYMMETRIC_UNIFORM``); an export of a lossy
archive re-quantises the decoded labels with the recorded config.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import yaml
from pydantic import ValidationError

from labelzip.codecs.base import Codec
from labelzip.codecs.baseline.distillkit import (
    DistillKitCodec,
    DistillKitCodecConfig,
    spread_missing_mass,
)
from labelzip.codecs.baseline.distillkit_quant import (
    DistillKitLegacyConfig,
    DistillKitQuantConfig,
    compress_logprobs,
    legacy_pack_ids,
    legacy_unpack_ids,
    pack_msb,
    unpack_msb,
)
from labelzip.errors import ConfigError, InputError
from labelzip.interop.base import (
    ExportOptions,
    ImportedStore,
    ImportOptions,
    LabelRows,
    LabelSource,
    StoreFormat,
    StoreRecord,
)
from labelzip.interop.lm_common import RECORD_LABELS, decoded_topk, lm_layout, pieces

__all__ = ["CONFIG_NAME", "DistillKitFormat", "DistillKitStore", "schema_of"]

CONFIG_NAME = "compression_config.yaml"
_DATA_RE = re.compile(r"^data_(\d+)\.parquet$")
_SIDE_TOKENS = "input_ids"
_SIDE_SEQUENCE = "sequence"


def schema_of(variant: str) -> pa.Schema:
    """The Parquet schema DistillKit writes for ``quantized`` or ``legacy`` rows."""
    ids = pa.field("input_ids", pa.list_(pa.uint64()))
    if variant == "quantized":
        rows = pa.list_(pa.list_(pa.uint8()))
        return pa.schema(
            [
                ids,
                pa.field("compressed_logprobs", rows),
                pa.field("bytepacked_indices", rows),
            ]
        )
    floats = pa.list_(pa.list_(pa.float32()))
    return pa.schema(
        [
            ids,
            pa.field("packed_indices", pa.list_(pa.list_(pa.uint64()))),
            pa.field("exact_values", floats),
            pa.field("coeffs", floats),
        ]
    )


def _data_files(root: Path) -> list[Path]:
    found = {}
    for path in root.iterdir() if root.is_dir() else []:
        if m := _DATA_RE.match(path.name):
            found[int(m.group(1))] = path
    if not found:
        raise InputError(
            f"no data_<i>.parquet files in {str(root)!r} (DistillKit capture)"
        )
    for i in range(max(found) + 1):
        if i not in found:
            raise InputError(
                f"data_{i}.parquet is missing from {str(root)!r} (files run to "
                f"data_{max(found)}.parquet)"
            )
    return [found[i] for i in sorted(found)]


def _load_config(
    path: Path,
) -> tuple[str, DistillKitQuantConfig | DistillKitLegacyConfig]:
    if not path.is_file():
        raise InputError(f"{path.name} is missing from {str(path.parent)!r}")
    text = path.read_text(encoding="utf-8")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(
            f"{path.name}: not valid YAML ({str(exc).splitlines()[0]})"
        ) from exc
    if not isinstance(doc, dict):
        raise InputError(f"{path.name}: expected a mapping of DistillKit config keys")
    legacy = "vocab_size" in doc or "polynomial_degree" in doc
    try:
        if legacy:
            return text, DistillKitLegacyConfig.model_validate(doc)
        return text, DistillKitQuantConfig.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(
            f"{path.name}: not a DistillKit compression config ({where}: {first['msg']})"
        ) from exc


def _open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(
            f"{path.name}: not a readable Parquet file ({str(exc).splitlines()[0][:160]})"
        ) from exc


def _variant(path: Path, schema: pa.Schema) -> str:
    for variant in ("quantized", "legacy"):
        if schema.equals(schema_of(variant)):
            return variant
    columns = ", ".join(f"{f.name}: {f.type}" for f in schema)
    raise InputError(
        f"{path.name}: unknown DistillKit variant (columns {columns}); labelzip reads "
        "input_ids + compressed_logprobs + bytepacked_indices, or the legacy "
        "input_ids + packed_indices + exact_values + coeffs"
    )


def _nested(column: pa.ChunkedArray | pa.Array, width: int, what: str) -> np.ndarray:
    """A list<list<T>> column of one row group -> (tokens, width) numpy array."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    inner = array.flatten()
    if array.null_count or inner.null_count:
        raise InputError(f"{what}: null entries")
    lengths = pc.list_value_length(inner).to_numpy(zero_copy_only=False)
    if lengths.size and (lengths != width).any():
        bad = int(lengths[lengths != width][0])
        raise InputError(
            f"{what}: a position holds {bad} entries, the config says {width}"
        )
    flat = inner.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, width)


class DistillKitStore(ImportedStore):
    """An opened DistillKit capture (see the module docstring)."""

    def __init__(self, root: Path, options: ImportOptions) -> None:
        self.root = root
        self.files = _data_files(root)
        config_path = Path(options.extra.get("config", root / CONFIG_NAME))
        self.config_text, self.config = _load_config(config_path)
        self.format = "distillkit"
        cfg = self.config
        self.variant = (
            "legacy" if isinstance(cfg, DistillKitLegacyConfig) else "quantized"
        )
        self.kind = "topk"
        self.value_dtype = torch.uint8
        self.k = self.config.k
        vocab = cfg.vocab_size if isinstance(cfg, DistillKitLegacyConfig) else cfg.d
        if options.num_classes is not None and options.num_classes != vocab:
            raise ConfigError(
                f"{config_path.name} says the vocabulary has {vocab} ids; "
                f"--num-classes {options.num_classes} disagrees"
            )
        self.num_classes = vocab
        self.value_convention = "log-probs"
        self.codec = self._codec()
        self.row_groups: list[list[int]] = []
        per_sequence: list[int] = []
        for path in self.files:
            pf = _open_parquet(path)
            if _variant(path, pf.schema_arrow) != self.variant:
                raise InputError(
                    f"{path.name} holds {_variant(path, pf.schema_arrow)} rows but "
                    f"{config_path.name} is a {self.variant} config"
                )
            self.row_groups.append(
                [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
            )
            for i in range(pf.num_row_groups):
                tokens = self._read(pf, path, i, ["input_ids"]).column(0)
                lengths = pc.list_value_length(tokens).to_numpy(zero_copy_only=False)
                if lengths.size and int(lengths.min()) < 2:
                    raise InputError(
                        f"{path.name} row group {i}: a row has fewer than 2 input_ids, "
                        "so no label"
                    )
                per_sequence.extend(int(n) - 1 for n in lengths)
        self.layout = lm_layout(per_sequence)
        self.num_labels = self.layout.num_labels
        self.compression = self._compression()

    def _codec(self) -> DistillKitCodec:
        if isinstance(self.config, DistillKitLegacyConfig):
            cfg = DistillKitCodecConfig(scheme="legacy", legacy=self.config)
        else:
            cfg = DistillKitCodecConfig(scheme="quantized", quant=self.config)
        return DistillKitCodec(cfg).fit([torch.zeros(1, self.num_classes)])

    def _compression(self) -> str:
        meta = _open_parquet(self.files[0]).metadata
        if meta.num_row_groups == 0:
            return "snappy"
        return str(meta.row_group(0).column(0).compression).lower()

    @staticmethod
    def _read(
        pf: pq.ParquetFile, path: Path, group: int, columns: list[str]
    ) -> pa.Table:
        try:
            return pf.read_row_group(group, columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(
                f"{path.name} row group {group}: unreadable "
                f"({str(exc).splitlines()[0][:160]})"
            ) from exc

    def lossless_codec(self) -> Codec | None:
        return self.codec

    # -- streaming -----------------------------------------------------------------
    def records(self) -> Iterator[StoreRecord]:
        for path in self.files:
            pf = _open_parquet(path)
            for group in range(pf.num_row_groups):
                table = self._read(pf, path, group, schema_of(self.variant).names)
                yield from self._group_records(path, group, table)

    def _group_records(
        self, path: Path, group: int, table: pa.Table
    ) -> Iterator[StoreRecord]:
        where = f"{path.name} row group {group}"
        tokens_col = table.column("input_ids").combine_chunks()
        token_counts = pc.list_value_length(tokens_col).to_numpy(zero_copy_only=False)
        tokens = tokens_col.flatten().to_numpy(zero_copy_only=False)
        if tokens.size and int(tokens.max()) >= 2**63:
            raise InputError(f"{where}: input_ids beyond the int64 range")
        rows, ids = self._positions(table, where)
        label_counts = self._label_counts(table)
        if (label_counts != token_counts - 1).any():
            r = int(np.nonzero(label_counts != token_counts - 1)[0][0])
            raise InputError(
                f"{where} row {r}: {int(token_counts[r])} input_ids but "
                f"{int(label_counts[r])} label positions (DistillKit stores one per "
                "token after the first)"
            )
        tok = torch.from_numpy(tokens.astype(np.int64))
        t0 = p0 = 0
        for r, n in enumerate(label_counts.tolist()):
            seq_tokens = tok[t0 : t0 + n + 1]
            for i, part in enumerate(pieces(n)):
                span = slice(p0 + part.start, p0 + part.stop)
                record = StoreRecord(
                    source=f"{path.name}:row {r}",
                    topk_values=rows[span],
                    topk_ids=ids[span],
                    side={_SIDE_TOKENS: seq_tokens[part].clone()},
                )
                if i == 0:
                    record.blobs[_SIDE_SEQUENCE] = torch.tensor(
                        [[n, int(seq_tokens[-1])]], dtype=torch.int64
                    )
                yield record
            t0 += n + 1
            p0 += n

    def _label_counts(self, table: pa.Table) -> np.ndarray:
        name = "compressed_logprobs" if self.variant == "quantized" else "exact_values"
        column = table.column(name).combine_chunks()
        return (
            pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
        )

    def _positions(
        self, table: pa.Table, where: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions, R) uint8 rows and (positions, k) ids of a row group, checked."""
        cfg = self.config
        if isinstance(cfg, DistillKitLegacyConfig):
            exact = _nested(
                table.column("exact_values"), cfg.exact_k, f"{where} exact_values"
            )
            coeffs = _nested(table.column("coeffs"), cfg.num_coeffs, f"{where} coeffs")
            words = _nested(
                table.column("packed_indices"),
                cfg.index_words(),
                f"{where} packed_indices",
            )
            values = np.concatenate(
                [
                    exact.astype("<f4").view(np.uint8),
                    coeffs.astype("<f4").view(np.uint8),
                ],
                axis=1,
            )
            packed = torch.from_numpy(words.astype(np.uint64).view(np.int64))
            ids = legacy_unpack_ids(packed, cfg.index_bits(), cfg.k)
            canonical = legacy_pack_ids(ids, cfg.index_bits())
        else:
            values = _nested(
                table.column("compressed_logprobs"),
                cfg.row_bytes(),
                f"{where} compressed_logprobs",
            )
            packed = torch.from_numpy(
                _nested(
                    table.column("bytepacked_indices"),
                    cfg.index_bytes(),
                    f"{where} bytepacked_indices",
                ).copy()
            )
            ids = unpack_msb(packed, cfg.index_bits(), cfg.k)
            canonical = pack_msb(ids, cfg.index_bits())
        if not torch.equal(canonical, packed):
            raise InputError(
                f"{where}: packed ids carry bits DistillKit's packing leaves zero; "
                "not a DistillKit capture"
            )
        if ids.numel() and int(ids.max()) >= self.num_classes:
            raise InputError(
                f"{where}: token id {int(ids.max())} outside the vocabulary of "
                f"{self.num_classes} ({CONFIG_NAME} d)"
            )
        return torch.from_numpy(np.array(values, dtype=np.uint8, order="C")), ids

    def to_dense(self, record: StoreRecord) -> torch.Tensor:
        """DistillKit's reader values, the missing mass spread uniformly."""
        assert record.topk_values is not None and record.topk_ids is not None
        values = self.codec.values(record.topk_values)
        return spread_missing_mass(values, record.topk_ids, self.num_classes)

    def describe(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "variant": self.variant,
            "value_convention": self.value_convention,
            "config_name": CONFIG_NAME,
            "config_yaml": self.config_text,
            "compression": self.compression,
            "k": self.k,
            "record_labels": RECORD_LABELS,
            "files": [
                {"name": path.name, "row_groups": groups}
                for path, groups in zip(self.files, self.row_groups, strict=True)
            ],
        }


class _Writer:
    """Rebuild DistillKit rows from an archive, one row group at a time."""

    def __init__(self, source: LabelSource) -> None:
        doc = source.interop
        self.source = source
        self.variant = str(doc["variant"])
        text = str(doc["config_yaml"])
        loaded = yaml.safe_load(text)
        if self.variant == "legacy":
            self.legacy: DistillKitLegacyConfig | None = (
                DistillKitLegacyConfig.model_validate(loaded)
            )
            self.quant: DistillKitQuantConfig | None = None
        else:
            self.legacy = None
            self.quant = DistillKitQuantConfig.model_validate(loaded)
        self.label = 0
        self.sequence = 0

    def table(self, rows: int) -> pa.Table:
        tokens, counts, values, ids = [], [], [], []
        for _ in range(rows):
            seq = self.source.side(_SIDE_SEQUENCE, self.sequence, self.sequence + 1)[0]
            n, last = int(seq[0]), int(seq[1])
            toks = self.source.side(_SIDE_TOKENS, self.label, self.label + n)
            tokens.append(torch.cat([toks, torch.tensor([last])]).numpy())
            for part in pieces(n):
                v, i = self._labels(part.stop - part.start)
                values.append(v)
                ids.append(i)
            counts.append(n)
            self.label += n
            self.sequence += 1
        return self._arrow(tokens, counts, values, ids)

    def _labels(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        got: LabelRows = self.source.take(count)
        if got.exact and got.values is not None and got.ids is not None:
            return got.values.numpy(), got.ids.numpy()
        if self.quant is None:
            raise ConfigError(
                "a legacy DistillKit capture is exported only after a lossless import; "
                "this archive was re-encoded"
            )
        assert got.dense is not None
        top, ids = decoded_topk(got.dense, self.quant.k)
        return compress_logprobs(top, self.quant).numpy(), ids.numpy()

    def _arrow(
        self,
        tokens: list[np.ndarray],
        counts: list[int],
        values: list[np.ndarray],
        ids: list[np.ndarray],
    ) -> pa.Table:
        schema = schema_of(self.variant)
        row_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        token_offsets = np.concatenate([[0], np.cumsum([len(t) for t in tokens])])
        input_ids = pa.ListArray.from_arrays(
            pa.array(token_offsets.astype(np.int32)),
            pa.array(np.concatenate(tokens).astype(np.uint64), type=pa.uint64()),
        )
        rows = np.concatenate(values) if values else np.zeros((0, 0), np.uint8)
        id_rows = np.concatenate(ids) if ids else np.zeros((0, 0), np.int64)
        if self.legacy is not None:
            cfg = self.legacy
            split = 4 * cfg.exact_k
            floats = np.ascontiguousarray(rows)
            columns = [
                legacy_pack_ids(torch.from_numpy(id_rows), cfg.index_bits())
                .numpy()
                .view(np.uint64),
                floats[:, :split].copy().view("<f4"),
                floats[:, split:].copy().view("<f4"),
            ]
        else:
            assert self.quant is not None
            packed = pack_msb(
                torch.from_numpy(id_rows), self.quant.index_bits()
            ).numpy()
            columns = [rows, packed]
        arrays = [input_ids] + [
            _list_of_lists(col, row_offsets, field.type)
            for col, field in zip(columns, list(schema)[1:], strict=True)
        ]
        return pa.Table.from_arrays(arrays, schema=schema)


def _list_of_lists(
    matrix: np.ndarray, row_offsets: np.ndarray, kind: pa.DataType
) -> pa.Array:
    """(positions, width) matrix -> list<list<T>> with ``row_offsets`` per row."""
    assert isinstance(kind, pa.ListType) and isinstance(kind.value_type, pa.ListType)
    width = matrix.shape[1] if matrix.ndim == 2 else 0
    inner_offsets = (np.arange(matrix.shape[0] + 1) * width).astype(np.int32)
    flat = pa.array(matrix.reshape(-1), type=kind.value_type.value_type)
    inner = pa.ListArray.from_arrays(pa.array(inner_offsets), flat)
    return pa.ListArray.from_arrays(pa.array(row_offsets), inner)


class DistillKitFormat(StoreFormat):
    """DistillKit's Parquet captures (``sample_logits_vllm``)."""

    name = "distillkit"
    summary = "DistillKit captures: compression_config.yaml + data_<i>.parquet"

    def open(self, path: Path, options: ImportOptions) -> ImportedStore:
        return DistillKitStore(path, options)

    def export(self, source: LabelSource, dest: Path, options: ExportOptions) -> None:
        doc = source.interop
        (dest / str(doc["config_name"])).write_text(
            str(doc["config_yaml"]), encoding="utf-8"
        )
        writer = _Writer(source)
        schema = schema_of(writer.variant)
        for entry in doc["files"]:
            with pq.ParquetWriter(
                dest / str(entry["name"]),
                schema=schema,
                compression=str(doc["compression"]),
            ) as out:
                for rows in entry["row_groups"]:
                    out.write_table(writer.table(int(rows)))
