"""Megatron-LM cached-logit shards: ``cp{C}_dp{D}__{lastIter}.tar``.

Written by NVIDIA/Megatron-LM 277c4f8 (PR #5019)
``megatron/training/distillation/logits_saver.py`` (``LogitsSaverHooks``) and read
by ``cached_logits_loss.py`` (``TeacherTarDataset`` + ``topk_kl_div``) through
``utils_logits.py``:

- one tar per (context-parallel rank C, data-parallel rank D) and flush; the
  first member is ``_meta.json`` (dataset hash, its identifiers and the saver's
  ``k``, ``p``, ``min_k``, ``save_dtype``), then one ``{iteration}.pt.zst`` per
  training iteration: zstd (level 3) of ``torch.save({'values': [...],
  'indices_low': [...], 'bit_17': [...]})``, one list entry per microbatch;
- ``values`` (S, B, K) log-probabilities at T = 1 (top k, descending) in
  ``save_dtype``; ``indices_low`` uint16 and ``bit_17`` bool of the same shape,
  the id being ``bit_17 << 16 | indices_low`` (vocabularies up to 2^17);
- with top-p (``p`` set) K is cut per microbatch to its largest nucleus and the
  entries past a token's nucleus hold the sentinels -1000 and id -1, which the
  17-bit split stores as ``(65535, True)``: id 131071.

Label order: shards by (C, D, iteration), members in tar order, microbatches,
then sequence b, then position s. The tensors do not record the vocabulary:
``--num-classes`` gives it, else the largest id + 1.

Lossless import: ``topk`` with K = the largest stored K, the stored dtype and
decoder ``ms`` at T = 1 (the missing mass spread uniformly: Megatron's "ghost
token"). Padding entries (value -1000) keep their value at an id that is not
among the row's own (the smallest free one); export puts id 131071 back and
cuts each microbatch to its stored K. Side tensors: ``microbatch`` (per
microbatch: shard, iteration, S, B, K) and the ``_meta.json`` texts, verbatim.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
import zstandard

from labelzip.codecs.base import Codec
from labelzip.codecs.baseline.distillkit import spread_missing_mass
from labelzip.codecs.registry import create_codec
from labelzip.errors import InputError
from labelzip.interop.base import (
    ExportOptions,
    ImportedStore,
    ImportOptions,
    LabelSource,
    StoreFormat,
    StoreRecord,
)
from labelzip.interop.lm_common import (
    RECORD_LABELS,
    decoded_topk,
    lm_layout,
    vocabulary,
)

__all__ = [
    "PAD_ID",
    "PAD_VALUE",
    "MegatronFormat",
    "MegatronStore",
    "read_payload",
    "write_shard",
]

PAD_VALUE = -1e3  # CACHED_LOGITS_LOGPROB_SENTINEL
PAD_ID = (1 << 17) - 1  # the index sentinel -1 after the 17-bit split
META = "_meta.json"
_TAR_RE = re.compile(r"^cp(?P<cp>\d+)_dp(?P<dp>\d+)__(?P<iter>\d+)\.tar$")
_MEMBER_RE = re.compile(r"^(?P<iter>\d+)\.pt\.zst$")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_SIDE_MB = "microbatch"
_SIDE_META = "meta_json"
_SIDE_META_LEN = "meta_json_bytes"
_ZSTD_LEVEL = 3


@dataclass
class _Shard:
    path: Path
    meta: bytes = b""
    # per member: (iteration, [(S, B, K) per microbatch])
    members: list[tuple[int, list[tuple[int, int, int]]]] = field(default_factory=list)


def _shards(root: Path) -> list[Path]:
    if not root.is_dir():
        raise InputError(f"{str(root)!r} is not a folder of Megatron logit shards")
    found = []
    for path in root.iterdir():
        if path.suffix != ".tar":
            continue
        m = _TAR_RE.match(path.name)
        if m is None:
            raise InputError(
                f"{path.name}: not a Megatron shard name (cp<C>_dp<D>__<iteration>.tar)"
            )
        found.append(((int(m["cp"]), int(m["dp"]), int(m["iter"])), path))
    if not found:
        raise InputError(f"no cp<C>_dp<D>__<iteration>.tar shards in {str(root)!r}")
    return [p for _, p in sorted(found)]


def _members(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each member, streamed; InputError naming the shard."""
    try:
        with tarfile.open(path, mode="r|") as tar:
            for member in tar:
                if not member.isreg():
                    raise InputError(
                        f"{path.name}: member {member.name!r} is not a file"
                    )
                handle: IO[bytes] | None = tar.extractfile(member)
                assert handle is not None
                yield member.name, handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"{path.name}: unreadable tar ({exc})") from exc


def read_payload(data: bytes, where: str) -> dict[str, list[torch.Tensor]]:
    """One ``{iteration}.pt.zst`` member -> its checked dict of tensor lists.

    Raises:
        InputError: naming ``where``: not zstd, truncated, not a tensors-only
            ``torch.save``, or not Megatron's three equal-shaped lists.
    """
    try:
        obj = zstandard.ZstdDecompressor().decompressobj()
        raw = obj.decompress(data)
    except zstandard.ZstdError as exc:
        raise InputError(f"{where}: not a zstd frame ({exc})") from exc
    if not obj.eof:
        raise InputError(f"{where}: truncated zstd frame")
    try:
        loaded = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(
            f"{where}: not a tensors-only torch.save ({first[:160]})"
        ) from exc
    keys = ("values", "indices_low", "bit_17")
    if not isinstance(loaded, dict) or set(loaded) != set(keys):
        raise InputError(f"{where}: expected a dict of {', '.join(keys)}")
    lists = [loaded[key] for key in keys]
    if not all(isinstance(x, list) for x in lists) or len({len(x) for x in lists}) != 1:
        raise InputError(
            f"{where}: values, indices_low, bit_17 must be equal-length lists"
        )
    for values, low, bit in zip(*lists, strict=True):
        shapes = {
            tuple(t.shape) if isinstance(t, torch.Tensor) else None
            for t in (values, low, bit)
        }
        if len(shapes) != 1 or None in shapes or len(next(iter(shapes)) or ()) != 3:
            raise InputError(
                f"{where}: a microbatch's tensors are not three (S, B, K) tensors"
            )
        if (
            low.dtype != torch.uint16
            or bit.dtype != torch.bool
            or not values.is_floating_point()
        ):
            raise InputError(
                f"{where}: expected float values, uint16 indices_low, bool bit_17; got "
                f"{values.dtype}, {low.dtype}, {bit.dtype}"
            )
    return dict(zip(keys, lists, strict=True))


class MegatronStore(ImportedStore):
    """An opened folder of Megatron shards (see the module docstring)."""

    def __init__(self, root: Path, options: ImportOptions) -> None:
        self.root = root
        self.format = "megatron"
        self.kind = "topk"
        self.value_convention = "log-probs"
        self.shards = [_Shard(path) for path in _shards(root)]
        saver: dict[str, Any] | None = None
        dtype: torch.dtype | None = None
        largest, per_sequence, k = 0, [], 0
        for shard in self.shards:
            for name, data in _members(shard.path):
                where = f"{shard.path.name}:{name}"
                if name == META:
                    if shard.meta or shard.members:
                        raise InputError(f"{where}: {META} must come once, first")
                    shard.meta = data
                    saver = self._check_meta(data, where, saver)
                    continue
                m = _MEMBER_RE.match(name)
                if m is None:
                    raise InputError(
                        f"{where}: unexpected member (not <iteration>.pt.zst)"
                    )
                if not shard.meta:
                    raise InputError(f"{shard.path.name}: no leading {META}")
                payload = read_payload(data, where)
                shapes = []
                for values, low, bit in zip(*payload.values(), strict=True):
                    if dtype is None:
                        dtype = values.dtype
                    if values.dtype != dtype:
                        raise InputError(
                            f"{where}: values are {values.dtype}, earlier {dtype}"
                        )
                    ids = _ids(low, bit)
                    real = ids[values != PAD_VALUE]
                    if real.numel():
                        largest = max(largest, int(real.max()))
                    s, b, kk = values.shape
                    shapes.append((s, b, kk))
                    per_sequence.extend([s] * b)
                    k = max(k, kk)
                shard.members.append((int(m["iter"]), shapes))
            if not shard.meta:
                raise InputError(f"{shard.path.name}: no {META} member")
            if not shard.members:
                raise InputError(f"{shard.path.name}: no <iteration>.pt.zst members")
        assert saver is not None and dtype is not None
        self.saver = saver
        self.variant = "top-p" if saver.get("p") is not None else "top-k"
        expected = _DTYPES.get(str(saver.get("save_dtype")))
        if expected is not None and expected != dtype:
            raise InputError(
                f"{META} says {saver['save_dtype']} but the values are {dtype}"
            )
        self.value_dtype = dtype
        self.k = self.width = k
        self.num_classes = vocabulary(options.num_classes, largest, str(root))
        self.layout = lm_layout(per_sequence)
        self.num_labels = self.layout.num_labels

    @staticmethod
    def _check_meta(
        data: bytes, where: str, saver: dict[str, Any] | None
    ) -> dict[str, Any]:
        try:
            meta = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{where}: not JSON ({exc})") from exc
        if not isinstance(meta, dict) or not isinstance(meta.get("saver"), dict):
            raise InputError(f"{where}: no saver settings (k, p, save_dtype)")
        if saver is not None and meta["saver"] != saver:
            raise InputError(
                f"{where}: saver settings {meta['saver']} differ from the other shards' "
                f"{saver} (mixed captures)"
            )
        return dict(meta["saver"])

    def lossless_codec(self) -> Codec | None:
        names = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
        codec = create_codec(
            "topk",
            k=self.k,
            decoder="ms",
            temperature=1.0,
            relative=False,
            value_dtype=names[self.value_dtype],
        )
        return codec.fit([torch.zeros(1, self.num_classes)])

    # -- streaming -----------------------------------------------------------------
    def records(self) -> Iterator[StoreRecord]:
        for index, shard in enumerate(self.shards):
            first = True
            for name, data in _members(shard.path):
                if name == META:
                    continue
                where = f"{shard.path.name}:{name}"
                payload = read_payload(data, where)
                iteration = int(name.split(".")[0])
                for values, low, bit in zip(*payload.values(), strict=True):
                    s, b, kk = values.shape
                    v = values.permute(1, 0, 2).reshape(b * s, kk)
                    ids = _ids(low, bit).permute(1, 0, 2).reshape(b * s, kk)
                    v, ids = self._pad(v, ids, where)
                    mb = torch.tensor([[index, iteration, s, b, kk]], dtype=torch.int64)
                    for i, start in enumerate(range(0, b * s, RECORD_LABELS)):
                        stop = min(start + RECORD_LABELS, b * s)
                        record = StoreRecord(
                            where, topk_values=v[start:stop], topk_ids=ids[start:stop]
                        )
                        if i == 0:
                            record.blobs[_SIDE_MB] = mb
                        if i == 0 and first:
                            record.blobs[_SIDE_META] = torch.frombuffer(
                                bytearray(shard.meta), dtype=torch.uint8
                            )
                            record.blobs[_SIDE_META_LEN] = torch.tensor(
                                [len(shard.meta)]
                            )
                            first = False
                        yield record

    def _pad(
        self, values: torch.Tensor, ids: torch.Tensor, where: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Widen to K with padding entries; move every padding id to a free id."""
        n, kk = values.shape
        if kk < self.width:
            values = torch.cat(
                [values, values.new_full((n, self.width - kk), PAD_VALUE)], 1
            )
            ids = torch.cat([ids, ids.new_full((n, self.width - kk), PAD_ID)], 1)
        pad = values == PAD_VALUE
        if bool((ids[pad] != PAD_ID).any()):
            raise InputError(
                f"{where}: an entry holds the padding value -1000 with a real id"
            )
        real = torch.where(pad, -1, ids)
        if bool((real >= self.num_classes).any()):
            raise InputError(
                f"{where}: token id {int(real.max())} outside the vocabulary of "
                f"{self.num_classes} (--num-classes)"
            )
        if bool(pad.any()):
            taken = torch.zeros(n, self.width + 1, dtype=torch.bool)
            inside = (real >= 0) & (real <= self.width)
            taken.scatter_(1, torch.where(inside, real, self.width).long(), inside)
            free = torch.argmin(taken.to(torch.int8), dim=1, keepdim=True)
            ids = torch.where(pad, free.expand(n, self.width), ids)
        return values, ids

    def to_dense(self, record: StoreRecord) -> torch.Tensor:
        """Top-k log-probabilities, the residual mass spread (Megatron's ghost token)."""
        assert record.topk_values is not None and record.topk_ids is not None
        return spread_missing_mass(
            record.topk_values, record.topk_ids, self.num_classes
        )

    def describe(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "variant": self.variant,
            "value_convention": self.value_convention,
            "value_dtype": str(self.value_dtype).removeprefix("torch."),
            "k": self.k,
            "saver": self.saver,
            "pad_value": PAD_VALUE,
            "pad_id": PAD_ID,
            "microbatches": sum(len(m[1]) for s in self.shards for m in s.members),
            "shards": [
                {"name": shard.path.name, "members": len(shard.members)}
                for shard in self.shards
            ],
        }


def _ids(low: torch.Tensor, bit: torch.Tensor) -> torch.Tensor:
    return (bit.long() << 16) | low.to(torch.int32).long()


class MegatronFormat(StoreFormat):
    """Megatron-LM's cached top-k log-probability shards."""

    name = "megatron"
    summary = (
        "Megatron-LM logit shards: cp<C>_dp<D>__<iteration>.tar of zstd torch.save"
    )

    def open(self, path: Path, options: ImportOptions) -> ImportedStore:
        return MegatronStore(path, options)

    def export(self, source: LabelSource, dest: Path, options: ExportOptions) -> None:
        doc = source.interop
        dtype = _DTYPES[
            {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}[
                str(doc["value_dtype"])
            ]
        ]
        mb_row = 0
        meta_at = 0
        for index, shard in enumerate(doc["shards"]):
            size = int(source.side(_SIDE_META_LEN, index, index + 1)[0])
            meta = bytes(
                source.side(_SIDE_META, meta_at, meta_at + size).numpy().tobytes()
            )
            meta_at += size
            writes: list[tuple[int, bytes]] = []
            for _ in range(int(shard["members"])):
                iteration, payload, mb_row = _member(source, doc, dtype, index, mb_row)
                writes.append((iteration, payload))
            write_shard(dest / str(shard["name"]), meta, writes)


def _member(
    source: LabelSource, doc: dict[str, Any], dtype: torch.dtype, shard: int, row: int
) -> tuple[int, bytes, int]:
    """One iteration's payload rebuilt from the archive; returns the next side row."""
    values, low, high = [], [], []
    iteration = None
    while row < int(doc["microbatches"]):
        mb = source.side(_SIDE_MB, row, row + 1)[0].tolist()
        if mb[0] != shard or (iteration is not None and mb[1] != iteration):
            break
        iteration = mb[1]
        s, b, kk = mb[2], mb[3], mb[4]
        v, ids = _labels(source, b * s, int(doc["k"]), dtype)
        v, ids = v[:, :kk], ids[:, :kk]
        ids = torch.where(v == PAD_VALUE, PAD_ID, ids)
        # copies, never views: torch.save writes a view's whole storage
        values.append(
            v.reshape(b, s, kk)
            .permute(1, 0, 2)
            .clone(memory_format=torch.contiguous_format)
        )
        ids = ids.reshape(b, s, kk).permute(1, 0, 2).contiguous()
        low.append((ids & 0xFFFF).to(torch.uint16))
        high.append((ids >> 16).to(torch.bool))
        row += 1
    assert iteration is not None
    buf = io.BytesIO()
    torch.save({"values": values, "indices_low": low, "bit_17": high}, buf)
    return iteration, buf.getvalue(), row


def _labels(
    source: LabelSource, count: int, k: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` labels as (values in ``dtype``, ids): stored, or the decoded top k."""
    got = source.take(count)
    if got.exact and got.values is not None and got.ids is not None:
        return got.values, got.ids
    assert got.dense is not None
    values, ids = decoded_topk(got.dense, k)
    return values.to(dtype), ids


def write_shard(path: Path, meta: bytes, writes: list[tuple[int, bytes]]) -> None:
    """The tar as ``LogitsSaverHooks._write_batched_tar`` lays it out."""
    compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    with open(path, "wb") as stream, tarfile.open(fileobj=stream, mode="w") as tar:
        info = tarfile.TarInfo(name=META)
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
        for iteration, data in writes:
            packed = compressor.compress(data)
            info = tarfile.TarInfo(name=f"{iteration}.pt.zst")
            info.size = len(packed)
            tar.addfile(info, io.BytesIO(packed))
