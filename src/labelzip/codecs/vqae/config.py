"""Validated configuration of the VQAE codec (architecture, training, coding).

Defaults come from the measurements in docs/vqae-design.md; rate control
(:mod:`labelzip.codecs.vqae.sizing`) overrides the size fields for a byte budget.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from labelzip.codecs.base import CodecConfig

__all__ = ["VQAEConfig"]


class VQAEConfig(CodecConfig):
    """Configuration of :class:`VQAECodec` (architecture, training, coding)."""

    kind: Literal["vqae"] = "vqae"
    num_ids: int = Field(
        default=8, ge=0, le=16, description="explicit top class ids stored per label"
    )
    value_bits: int = Field(
        default=5,
        ge=0,
        le=16,
        description="bits of the quantized log-odds stored with each explicit id "
        "(0: the decoder predicts them)",
    )
    num_chunks: int = Field(
        default=34, ge=1, le=512, description="M: latent chunks, one code index each"
    )
    chunk_dim: int = Field(default=2, ge=1, le=64, description="D: dims per chunk")
    codebook_size: int = Field(
        default=16, ge=2, le=16384, description="k: codewords per codebook"
    )
    num_stages: int = Field(
        default=1, ge=1, le=8, description="R: residual quantization stages"
    )
    hidden_dim: int = Field(
        default=128, ge=4, le=4096, description="H: decoder hidden width"
    )
    encoder_dim: int = Field(
        default=256, ge=8, le=8192, description="encoder hidden width (not shipped)"
    )
    encoder_layers: int = Field(
        default=1, ge=1, le=4, description="encoder hidden layers (not shipped)"
    )
    temperatures: tuple[float, ...] = Field(
        default=(1.0, 4.0, 20.0),
        min_length=1,
        description="KD temperatures the training loss sums KL over",
    )
    temperature_weights: tuple[float, ...] = Field(
        default=(1.0, 1.0, 1.0), min_length=1, description="weight of each temperature"
    )
    commit_weight: float = Field(
        default=0.25, ge=0.0, le=10.0, description="VQ commitment loss weight"
    )
    codebook_decay: float = Field(
        default=0.99, gt=0.0, lt=1.0, description="EMA decay of codebook statistics"
    )
    steps: int = Field(default=2000, ge=1, le=1_000_000, description="training steps")
    batch_size: int = Field(default=256, ge=1, le=65536, description="labels per step")
    learning_rate: float = Field(
        default=5e-3, gt=0.0, le=1.0, description="Adam peak learning rate"
    )
    max_train_labels: int = Field(
        default=65536,
        ge=1,
        le=4_000_000,
        description="reservoir size: labels kept for training (x C x 4 bytes of RAM)",
    )
    entropy_coding: Literal["auto", "off"] = Field(
        default="auto",
        description="auto: ANS-code the code indices when the saving beats the table cost",
    )
    rank_ids: bool = Field(
        default=False,
        description="with entropy coding, code the ids as ranks under a class prior "
        "computed from the VQ codes: ~25% smaller payload, ~3x slower CPU decode",
    )
    enforce_argmax: bool = Field(
        default=True,
        description="keep the stored first id on top of each decoded label (exact top-1)",
    )
    fit_threads: int | None = Field(
        default=1,
        ge=1,
        le=256,
        description="torch CPU threads while fitting (restored afterwards); None "
        "keeps the caller's setting. Small training steps run 4x faster on 1 "
        "thread than on 2 contended ones (measured)",
    )
    seed: int = Field(
        default=0, ge=0, description="seed of init, sampling and restarts"
    )

    @model_validator(mode="after")
    def _weights_match(self) -> VQAEConfig:
        if len(self.temperatures) != len(self.temperature_weights):
            raise ValueError(
                f"temperature_weights has {len(self.temperature_weights)} entries for "
                f"{len(self.temperatures)} temperatures"
            )
        if any(t <= 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be > 0, got {self.temperatures}")
        return self
