"""DistillKit's per-token log-probability quantiser, written from its specification.

DistillKit (arcee-ai/DistillKit @a61c2e7, ``distillkit/compression``) stores each
token's top-k log-probabilities, sorted descending, as one row of bytes:

1. optionally delta-encoded (``delta_encoding``: value i becomes ``v_i - v_(i-1)``,
   the first kept as is; with ``error_diffusion`` the float rounding error is
   carried to the next delta);
2. the first ``exact_k`` values in ``exact_dtype``;
3. for the other ``k - exact_k``: least-squares coefficients of the
   ``polynomial_terms`` (integer powers of the position t, ``sqrt`` or ``exp``,
   t = 0..n-1 or in [0, 1] with ``normalize_t``) in ``term_dtype``;
4. per residual bin: a scale (max |residual| / 2^(bits-1)) in ``scale_dtype``,
   then ``num_elements`` residuals rounded to ``element_bits``-bit integers
   (offset by 2^(bits-1)), packed most significant bit first, padded to a byte.

The ids are packed per token most significant bit first at
``ceil(log2 d)`` bits, padded to a byte. All multi-byte floats are little-endian
(the writer views the tensors as bytes on a little-endian host).

The older ("legacy") scheme stores per token ``exact_k`` values (fp16 values in a
float32 column), ``polynomial_degree + 1`` (+1 with ``with_sqrt_term``)
coefficients of powers of ``a = 1..k-exact_k`` (negative powers with
``invert_polynomial``) and the ids packed least significant bit first into
64-bit words, ``64 // bits`` ids a word.

Decoding follows DistillKit's arithmetic step by step (dtypes and the order of
the operations), so decoded values equal what its ``LogprobCompressor`` gives a
trainer. Encoding follows its fit (SVD pseudo-inverse, singular values below
1e-5 dropped) and quantisers; decode -> encode is not the identity in general (a
refit of float32 polynomial values moves the coefficients by rounding), which is
why an exact import keeps the stored bytes themselves.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "DTYPES",
    "DistillKitLegacyConfig",
    "DistillKitQuantConfig",
    "QuantBin",
    "compress_logprobs",
    "decompress_logprobs",
    "legacy_decompress",
    "legacy_pack_ids",
    "legacy_unpack_ids",
    "pack_msb",
    "unpack_msb",
]

DtypeName = Literal["float16", "bfloat16", "float32", "float64"]

DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}

# Singular values below this are dropped from the least-squares pseudo-inverse.
_SVD_TOL = 1e-5


def _width(name: str) -> int:
    """Bytes of one value of a DistillKit dtype name."""
    return torch.empty((), dtype=DTYPES[name]).element_size()


class QuantBin(BaseModel):
    """One residual bin: a scale, then ``num_elements`` integers of ``element_bits``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    scale_dtype: DtypeName
    element_bits: int = Field(ge=1, le=63)
    num_elements: int = Field(gt=0)

    def nbytes(self) -> int:
        return (
            _width(self.scale_dtype) + (self.num_elements * self.element_bits + 7) // 8
        )


class DistillKitQuantConfig(BaseModel):
    """DistillKit's ``DistributionQuantizationConfig`` (its ``compression_config.yaml``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    d: int = Field(ge=2, description="vocabulary size (sets the id bits)")
    k: int = Field(gt=0, description="log-probabilities kept per token")
    exact_k: int = Field(ge=0, description="leading values stored as floats")
    exact_dtype: DtypeName = "float32"
    polynomial_terms: list[int | Literal["sqrt", "exp"]] | None = None
    term_dtype: DtypeName = "float32"
    residual_bins: list[QuantBin]
    delta_encoding: bool = True
    error_diffusion: bool = False
    normalize_t: bool = False

    @model_validator(mode="after")
    def _check(self) -> DistillKitQuantConfig:
        if self.k < self.exact_k:
            raise ValueError("k must be >= exact_k")
        if (
            self.exact_k < self.k
            and not self.polynomial_terms
            and not self.residual_bins
        ):
            raise ValueError(
                "exact_k < k needs polynomial_terms or residual_bins for the rest"
            )
        if sum(b.num_elements for b in self.residual_bins) > self.k - self.exact_k:
            raise ValueError("residual bins hold more than k - exact_k elements")
        return self

    @property
    def approx_terms(self) -> int:
        return self.k - self.exact_k

    def row_bytes(self) -> int:
        """Bytes of one token's ``compressed_logprobs`` row."""
        terms = len(self.polynomial_terms or [])
        return (
            self.exact_k * _width(self.exact_dtype)
            + terms * _width(self.term_dtype)
            + sum(b.nbytes() for b in self.residual_bins)
        )

    def index_bits(self) -> int:
        """``ceil(log2 d)`` as DistillKit computes it (in float32)."""
        return int(torch.log2(torch.tensor(self.d, dtype=torch.float32)).ceil().item())

    def index_bytes(self) -> int:
        """Bytes of one token's ``bytepacked_indices`` row."""
        return (self.k * self.index_bits() + 7) // 8


class DistillKitLegacyConfig(BaseModel):
    """DistillKit's ``LegacyLogitCompressionConfig`` (columns ``exact_values``, ``coeffs``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    k: int = Field(gt=0)
    exact_k: int = Field(ge=0)
    polynomial_degree: int = Field(ge=0)
    vocab_size: int = Field(ge=2)
    invert_polynomial: bool = True
    with_sqrt_term: bool = False
    term_dtype: str = "float32"

    @model_validator(mode="after")
    def _check(self) -> DistillKitLegacyConfig:
        if self.exact_k > self.k:
            raise ValueError("exact_k must be <= k")
        return self

    @property
    def num_coeffs(self) -> int:
        """Coefficients per token (0 when every value is exact)."""
        if self.exact_k == self.k:
            return 0
        return self.polynomial_degree + 1 + int(self.with_sqrt_term)

    def index_bits(self) -> int:
        return int(
            torch.log2(torch.tensor(self.vocab_size, dtype=torch.float32)).ceil().item()
        )

    def index_words(self) -> int:
        """64-bit words of packed ids per token."""
        per_word = 64 // self.index_bits()
        return math.ceil(self.k / per_word)

    def row_bytes(self) -> int:
        """Bytes labelzip keeps per token: exact values and coefficients, float32."""
        return 4 * (self.exact_k + self.num_coeffs)


# -- bit packing -------------------------------------------------------------------
def pack_msb(values: torch.Tensor, bits: int) -> torch.Tensor:
    """(..., N) integers -> (..., ceil(N * bits / 8)) uint8, MSB first, zero padded."""
    mask = (1 << bits) - 1
    shifts = torch.arange(bits - 1, -1, -1, device=values.device)
    expanded = ((values.long() & mask).unsqueeze(-1) >> shifts) & 1
    stream = expanded.reshape(*values.shape[:-1], -1).to(torch.uint8)
    pad = (-stream.shape[-1]) % 8
    if pad:
        stream = torch.nn.functional.pad(stream, (0, pad))
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], device=values.device)
    octets = stream.reshape(*values.shape[:-1], -1, 8).long()
    return (octets * weights).sum(-1).to(torch.uint8)


def unpack_msb(data: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_msb`: (..., M) uint8 -> (..., count) int64."""
    shifts = torch.arange(7, -1, -1, device=data.device)
    stream = ((data.long().unsqueeze(-1) >> shifts) & 1).reshape(*data.shape[:-1], -1)
    stream = stream[..., : count * bits].reshape(*data.shape[:-1], count, bits)
    weights = 2 ** torch.arange(bits - 1, -1, -1, device=data.device, dtype=torch.long)
    return (stream * weights).sum(-1)


def legacy_pack_ids(ids: torch.Tensor, bits: int) -> torch.Tensor:
    """(..., k) ids -> (..., words) int64, ``64 // bits`` ids per word, LSB first."""
    per_word = 64 // bits
    pad = (-ids.shape[-1]) % per_word
    padded = torch.nn.functional.pad(ids.long(), (0, pad))
    grouped = padded.reshape(*ids.shape[:-1], -1, per_word)
    words = torch.zeros(grouped.shape[:-1], dtype=torch.long, device=ids.device)
    for i in range(per_word):
        words |= grouped[..., i] << (bits * i)
    return words


def legacy_unpack_ids(words: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of :func:`legacy_pack_ids` (int64 words, as DistillKit reads them)."""
    per_word = 64 // bits
    mask = (1 << bits) - 1
    out = torch.zeros(*words.shape[:-1], words.shape[-1] * per_word, dtype=torch.long)
    for i in range(per_word):
        out[..., i::per_word] = (words >> (bits * i)) & mask
    return out[..., :k]


# -- the current scheme --------------------------------------------------------------
def _work_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def _terms(cfg: DistillKitQuantConfig, t: int, dtype: torch.dtype) -> torch.Tensor:
    """(t, terms) design matrix of the polynomial terms at positions 0..t-1."""
    assert cfg.polynomial_terms
    if cfg.normalize_t:
        pts = torch.linspace(0, 1, steps=t, dtype=dtype)
    else:
        pts = torch.arange(t, dtype=dtype)
    cols = [
        pts**term if isinstance(term, int) else getattr(torch, term)(pts)
        for term in cfg.polynomial_terms
    ]
    return torch.stack(cols, dim=-1)


def _lstsq(design: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(1, t, m) design, (N, t, 1) targets -> (N, m, 1) pseudo-inverse solution."""
    work = _work_dtype(design, targets)
    u, s, vh = torch.linalg.svd(design.to(work), full_matrices=False)
    inv = torch.zeros_like(s)
    inv[s > _SVD_TOL] = 1 / s[s > _SVD_TOL]
    uhb = u.transpose(-1, -2) @ targets.to(work)
    return vh.transpose(-1, -2) @ (inv.unsqueeze(-1) * uhb)


def _quant_range(bits: int) -> tuple[int, float]:
    if bits == 1:
        return 0, 1.0
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1.0


def _scale(values: torch.Tensor, bits: int, scale_dtype: torch.dtype) -> torch.Tensor:
    top = torch.amax(torch.abs(values), dim=-1, keepdim=True)
    step = 1.0 if bits == 1 else float(2 ** (bits - 1))
    scale = torch.where(top == 0, torch.ones_like(top), top / step)
    return scale.to(scale_dtype).to(values.dtype)


def _quantise_bin(
    values: torch.Tensor,
    qbin: QuantBin,
    diffuse: bool,
    carry: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(scale, offset integers, carried error) of one residual bin."""
    scale_dtype = DTYPES[qbin.scale_dtype]
    low, high = _quant_range(qbin.element_bits)
    if not diffuse:
        values = values.to(_work_dtype(values, carry))
        scale = _scale(values, qbin.element_bits, scale_dtype)
        q = (torch.round(values / scale).clamp(low, high) - low).to(torch.long)
        return scale.to(scale_dtype), q, torch.zeros_like(values[..., 0])
    scale = _scale(values, qbin.element_bits, scale_dtype)
    scaled = values / scale
    error = torch.zeros_like(scaled[..., 0]) if carry is None else carry
    q = torch.zeros_like(scaled, dtype=torch.long)
    for i in range(scaled.shape[-1]):
        current = scaled[..., i] + error
        rounded = torch.round(current).clamp(low, high)
        error = current - rounded
        q[..., i] = (rounded - low).to(torch.long)
    return scale.to(scale_dtype), q, error


def _diffuse_float(values: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Round to ``out_dtype`` left to right, carrying each rounding error onward."""
    work = _work_dtype(values)
    values = values.to(work)
    error = torch.zeros_like(values[..., 0])
    out = torch.zeros_like(values, dtype=out_dtype)
    for i in range(values.shape[-1]):
        current = values[..., i] + error
        q = current.to(out_dtype)
        error = current - q.to(work)
        out[..., i] = q
    return out


def _as_bytes(values: torch.Tensor) -> torch.Tensor:
    return values.contiguous().view(torch.uint8).reshape(values.shape[0], -1)


def compress_logprobs(
    logprobs: torch.Tensor, cfg: DistillKitQuantConfig
) -> torch.Tensor:
    """(N, k) log-probabilities sorted descending -> (N, row_bytes) uint8 rows."""
    values = logprobs
    if cfg.delta_encoding:
        work = torch.float64 if cfg.error_diffusion else _work_dtype(values)
        lw = values.to(work)
        deltas = torch.cat([values[:, :1], lw[:, 1:] - lw[:, :-1]], dim=-1)
        if cfg.error_diffusion:
            values = _diffuse_float(deltas, logprobs.dtype)
        else:
            values = deltas.to(logprobs.dtype)
    chunks = []
    if cfg.exact_k:
        chunks.append(_as_bytes(values[:, : cfg.exact_k].to(DTYPES[cfg.exact_dtype])))
    rest = values[:, cfg.exact_k : cfg.k]
    if cfg.polynomial_terms:
        work = _work_dtype(rest)
        design = _terms(cfg, rest.shape[-1], work)
        coeffs = _lstsq(design.unsqueeze(0), rest.unsqueeze(-1)).squeeze(-1)
        term = DTYPES[cfg.term_dtype]
        coeffs = coeffs.to(term)
        fit = torch.sum(design.to(term) * coeffs.unsqueeze(-2), dim=-1).to(work)
        rest = rest - fit
        chunks.append(_as_bytes(coeffs))
    carry: torch.Tensor | None = None
    start = 0
    for qbin in cfg.residual_bins:
        part = rest[:, start : start + qbin.num_elements]
        scale, q, carry = _quantise_bin(part, qbin, cfg.error_diffusion, carry)
        chunks.append(_as_bytes(scale))
        chunks.append(pack_msb(q, qbin.element_bits))
        start += qbin.num_elements
    if not chunks:
        return torch.zeros(logprobs.shape[0], 0, dtype=torch.uint8)
    return torch.cat(chunks, dim=-1)


def decompress_logprobs(rows: torch.Tensor, cfg: DistillKitQuantConfig) -> torch.Tensor:
    """(N, row_bytes) uint8 -> (N, k) log-probabilities, as DistillKit decodes them.

    The result dtype is DistillKit's (``exact_dtype`` with delta encoding, else
    the promotion of the exact values and the tail, usually float32).
    """
    n = rows.shape[0]
    out_dtype = DTYPES[cfg.exact_dtype]
    pos = 0

    def take(count: int) -> torch.Tensor:
        nonlocal pos
        # a fresh (n, count) tensor: dtype views need aligned, packed rows
        part = rows[:, pos : pos + count].reshape(-1).clone().reshape(n, count)
        pos += count
        return part

    if cfg.exact_k:
        exact = take(cfg.exact_k * _width(cfg.exact_dtype)).view(out_dtype)
    else:
        exact = torch.empty(n, 0, dtype=out_dtype)
    coeffs = None
    if cfg.polynomial_terms:
        width = len(cfg.polynomial_terms) * _width(cfg.term_dtype)
        coeffs = take(width).view(DTYPES[cfg.term_dtype])
    residuals = []
    for qbin in cfg.residual_bins:
        scale = take(_width(qbin.scale_dtype)).view(DTYPES[qbin.scale_dtype])
        packed = take((qbin.num_elements * qbin.element_bits + 7) // 8)
        q = unpack_msb(packed, qbin.element_bits, qbin.num_elements)
        if qbin.element_bits == 1:
            residuals.append((q.to(torch.float32) * 2.0 - 1.0) * scale)
        else:
            low, _ = _quant_range(qbin.element_bits)
            residuals.append((q + low).to(torch.float32) * scale)
    approx = cfg.approx_terms
    if residuals:
        residual = torch.cat(residuals, dim=-1)
        short = approx - residual.shape[-1]
        if short:
            residual = torch.nn.functional.pad(residual, (0, short))
    else:
        residual = torch.zeros(n, approx, dtype=out_dtype)
    if coeffs is not None:
        term = DTYPES[cfg.term_dtype]
        fit = torch.sum(_terms(cfg, approx, term) * coeffs.unsqueeze(-2), dim=-1)
        tail = fit + residual.to(out_dtype)
    else:
        tail = residual.to(out_dtype)
    values = torch.cat([exact.to(out_dtype), tail], dim=-1)
    if cfg.delta_encoding:
        values = torch.cumsum(values.float(), dim=-1).to(out_dtype)
    return values


# -- the legacy scheme ---------------------------------------------------------------
def _legacy_terms(cfg: DistillKitLegacyConfig) -> torch.Tensor:
    a = torch.arange(cfg.k - cfg.exact_k, dtype=torch.float32) + 1
    powers = [
        -i if cfg.invert_polynomial else i for i in range(cfg.polynomial_degree + 1)
    ]
    cols = [a**p for p in powers]
    if cfg.with_sqrt_term:
        cols.append(a.sqrt())
    return torch.stack(cols, dim=-1)


def legacy_decompress(
    exact: torch.Tensor, coeffs: torch.Tensor, cfg: DistillKitLegacyConfig
) -> torch.Tensor:
    """(N, exact_k) and (N, coeffs) float32 -> (N, k) values, as DistillKit decodes them."""
    if cfg.num_coeffs == 0:
        return exact
    design = _legacy_terms(cfg)
    approx = torch.sum(
        design.to(coeffs.dtype) * coeffs.to(design.dtype).unsqueeze(-2), dim=-1
    )
    return torch.cat([exact, approx], dim=-1)
