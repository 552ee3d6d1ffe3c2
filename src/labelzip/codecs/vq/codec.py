"""VQAE codec: the teacher's top ids plus VQ code indices per label, one small decoder.

Per label the block stores ``num_ids`` explicit class ids (the teacher's top
classes, ``ceil(log2 C)`` bits each), each with a ``value_bits``-bit quantized
conditional log-odds (:mod:`labelzip.codecs.vq.head`), and R x M codeword ids
(``ceil(log2 k)`` bits each). Once per
archive the codec stores the codebooks and the decoder in fp16 (and, when it
pays, the frequency tables of the entropy coder). The encoder is only needed to
encode and is not stored: a codec rebuilt with :meth:`VQAECodec.from_stored`
decodes but cannot encode.

Block layout (``N`` labels)::

    head  : pack_bits(id * 2**b_v + level, (N, K) row-major, b_id + b_v)
            packed_size(N*K, b_id + b_v) bytes (absent when K = 0)
    codes : either pack_bits(codes (N, R*M) row-major, ceil(log2 k))  (fixed rate)
            or the ANS stream of codes (whole 32-bit words)   (entropy coded)

The code section is entropy coded only when that is strictly shorter than the
fixed-rate section, so its length tells the decoder which one it is, and the
fixed rate is a guaranteed upper bound on every block.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from labelzip.codecs.base import (
    Codec,
    CodecConfig,
    EncodedBlock,
    LogitSource,
    check_logits,
)
from labelzip.codecs.entropy import CategoricalStreamCoder
from labelzip.codecs.vq.autoencoder import (
    DECODER_KEYS,
    VQAutoencoder,
    decode_with,
    enforce_argmax,
    normalize_logits,
)
from labelzip.codecs.vq.head import HeadQuantizer, apply_head_values, head_values
from labelzip.codecs.vq.quantizer import nearest_codewords
from labelzip.codecs.vq.train import (
    TrainReport,
    TrainSchedule,
    reservoir_sample,
    top_ids,
    train_autoencoder,
)
from labelzip.errors import ArchiveFormatError, ConfigError, InputError, NotFittedError
from labelzip.ops.bitpack import bits_for, pack_bits, packed_size, unpack_bits

__all__ = ["VQAECodec", "VQAEConfig"]

logger = logging.getLogger(__name__)

ENCODE_CHUNK = 8192  # labels per encoder pass (bounds peak memory)
ENTROPY_TABLE_KEY = "entropy_tables"
HEAD_FIT_LABELS = 8192  # labels the value ranges are fitted on


class VQAEConfig(CodecConfig):
    """Configuration of :class:`VQAECodec` (architecture, training, coding)."""

    kind: Literal["vqae"] = "vqae"
    num_ids: int = Field(
        default=1, ge=0, le=16, description="explicit top class ids stored per label"
    )
    value_bits: int = Field(
        default=6,
        ge=0,
        le=16,
        description="bits of the quantized log-odds stored with each explicit id "
        "(0: the decoder predicts them)",
    )
    num_chunks: int = Field(
        default=32, ge=1, le=512, description="M: latent chunks, one code index each"
    )
    chunk_dim: int = Field(default=4, ge=1, le=64, description="D: dims per chunk")
    codebook_size: int = Field(
        default=256, ge=2, le=16384, description="k: codewords per codebook"
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
        default=2e-3, gt=0.0, le=1.0, description="Adam peak learning rate"
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
    enforce_argmax: bool = Field(
        default=True,
        description="keep the stored first id on top of each decoded label (exact top-1)",
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


class VQAECodec(Codec):
    """Vector-quantized autoencoder codec (arXiv 2603.03808, with explicit top ids)."""

    kind: ClassVar[str] = "vqae"
    codec_id: ClassVar[int] = 4
    config_class: ClassVar[type[CodecConfig]] = VQAEConfig

    config: VQAEConfig

    def __init__(self, config: VQAEConfig | None = None) -> None:
        super().__init__(config if config is not None else VQAEConfig())
        self.model: VQAutoencoder | None = None  # encoder side; absent when loaded
        self.scale: float = 1.0
        self.report: TrainReport | None = None
        self._stored: dict[str, torch.Tensor] = {}  # fp16 decoder tensors
        self._entropy: CategoricalStreamCoder | None = None
        self._head: HeadQuantizer | None = None
        self._device_cache: dict[str, dict[str, torch.Tensor]] = {}

    # -- sizes -----------------------------------------------------------------------
    @property
    def id_bits(self) -> int:
        return bits_for(self._require_fitted("id_bits"))

    @property
    def slot_bits(self) -> int:
        """Bits of one explicit id with its value."""
        return self.id_bits + (self.config.value_bits if self._uses_values else 0)

    @property
    def _uses_values(self) -> bool:
        return self.config.num_ids > 0 and self.config.value_bits > 0

    @property
    def code_bits(self) -> int:
        return bits_for(self.config.codebook_size)

    @property
    def codes_per_label(self) -> int:
        return self.config.num_stages * self.config.num_chunks

    def expected_payload_bits(self) -> float | None:
        """Fixed-rate bits per label (an upper bound once entropy coding is on)."""
        return float(
            self.config.num_ids * self.slot_bits + self.codes_per_label * self.code_bits
        )

    def fixed_block_bytes(self, num_labels: int) -> int:
        """Bytes of a fixed-rate block of ``num_labels`` labels (the upper bound)."""
        cfg = self.config
        return packed_size(num_labels * cfg.num_ids, self.slot_bits) + packed_size(
            num_labels * self.codes_per_label, self.code_bits
        )

    # -- fitting -----------------------------------------------------------------------
    def fit(self, source: LogitSource, *, num_labels: int | None = None) -> VQAECodec:
        """Reservoir-sample the stream, train the autoencoder, freeze the decoder.

        Raises:
            InputError: empty source, bad shapes, NaN/Inf.
            ConfigError: more explicit ids than classes.
        """
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        data, seen = reservoir_sample(source, cfg.max_train_labels, gen)
        num_classes = int(data.shape[1])
        if cfg.num_ids > num_classes:
            raise ConfigError(
                f"num_ids={cfg.num_ids} exceeds the {num_classes} classes; lower num_ids"
            )
        centred = data - data.mean(dim=1, keepdim=True)
        self.scale = max(float(centred.std()), 1e-6)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = VQAutoencoder(
                num_classes=num_classes,
                num_ids=cfg.num_ids,
                num_chunks=cfg.num_chunks,
                chunk_dim=cfg.chunk_dim,
                codebook_size=cfg.codebook_size,
                num_stages=cfg.num_stages,
                hidden_dim=cfg.hidden_dim,
                encoder_dim=cfg.encoder_dim,
                encoder_layers=cfg.encoder_layers,
                decay=cfg.codebook_decay,
            )
            model.init_output_from_data(data)
        schedule = TrainSchedule(
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            temperatures=cfg.temperatures,
            temperature_weights=cfg.temperature_weights,
            commit_weight=cfg.commit_weight,
            seed=cfg.seed,
        )
        self.num_classes = num_classes
        self._head = None
        if self._uses_values:
            sample = data[:HEAD_FIT_LABELS]
            self._head = HeadQuantizer.fit(
                sample, top_ids(sample, cfg.num_ids), cfg.value_bits
            )
        self.report = train_autoencoder(
            model, data, self.scale, schedule, seen, head=self._head
        )
        self.model = model
        self._stored = {
            key: value.detach().to(torch.float16).contiguous()
            for key, value in model.decoder_state().items()
        }
        self._device_cache = {}
        self._entropy = None
        if cfg.entropy_coding == "auto":
            total = num_labels if num_labels is not None else seen
            self._entropy = self._choose_entropy_model(data, total)
        return self

    def _choose_entropy_model(
        self, data: torch.Tensor, num_labels: int
    ) -> CategoricalStreamCoder | None:
        """Pick none / one pooled table / one table per column, by total bytes.

        Code lengths are estimated on the training sample; a table must save at
        least twice its own size before it is used, so the estimate's error
        cannot turn the choice into a loss.
        """
        codes = self._codes(data)
        k = self.config.codebook_size
        fixed_bits = codes.numel() * self.code_bits
        best: CategoricalStreamCoder | None = None
        best_saving = 0.0
        for columns in ([0] * codes.shape[1], list(range(codes.shape[1]))):
            coder = CategoricalStreamCoder.fit(codes, k, columns)
            per_label = (fixed_bits - coder.cost_bits(codes)) / 8 / codes.shape[0]
            saving = per_label * num_labels - 2 * coder.table_bytes()
            if saving > best_saving:
                best, best_saving = coder, saving
        return best

    # -- byte path -------------------------------------------------------------------
    def _codes(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, C) logits -> (N, R*M) int64 code indices (stage-major), via the encoder."""
        if self.model is None:
            raise NotFittedError(
                "this VQAE codec was rebuilt from stored tensors and has no encoder "
                "(the encoder is not shipped); fit a codec to encode new labels"
            )
        out = []
        with torch.no_grad():
            for start in range(0, logits.shape[0], ENCODE_CHUNK):
                part = (
                    logits[start : start + ENCODE_CHUNK]
                    .detach()
                    .to("cpu", torch.float32)
                )
                latent = self.model.encode_latent(normalize_logits(part, self.scale))
                codes = self._quantize_frozen(latent)
                out.append(codes.reshape(codes.shape[0], -1))
        if not out:
            return torch.zeros(0, self.codes_per_label, dtype=torch.int64)
        return torch.cat(out)

    def _quantize_frozen(self, latent: torch.Tensor) -> torch.Tensor:
        """Residual nearest-codeword search against the stored (fp16) codebooks."""
        books = self._stored["codebooks"].float()
        chunk = torch.arange(latent.shape[1])
        residual = latent
        codes = []
        for stage in range(books.shape[0]):
            book = books[stage]  # (M, k, D)
            idx = nearest_codewords(residual, book)
            residual = residual - book[chunk, idx]
            codes.append(idx)
        return torch.stack(codes, dim=1)  # (B, R, M)

    def encode(self, logits: torch.Tensor) -> EncodedBlock:
        """(N, C) logits -> one block: packed top ids (+ values), then code ids."""
        num_classes = self._require_fitted("encode")
        check_logits(logits, num_classes)
        codes = self._codes(logits)
        teacher = logits.detach().to("cpu", torch.float32)
        ids = top_ids(teacher, self.config.num_ids)
        n = int(logits.shape[0])
        parts = []
        if self.config.num_ids:
            slots = ids
            if self._head is not None:
                levels = self._head.quantize(head_values(teacher, ids))
                slots = ids * self._head.levels + levels
            parts.append(pack_bits(slots, self.slot_bits))
        code_part = pack_bits(codes, self.code_bits)
        if self._entropy is not None and n:
            coded = self._entropy.encode(codes)
            if coded.numel() < code_part.numel():
                code_part = coded
        parts.append(code_part)
        return EncodedBlock(num_labels=n, data=torch.cat(parts))

    def decode_codes(
        self, block: EncodedBlock, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Block -> ((N, K) ids, (N, K) value levels, (N, R*M) codes), int64.

        Levels are all zero when no values are stored. Tensors are on ``device``.

        Raises:
            ArchiveFormatError: the block's length fits neither section layout.
        """
        self._require_fitted("decode")
        cfg = self.config
        n = block.num_labels
        data = block.data.reshape(-1)
        head_bytes = packed_size(n * cfg.num_ids, self.slot_bits)
        fixed_bytes = packed_size(n * self.codes_per_label, self.code_bits)
        rest = data.numel() - head_bytes
        if (
            rest < 0
            or rest > fixed_bytes
            or (rest != fixed_bytes and self._entropy is None)
        ):
            raise ArchiveFormatError(
                f"VQAE block of {n} labels must hold {head_bytes + fixed_bytes} bytes "
                f"(fixed rate){' or fewer (entropy coded)' if self._entropy else ''}, "
                f"got {data.numel()}"
            )
        slots = unpack_bits(
            data[:head_bytes].to(device), self.slot_bits, n * cfg.num_ids
        ).view(n, cfg.num_ids)
        levels = torch.zeros_like(slots)
        if self._head is not None:
            levels = slots % self._head.levels
            slots = slots // self._head.levels
        if rest == fixed_bytes:
            codes = unpack_bits(
                data[head_bytes:].to(device), self.code_bits, n * self.codes_per_label
            )
        else:
            assert self._entropy is not None
            try:
                codes = self._entropy.decode(data[head_bytes:].cpu(), n).to(device)
            except InputError as exc:
                raise ArchiveFormatError(f"VQAE code section: {exc}") from exc
        if slots.numel() and int(slots.max()) >= self._require_fitted("decode"):
            raise ArchiveFormatError(
                f"VQAE block holds class id {int(slots.max())} >= {self.num_classes}"
            )
        return slots, levels, codes.view(n, self.codes_per_label)

    def decode(
        self, block: EncodedBlock, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Block -> (N, C) float32 logits on ``device``."""
        ids, levels, codes = self.decode_codes(block, device)
        return self.decode_from_codes(ids, levels, codes)

    def decode_from_codes(
        self, ids: torch.Tensor, levels: torch.Tensor, codes: torch.Tensor
    ) -> torch.Tensor:
        """The decoder on (N, K) ids, (N, K) value levels, (N, R*M) codes -> (N, C)."""
        self._require_fitted("decode")
        state = self._float_state(codes.device)
        cfg = self.config
        n = codes.shape[0]
        staged = codes.view(n, cfg.num_stages, cfg.num_chunks)
        books = state["codebooks"]
        chunk = torch.arange(cfg.num_chunks, device=codes.device)
        with torch.no_grad():
            quant = books[0][chunk, staged[:, 0]]
            for stage in range(1, cfg.num_stages):
                quant = quant + books[stage][chunk, staged[:, stage]]
            logits = decode_with(state, quant, ids)
            if self._head is not None:
                logits = apply_head_values(logits, ids, self._head.dequantize(levels))
            if cfg.enforce_argmax and cfg.num_ids:
                logits = enforce_argmax(logits, ids[:, 0])
        return logits

    def _float_state(self, device: torch.device) -> dict[str, torch.Tensor]:
        key = str(device)
        if key not in self._device_cache:
            self._device_cache[key] = {
                name: t.to(device=device, dtype=torch.float32)
                for name, t in self._stored.items()
            }
        return self._device_cache[key]

    # -- what is shipped once --------------------------------------------------------
    def model_tensors(self) -> dict[str, torch.Tensor]:
        self._require_fitted("model_tensors")
        tensors = dict(self._stored)
        if self._entropy is not None:
            tensors[ENTROPY_TABLE_KEY] = self._entropy.tables
        return tensors

    def to_config(self) -> dict[str, Any]:
        num_classes = self._require_fitted("to_config")
        out: dict[str, Any] = {**self.config.model_dump(), "num_classes": num_classes}
        out["entropy_columns"] = (
            list(self._entropy.column_tables) if self._entropy is not None else None
        )
        if self._head is not None:
            out["value_low"] = [float(v) for v in self._head.low]
            out["value_high"] = [float(v) for v in self._head.high]
        return out

    @classmethod
    def from_stored(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> VQAECodec:
        """Rebuild a decode-only codec (the encoder is not stored)."""
        options = dict(config)
        num_classes = options.pop("num_classes", None)
        columns = options.pop("entropy_columns", None)
        value_low = options.pop("value_low", None)
        value_high = options.pop("value_high", None)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ArchiveFormatError(
                f"vqae config needs a positive integer num_classes, got {num_classes!r}"
            )
        try:
            codec = cls(VQAEConfig(**options))
        except Exception as exc:
            raise ArchiveFormatError(f"invalid stored vqae config: {exc}") from exc
        missing = [k for k in DECODER_KEYS if k not in tensors]
        if missing:
            raise ArchiveFormatError(f"vqae model tensors lack {', '.join(missing)}")
        codec._stored = {k: tensors[k].to("cpu", torch.float16) for k in DECODER_KEYS}
        if columns is not None:
            if ENTROPY_TABLE_KEY not in tensors:
                raise ArchiveFormatError(
                    "vqae config names entropy tables that are absent"
                )
            codec._entropy = CategoricalStreamCoder(
                tensors[ENTROPY_TABLE_KEY].to("cpu", torch.int16), columns
            )
        if codec._uses_values:
            cfg = codec.config
            if (
                not isinstance(value_low, list)
                or not isinstance(value_high, list)
                or len(value_low) != cfg.num_ids
                or len(value_high) != cfg.num_ids
            ):
                raise ArchiveFormatError(
                    f"vqae config with value_bits={cfg.value_bits} needs value_low and "
                    f"value_high lists of {cfg.num_ids} floats"
                )
            codec._head = HeadQuantizer(
                [float(v) for v in value_low],
                [float(v) for v in value_high],
                cfg.value_bits,
            )
        codec.num_classes = num_classes
        codec._check_shapes()
        return codec

    def _check_shapes(self) -> None:
        cfg = self.config
        expected = {
            "codebooks": (
                cfg.num_stages,
                cfg.num_chunks,
                cfg.codebook_size,
                cfg.chunk_dim,
            ),
            "out_weight": (self.num_classes, cfg.hidden_dim),
            "in_weight": (cfg.hidden_dim, cfg.num_chunks * cfg.chunk_dim),
        }
        for key, shape in expected.items():
            if tuple(self._stored[key].shape) != shape:
                raise ArchiveFormatError(
                    f"vqae tensor {key} has shape {tuple(self._stored[key].shape)}, "
                    f"the config implies {shape}"
                )

    # -- rate control ----------------------------------------------------------------
    @classmethod
    def for_target(
        cls, *, num_labels: int, num_classes: int, budget_bytes: int, **options: Any
    ) -> VQAECodec:
        """Choose (K, M, k, R, H) so fixed-rate payload + model bytes <= budget."""
        from labelzip.codecs.vq.rate import choose_config

        config = choose_config(
            num_labels=num_labels,
            num_classes=num_classes,
            budget_bytes=budget_bytes,
            fixed=options,
        )
        return cls(config)
