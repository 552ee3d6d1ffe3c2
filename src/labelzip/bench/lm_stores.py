"""LM capture stores written the way DistillKit, Megatron-LM and NeMo-Aligner write them.

Each writer produces what the framework's own capture script writes, from
(sequences, positions, V) teacher logits: the test fixtures of the importers and
the stores of ``benchmarks/interop_lm.py`` (each framework's bytes at its usual
settings). Followed, not copied: DistillKit @a61c2e7 ``sample_logits_vllm.py`` + ``StreamingParquetWriter``;
Megatron-LM 277c4f8 ``LogitsSaverHooks`` (``_process_single_microbatch``,
``_apply_topp_truncation``, ``_write_batched_tar``); NeMo-Aligner @af2b3bd
``compute_topk_logits.py`` (``write_generations``) with
``compute_topk_logits_in_batched_sequence``.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

from labelzip.codecs.baseline.distillkit_quant import (
    DistillKitLegacyConfig,
    DistillKitQuantConfig,
    compress_logprobs,
    legacy_pack_ids,
    pack_msb,
)
from labelzip.interop.distillkit import schema_of
from labelzip.interop.megatron import write_shard

__all__ = [
    "MegatronSaver",
    "lm_logits",
    "write_distillkit",
    "write_megatron",
    "write_nemo",
]


def lm_logits(
    sequences: int, positions: int, vocab: int, seed: int = 0
) -> torch.Tensor:
    """(sequences, positions, V) float32 logits with an LM's power-law shape."""
    g = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(vocab, generator=g) for _ in range(sequences)])
    base = -1.2 * torch.log1p(order.float())[:, None, :]
    noise = 1.5 * torch.randn(sequences, positions, vocab, generator=g)
    return base + noise


# -- DistillKit ----------------------------------------------------------------------
def write_distillkit(
    folder: Path,
    logits: torch.Tensor,
    config: DistillKitQuantConfig | DistillKitLegacyConfig,
    *,
    lengths: list[int] | None = None,
    tokens: torch.Tensor | None = None,
    write_batch_size: int = 1000,
    file_max_rows: int = 256,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Write ``data_<i>.parquet`` + ``compression_config.yaml`` as DistillKit does.

    Row s has ``lengths[s]`` input ids (default: all positions + 1; ``tokens[s]``
    when given, else seeded random ids) and a label for each position after the
    first. Rows are buffered ``write_batch_size`` at
    a time and written as one table; a file is closed once it holds
    ``file_max_rows`` rows or more. Returns the input ids of each row.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "compression_config.yaml").write_text(
        yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8"
    )
    g = torch.Generator().manual_seed(seed)
    legacy = isinstance(config, DistillKitLegacyConfig)
    vocab = (
        config.vocab_size if isinstance(config, DistillKitLegacyConfig) else config.d
    )
    schema = schema_of("legacy" if legacy else "quantized")
    rows, all_tokens = [], []
    for s in range(logits.shape[0]):
        n = (lengths[s] if lengths else logits.shape[1] + 1) - 1
        ids_in = torch.randint(0, vocab, (n + 1,), generator=g)
        row_tokens = tokens[s, : n + 1] if tokens is not None else ids_in
        all_tokens.append(row_tokens)
        logprobs = torch.log_softmax(logits[s, :n].float(), dim=-1)
        values, ids = logprobs.topk(config.k, dim=-1)
        if isinstance(config, DistillKitLegacyConfig):
            row = _legacy_row(values, ids, config)
        else:
            row = {
                "compressed_logprobs": compress_logprobs(values, config).tolist(),
                "bytepacked_indices": pack_msb(ids, config.index_bits()).tolist(),
            }
        rows.append({"input_ids": row_tokens.tolist(), **row})
    writer, index, in_file = None, 0, 0
    for start in range(0, len(rows), write_batch_size):
        batch = rows[start : start + write_batch_size]
        if writer is None:
            writer = pq.ParquetWriter(folder / f"data_{index}.parquet", schema=schema)
            in_file = 0
        columns = [
            pa.array([r[name] for r in batch], type=schema.field(name).type)
            for name in schema.names
        ]
        writer.write_table(pa.Table.from_arrays(columns, schema=schema))
        in_file += len(batch)
        if in_file >= file_max_rows:
            writer.close()
            writer, index = None, index + 1
    if writer is not None:
        writer.close()
    return all_tokens


def _legacy_row(
    values: torch.Tensor, ids: torch.Tensor, cfg: DistillKitLegacyConfig
) -> dict[str, list]:
    """One legacy row: fp16 exact values, least-squares coefficients, LSB-packed ids."""
    exact = values[:, : cfg.exact_k].to(torch.float16).float()
    coeffs = torch.zeros(values.shape[0], 0)
    if cfg.num_coeffs:
        a = torch.arange(cfg.k - cfg.exact_k, dtype=torch.float32) + 1
        powers = [
            -i if cfg.invert_polynomial else i for i in range(cfg.polynomial_degree + 1)
        ]
        cols = [a**p for p in powers] + ([a.sqrt()] if cfg.with_sqrt_term else [])
        design = torch.stack(cols, dim=-1)
        coeffs = torch.linalg.lstsq(
            design.expand(values.shape[0], -1, -1), values[:, cfg.exact_k :, None]
        ).solution[..., 0]
    words = legacy_pack_ids(ids, cfg.index_bits())
    return {
        "packed_indices": [[w & (2**64 - 1) for w in row] for row in words.tolist()],
        "exact_values": exact.tolist(),
        "coeffs": coeffs.tolist(),
    }


# -- Megatron-LM ---------------------------------------------------------------------
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _microbatch(
    logits: torch.Tensor, k: int, p: float | None, min_k: int, dtype: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(S, B, V) logits -> (values, indices_low, bit_17) as one TP rank saves them."""
    logits = logits.float()
    top, idx = torch.topk(logits, min(k, logits.shape[-1]), dim=-1)
    values = top - torch.logsumexp(logits, dim=-1, keepdim=True)
    if p is not None:
        probs = values.float().exp()
        keep = (probs.cumsum(-1) - probs) < p
        keep |= torch.arange(values.shape[-1]) < min(min_k, values.shape[-1])
        kept = int(keep.sum(-1).max())
        values, idx, keep = values[..., :kept], idx[..., :kept], keep[..., :kept]
        values = torch.where(keep, values, -1e3)
        idx = torch.where(keep, idx, -1)
    return (
        (idx & 0xFFFF).to(torch.uint16),
        (idx >> 16).to(torch.bool),
        values.to(_DTYPES[dtype]),
    )


@dataclass(frozen=True)
class MegatronSaver:
    """The settings of a ``LogitsSaverHooks`` run: what each position keeps
    (``k``, ``p``, ``min_k``, ``save_dtype``, stored in every shard's meta) and
    how the shards are cut (microbatches per iteration, iterations per tar, the
    data-parallel rank and the first iteration number)."""

    k: int
    p: float | None = None
    min_k: int = 1
    save_dtype: str = "fp16"
    micro_batch: int = 2
    microbatches: int = 2
    iterations_per_tar: int = 2
    dp: int = 0
    first_iteration: int = 1


def write_megatron(
    folder: Path, logits: torch.Tensor, saver: MegatronSaver
) -> list[Path]:
    """Write ``cp0_dp{dp}__{last}.tar`` shards as ``LogitsSaverHooks`` does.

    ``logits`` is (sequences, S, V); each iteration takes ``micro_batch *
    microbatches`` sequences (in order), each microbatch stored as (S, B, K).
    """
    k, p, min_k, save_dtype = saver.k, saver.p, saver.min_k, saver.save_dtype
    micro_batch, microbatches, dp = saver.micro_batch, saver.microbatches, saver.dp
    folder.mkdir(parents=True, exist_ok=True)
    identifiers = {
        "seed": 1234,
        "sequence_length": logits.shape[1],
        "train_samples": 8,
        "blend": {"kind": "mock", "mock": True},
    }
    digest = hashlib.md5(
        json.dumps(identifiers, separators=(",", ":")).encode(), usedforsecurity=False
    ).hexdigest()
    meta = {
        "hash": digest,
        "identifiers": identifiers,
        "saver": {"k": k, "p": p, "min_k": min_k, "save_dtype": save_dtype},
    }
    meta_bytes = json.dumps(meta, sort_keys=False, separators=(",", ":")).encode(
        "utf-8"
    )
    per_iter = micro_batch * microbatches
    pending: dict[int, bytes] = {}
    written = []
    for it, start in enumerate(range(0, logits.shape[0], per_iter)):
        values, low, high = [], [], []
        for m in range(microbatches):
            lo = start + m * micro_batch
            mb = logits[lo : lo + micro_batch].transpose(0, 1)  # (S, B, V)
            if mb.shape[1] == 0:
                break
            i_low, bit, vals = _microbatch(mb, k, p, min_k, save_dtype)
            values.append(vals)
            low.append(i_low)
            high.append(bit)
        buf = io.BytesIO()
        torch.save({"values": values, "indices_low": low, "bit_17": high}, buf)
        pending[saver.first_iteration + it] = buf.getvalue()
        if len(pending) == saver.iterations_per_tar:
            written.append(_write_tar(folder, dp, pending, meta_bytes))
            pending = {}
    if pending:
        written.append(_write_tar(folder, dp, pending, meta_bytes))
    return written


def _write_tar(folder: Path, dp: int, writes: dict[int, bytes], meta: bytes) -> Path:
    path = folder / f"cp0_dp{dp}__{max(writes)}.tar"
    write_shard(path, meta, list(writes.items()))
    return path


# -- NeMo-Aligner --------------------------------------------------------------------
def write_nemo(
    path: Path,
    logits: torch.Tensor,
    *,
    k: int,
    batch_size: int = 2,
    precision: torch.dtype = torch.bfloat16,
    tokens: torch.Tensor | None = None,
    seed: int = 0,
) -> None:
    """Append rows to ``path`` as ``compute_topk_logits.py`` does (padded batches).

    Sequences of a batch share its padded length; each row holds the SFT keys
    (tokens, labels, loss_mask, contexts, context_lengths, answers, metadata),
    then topk_logits [seq, K], topk_token_ids, log_sum_exp_logits [seq], index.
    ``tokens`` (sequences, seq) are the input ids (default: seeded random ids).
    """
    g = torch.Generator().manual_seed(seed)
    vocab = logits.shape[-1]
    index = 0
    with open(path, "a", encoding="utf-8") as out:
        for start in range(0, logits.shape[0], batch_size):
            batch = logits[start : start + batch_size].to(precision)
            shifted = batch - torch.amax(batch, dim=-1, keepdim=True)
            lse = shifted.exp().sum(-1).log().float()
            top, ids = torch.topk(shifted, k)
            seq = batch.shape[1]
            for i in range(batch.shape[0]):
                drawn = torch.randint(0, vocab, (seq,), generator=g)
                row_ids = tokens[start + i] if tokens is not None else drawn
                ids_list = [int(t) for t in row_ids.tolist()]
                context = int(torch.randint(1, seq, (1,), generator=g))
                obj = {
                    "tokens": ids_list,
                    "labels": ids_list[1:] + [0],
                    "loss_mask": [0] * context + [1] * (seq - context),
                    "contexts": ids_list[:context] + [0] * (seq - context),
                    "context_lengths": context,
                    "answers": ids_list[context:] + [0] * context,
                    "metadata": {"system": "", "mask": "User", "type": None},
                    "topk_logits": top[i].tolist(),
                    "topk_token_ids": ids[i].tolist(),
                    "log_sum_exp_logits": lse[i].tolist(),
                    "index": index,
                }
                index += 1
                out.write(json.dumps(obj, ensure_ascii=False) + "\n")
