"""Configuration of the vqae-sparse codec (:mod:`labelzip.codecs.vqae_lm.sparse`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from labelzip.codecs.base import CodecConfig

__all__ = ["VQAESparseConfig"]


class VQAESparseConfig(CodecConfig):
    """Configuration of :class:`VQAESparseCodec`."""

    kind: Literal["vqae-sparse"] = "vqae-sparse"
    k: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="ids kept per label (K); None = the largest K the budget allows",
    )
    k_levels: int = Field(
        default=4,
        ge=1,
        le=8,
        description="per-label K choices K, K/2, ..., K/2**(L-1) (1 = one K for all)",
    )
    rate_lambda: float | None = Field(
        default=None,
        ge=0.0,
        description="nats of KL one id bit must save to be spent; None = fitted",
    )
    max_k: int = Field(
        default=512, ge=1, le=4096, description="largest K rate control considers"
    )
    num_chunks: int = Field(
        default=4, ge=1, le=64, description="VQ chunks per label (M), 8 bits each"
    )
    num_stages: int = Field(
        default=1, ge=1, le=8, description="residual VQ stages (R): R x M code bytes"
    )
    chunk_dim: int = Field(default=4, ge=1, le=64, description="dims per chunk (D)")
    hidden: int = Field(
        default=64, ge=4, le=1024, description="hidden width of encoder and decoder"
    )
    tail_bits: int = Field(
        default=3, ge=0, le=8, description="bits of the per-label tail exponent index"
    )
    tail_min: float | None = Field(
        default=None,
        ge=0.0,
        le=8.0,
        description="smallest tail exponent; None = fitted",
    )
    tail_max: float | None = Field(
        default=None, ge=0.0, le=8.0, description="largest tail exponent; None = fitted"
    )
    budget_bytes: int | None = Field(
        default=None,
        ge=1,
        description="all-in bytes (payload + model) for num_labels; needed when k=None",
    )
    monotone: bool = Field(
        default=True, description="decode the K slots in non-increasing order"
    )
    steps: int = Field(default=3000, ge=0, le=1 << 20, description="training steps")
    batch_size: int = Field(default=256, ge=1, le=1 << 16, description="training batch")
    lr: float = Field(default=3e-3, gt=0.0, le=1.0, description="Adam learning rate")
    max_fit_labels: int = Field(
        default=4096, ge=1, le=1 << 22, description="labels of the source fitted on"
    )
    seed: int = Field(default=0, ge=0, lt=1 << 63, description="training seed")

    @property
    def code_bytes(self) -> int:
        return self.num_chunks * self.num_stages
