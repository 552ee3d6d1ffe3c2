"""VQAE codec: top class ids with values plus VQ code indices, one small decoder.

Per label the block stores ``num_ids`` explicit class ids (the teacher's top
classes, ``ceil(log2 C)`` bits each), each with a ``value_bits``-bit quantized
conditional log-odds (:mod:`labelzip.codecs.vqae.head`), and R x M codeword ids
(``ceil(log2 k)`` bits each); the byte layout, fixed rate or entropy coded, is
in :mod:`labelzip.codecs.vqae.layout`. Once per archive the codec stores the
codebooks and the decoder in fp16, and the entropy coder's frequency tables
when they pay for themselves. The encoder is only needed to encode and is not
stored: a codec rebuilt with :meth:`VQAECodec.from_stored` decodes but cannot
encode.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import torch

from labelzip.codecs.base import (
    Codec,
    CodecConfig,
    EncodedBlock,
    LabelContext,
    LogitSource,
    ParsedBlock,
    check_logits,
    check_model_tensors,
    compact_ints,
)
from labelzip.codecs.entropy import CategoricalStreamCoder
from labelzip.codecs.vqae.autoencoder import (
    DECODER_KEYS,
    VQAutoencoder,
    decode_with,
    enforce_argmax,
    id_table,
    normalize_logits,
)
from labelzip.codecs.vqae.config import VQAEConfig
from labelzip.codecs.vqae.head import HeadQuantizer, apply_head_values
from labelzip.codecs.vqae.idprior import PRIOR_KEYS, RANK_ALPHABET, IdPrior
from labelzip.codecs.vqae.layout import (
    CODE_TABLES_KEY,
    LEVEL_TABLES_KEY,
    RANK_TABLES_KEY,
    BlockLayout,
    EntropyModel,
)
from labelzip.codecs.vqae.quantizer import quantize_residual
from labelzip.codecs.vqae.train import (
    TrainReport,
    TrainSchedule,
    reservoir_sample,
    top_ids,
    top_ids_and_next,
    train_autoencoder,
)
from labelzip.errors import ArchiveFormatError, ConfigError, NotFittedError
from labelzip.ops.bitpack import bits_for

__all__ = ["VQAECodec", "VQAEConfig"]

logger = logging.getLogger(__name__)

ENCODE_CHUNK = 8192  # labels per encoder pass (bounds peak memory)
SIDE_FIT_LABELS = 8192  # labels the value ranges and entropy tables are fitted on
SIDE_FIT_VALUES = 1 << 24  # ... at most this many logits (large vocabularies)
RESERVOIR_BYTES = 1 << 30  # the fit keeps at most 1 GiB of float32 logits
# Random access runs the decoder on at least this many rows (padded with copies):
# a BLAS picks other kernels for a few rows, whose sums round differently, so a
# label decodes to the same bits as in its whole chunk (of >= this many labels).
DECODE_MIN_ROWS = 64

_WIDENED = (torch.float16, torch.bfloat16)  # converted to float32 before the checks


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
        self._head: HeadQuantizer | None = None
        self._entropy: EntropyModel | None = None
        self._device_cache: dict[str, dict[str, torch.Tensor]] = {}

    # -- sizes -----------------------------------------------------------------------
    @property
    def uses_values(self) -> bool:
        return self.config.num_ids > 0 and self.config.value_bits > 0

    @property
    def layout(self) -> BlockLayout:
        """The block layout of this fitted codec."""
        cfg = self.config
        return BlockLayout(
            num_classes=self._require_fitted("layout"),
            num_ids=cfg.num_ids,
            value_bits=cfg.value_bits if self.uses_values else 0,
            num_codes=cfg.num_stages * cfg.num_chunks,
            code_bits=bits_for(cfg.codebook_size),
            entropy=self._entropy,
        )

    def expected_payload_bits(self) -> float | None:
        """Fixed-rate bits per label (an upper bound once entropy coding is on)."""
        lay = self.layout
        return float(lay.num_ids * lay.slot_bits + lay.num_codes * lay.code_bits)

    def fixed_block_bytes(self, num_labels: int) -> int:
        """Bytes of a fixed-rate block of ``num_labels`` labels (the upper bound)."""
        return self.layout.fixed_bytes(num_labels)

    # -- fitting -----------------------------------------------------------------------
    def fit(self, source: LogitSource, *, num_labels: int | None = None) -> VQAECodec:
        """Reservoir-sample the stream, train the autoencoder, freeze the decoder.

        Runs on ``config.fit_threads`` torch threads (default 1) and restores
        the caller's thread count afterwards.

        Args:
            source: (B, C) logit batches, or a factory of them (read once).
            num_labels: labels that will be encoded; decides whether entropy
                tables pay for themselves (default: the labels seen).

        Raises:
            InputError: empty source, bad shapes, NaN/Inf.
            ConfigError: more explicit ids than classes.
        """
        threads = torch.get_num_threads()
        if self.config.fit_threads is not None:
            torch.set_num_threads(self.config.fit_threads)
        try:
            return self._fit(source, num_labels)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, source: LogitSource, num_labels: int | None) -> VQAECodec:
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        data, seen = reservoir_sample(
            source, cfg.max_train_labels, gen, max_bytes=RESERVOIR_BYTES
        )
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
                value_head=not self.uses_values,
                decay=cfg.codebook_decay,
            )
            model.init_output_from_data(data)
        self.num_classes = num_classes
        side = data[: max(2, min(SIDE_FIT_LABELS, SIDE_FIT_VALUES // num_classes))]
        self._head = None
        if self.uses_values:
            self._head = HeadQuantizer.fit(
                side, top_ids(side, cfg.num_ids), cfg.value_bits
            )
        schedule = TrainSchedule(
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            temperatures=cfg.temperatures,
            temperature_weights=cfg.temperature_weights,
            commit_weight=cfg.commit_weight,
            seed=cfg.seed,
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
            self._entropy = self._fit_entropy(side, total)
        logger.info(
            "vqae fit: %d labels seen, %d kept, %d steps in %.1f s, entropy coding %s",
            seen,
            data.shape[0],
            cfg.steps,
            self.report.seconds,
            "on" if self._entropy is not None else "off",
        )
        return self

    def _fit_entropy(
        self, sample: torch.Tensor, num_labels: int
    ) -> EntropyModel | None:
        """ANS models (and the id prior) if they save more than twice their size.

        Models are fitted on one half of the sample and their code lengths
        measured on the other, and the stored tables must save twice their own
        size, so an estimate error cannot turn the choice into a loss. Tried:
        codes with one pooled table or one per column, ids bit-packed or coded
        as ranks under the id prior; the smallest total wins.
        """
        lay = self.layout
        half = max(1, sample.shape[0] // 2)
        fit, held = sample[:half], sample[half:] if sample.shape[0] > 1 else sample
        parts = {}
        for name, part in (("fit", fit), ("held", held)):
            ids = top_ids(part, lay.num_ids)
            parts[name] = (part, ids, self._levels(part, ids), self._codes(part))
        logits, ids, levels, codes = parts["fit"]
        _, held_ids, held_levels, held_codes = parts["held"]
        rows = held_codes.shape[0]
        level_coder = None
        level_bits = 0.0
        if self._head is not None:
            level_coder = CategoricalStreamCoder.fit(levels, self._head.levels)
            level_bits = level_coder.cost_bits(held_levels)
        rank_options: list[tuple[CategoricalStreamCoder | None, IdPrior | None, float]]
        rank_options = [(None, None, rows * lay.num_ids * lay.id_bits)]
        if lay.num_ids and self.config.rank_ids:
            prior = IdPrior.fit(self._stored["codebooks"].float(), codes, logits)
            alphabet = min(RANK_ALPHABET, lay.num_classes)
            fit_ranks = prior.ranks(prior.scores(codes), ids).clamp(max=alphabet - 1)
            rank_coder = CategoricalStreamCoder.fit(fit_ranks, alphabet)
            ranks = prior.ranks(prior.scores(held_codes), held_ids)
            escapes = (
                int((ranks >= alphabet - 1).sum()) if lay.num_classes > alphabet else 0
            )
            rank_bits = rank_coder.cost_bits(ranks.clamp(max=alphabet - 1))
            rank_options.append(
                (rank_coder, prior, rank_bits + escapes * math.log2(lay.num_classes))
            )
        fixed_bits = rows * (
            lay.num_ids * lay.slot_bits + lay.num_codes * lay.code_bits
        )
        best: EntropyModel | None = None
        best_saving = 0.0
        for columns in ([0] * lay.num_codes, list(range(lay.num_codes))):
            code_coder = CategoricalStreamCoder.fit(
                codes, self.config.codebook_size, columns
            )
            code_bits = code_coder.cost_bits(held_codes)
            for option_ranks, option_prior, id_bits in rank_options:
                model = EntropyModel(
                    level_coder, code_coder, option_ranks, option_prior
                )
                coded_bits = level_bits + code_bits + id_bits
                saving = (fixed_bits - coded_bits) / 8 / rows * num_labels
                saving -= 2 * model.table_bytes()
                if saving > best_saving:
                    best, best_saving = model, saving
        return best

    # -- byte path -------------------------------------------------------------------
    def _codes(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, C) logits -> (N, R*M) int64 code indices (stage-major), via the encoder.

        Runs on the encoder's device; the codes come back on the input's device.
        """
        model = self._encoder()
        device = next(model.parameters()).device
        books = self._float_state(device)["codebooks"]
        out = []
        with torch.no_grad():
            for start in range(0, logits.shape[0], ENCODE_CHUNK):
                part = logits[start : start + ENCODE_CHUNK].to(device, torch.float32)
                latent = model.encode_latent(normalize_logits(part, self.scale))
                codes = quantize_residual(latent, books)
                out.append(codes.reshape(codes.shape[0], -1))
        if not out:
            return torch.zeros(0, self.layout.num_codes, dtype=torch.int64)
        return torch.cat(out).to(logits.device)

    def _encoder(self) -> VQAutoencoder:
        if self.model is None:
            raise NotFittedError(
                "this VQAE codec was rebuilt from stored tensors and has no encoder "
                "(the encoder is not shipped); fit a codec to encode new labels"
            )
        return self.model

    def _levels(
        self,
        logits: torch.Tensor,
        ids: torch.Tensor,
        outside_max: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, K) quantized value levels of the ids (zeros when values are off);
        ``outside_max`` as for :meth:`HeadQuantizer.quantize_logits`."""
        if self._head is None:
            return torch.zeros_like(ids)
        return self._head.quantize_logits(logits, ids, outside_max)

    def encode(self, logits: torch.Tensor) -> EncodedBlock:
        """(N, C) logits -> one block (layout in :mod:`labelzip.codecs.vqae.layout`)."""
        ids, levels, codes = self.symbols(logits)
        data = self.layout.pack(ids.cpu(), levels.cpu(), codes.cpu())
        return EncodedBlock(num_labels=int(logits.shape[0]), data=data)

    def symbols(
        self, logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What :meth:`encode` packs: ((N, K) ids, (N, K) levels, (N, R*M) codes).

        The tensor half of encoding, on the input's device (the encoder runs
        on its own); :meth:`BlockLayout.pack` then writes the bytes on the CPU.

        Raises:
            NotFittedError: not fitted, or rebuilt from stored tensors (no encoder).
            InputError: bad shapes, NaN/Inf.
        """
        num_classes = self._require_fitted("encode")
        self._encoder()
        teacher = logits
        if isinstance(logits, torch.Tensor) and logits.dtype in _WIDENED:
            teacher = logits.detach().to(torch.float32)  # exact; checked faster
        teacher = check_logits(teacher, num_classes).detach().to(torch.float32)
        codes = self._codes(teacher)
        ids, outside_max = top_ids_and_next(teacher, self.config.num_ids)
        return ids, self._levels(teacher, ids, outside_max), codes

    def decode_codes(
        self, block: EncodedBlock, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Block -> ((N, K) ids, (N, K) value levels, (N, R*M) codes), int64.

        Levels are all zero when no values are stored. Tensors are on ``device``.

        Raises:
            ArchiveFormatError: a length that fits no layout, corrupt data, or a
                class id out of range.
        """
        num_classes = self._require_fitted("decode")
        ids, levels, codes = self.layout.unpack(block.data, block.num_labels, device)
        if ids.numel() and int(ids.max()) >= num_classes:
            raise ArchiveFormatError(
                f"VQAE block holds class id {int(ids.max())} >= {num_classes} classes"
            )
        return ids, levels, codes

    def decode(
        self, block: EncodedBlock, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Block -> (N, C) float32 logits on ``device``."""
        ids, levels, codes = self.decode_codes(block, device)
        return self.decode_from_codes(ids, levels, codes)

    def parse_block(
        self,
        block: EncodedBlock,
        context: LabelContext | None = None,
        device: torch.device | str | None = None,
    ) -> ParsedBlock:
        """Block -> ids, value levels and codes (narrow ints): no decoder run yet."""
        num_classes = self._require_fitted("decode")
        ids, levels, codes = self.decode_codes(block, device)
        parts = {
            "ids": compact_ints(ids, num_classes),
            "levels": compact_ints(levels, 1 << max(self.config.value_bits, 1)),
            "codes": compact_ints(codes, self.config.codebook_size),
        }
        return ParsedBlock(block.num_labels, parts)

    def decode_parsed(
        self, parsed: ParsedBlock, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Parsed rows -> (n, C) float32 logits: the decoder on those rows only.

        Fewer than :data:`DECODE_MIN_ROWS` rows are padded so that every
        label decodes to the same bits as :meth:`decode` gives it in its
        chunk (for chunks of at least that many labels; a smaller chunk may
        differ in the last bit, docs/reading.md).
        """
        n = parsed.num_labels
        ids, levels, codes = (
            parsed.parts[k].to(device).long() for k in ("ids", "levels", "codes")
        )
        if 0 < n < DECODE_MIN_ROWS:
            pad = torch.zeros(DECODE_MIN_ROWS, dtype=torch.int64, device=ids.device)
            pad[:n] = torch.arange(n, device=ids.device)
            ids, levels, codes = ids[pad], levels[pad], codes[pad]
        return self.decode_from_codes(ids, levels, codes)[:n]

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
                values = self._head.dequantize(levels)
                logits = apply_head_values(logits, ids, values, inplace=True)
            if cfg.enforce_argmax and cfg.num_ids:
                logits = enforce_argmax(logits, ids[:, 0])
        return logits

    def _float_state(self, device: torch.device) -> dict[str, torch.Tensor]:
        key = str(device)
        if key not in self._device_cache:
            state = {
                name: t.to(device=device, dtype=torch.float32)
                for name, t in self._stored.items()
            }
            if self.config.num_ids:
                state["id_table"] = id_table(state)
            self._device_cache[key] = state
        return self._device_cache[key]

    # -- what is shipped once --------------------------------------------------------
    def model_tensors(self) -> dict[str, torch.Tensor]:
        self._require_fitted("model_tensors")
        tensors = dict(self._stored)
        if self._entropy is not None:
            tensors.update(self._entropy.tensors())
        return tensors

    def to_config(self) -> dict[str, Any]:
        num_classes = self._require_fitted("to_config")
        out: dict[str, Any] = {**self.config.model_dump(), "num_classes": num_classes}
        out["entropy"] = self._entropy.to_config() if self._entropy else None
        if self._head is not None:
            out["value_low"] = [float(v) for v in self._head.low]
            out["value_high"] = [float(v) for v in self._head.high]
        return out

    @classmethod
    def from_stored(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> VQAECodec:
        """Rebuild a decode-only codec (the encoder is not stored).

        Raises:
            ArchiveFormatError: missing or inconsistent config entries or tensors.
        """
        options = dict(config)
        num_classes = options.pop("num_classes", None)
        entropy = options.pop("entropy", None)
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
        check_model_tensors(
            cls.kind,
            _stored_specs(codec.config, num_classes, entropy, tensors),
            tensors,
            exact=True,
        )
        codec._stored = {k: tensors[k].cpu() for k in DECODER_KEYS}
        if entropy is not None:
            codec._entropy = EntropyModel.from_stored(entropy, tensors)
        if codec.uses_values:
            cfg = codec.config
            if (
                not isinstance(value_low, list)
                or not isinstance(value_high, list)
                or len(value_low) != cfg.num_ids
                or len(value_high) != cfg.num_ids
                or not all(_is_number(v) for v in [*value_low, *value_high])
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
        return codec

    def rate_limit(self) -> str:
        c = self.config
        step = c.num_stages * bits_for(c.codebook_size)
        coded = " (entropy coding then shrinks it)" if c.entropy_coding != "off" else ""
        return (
            f"vqae budgets its payload at the fixed-rate bound{coded} and grows in "
            f"whole code chunks of {step} bits per label plus the decoder (chosen: "
            f"hidden_dim={c.hidden_dim}, num_ids={c.num_ids}, "
            f"num_chunks={c.num_chunks}); the next chunk's bound would exceed the target"
        )

    # -- rate control ----------------------------------------------------------------
    @classmethod
    def for_target(
        cls, *, num_labels: int, num_classes: int, budget_bytes: int, **options: Any
    ) -> VQAECodec:
        """Choose (K, M, H, ...) so fixed-rate payload + model bytes <= budget.

        See :mod:`labelzip.codecs.vqae.sizing`. Raises UnreachableTargetError naming
        the best reachable ratio when even the smallest configuration is over.
        """
        from labelzip.codecs.vqae.sizing import choose_config

        config = choose_config(
            num_labels=num_labels,
            num_classes=num_classes,
            budget_bytes=budget_bytes,
            fixed=options,
        )
        return cls(config)


def _stored_specs(
    cfg: VQAEConfig, num_classes: int, entropy: Any, tensors: dict[str, torch.Tensor]
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """(shape, dtype) of every model tensor a stored vqae config implies.

    The decoder's fp16 weights follow from the config; the entropy tables are
    int16 with one column per symbol (their row count is the stored tensor's
    own, checked against the column map by the coder); the id prior's int8/int32
    tensors follow from the codebooks and C.
    """
    hidden, latent = cfg.hidden_dim, cfg.num_chunks * cfg.chunk_dim
    heads = 0 if cfg.num_ids > 0 and cfg.value_bits > 0 else cfg.num_ids
    book = (cfg.num_stages, cfg.num_chunks, cfg.codebook_size, cfg.chunk_dim)
    half = torch.float16
    specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
        "codebooks": (book, half),
        "in_weight": ((hidden, latent), half),
        "in_bias": ((hidden,), half),
        "id_scale": ((cfg.num_ids, hidden), half),
        "out_weight": ((num_classes, hidden), half),
        "out_bias": ((num_classes,), half),
        "value_weight": ((heads, hidden), half),
        "value_bias": ((heads,), half),
    }
    if not isinstance(entropy, dict):
        return specs

    def rows(key: str) -> int:
        table = tensors.get(key)
        return int(table.shape[0]) if table is not None and table.dim() == 2 else -1

    specs[CODE_TABLES_KEY] = ((rows(CODE_TABLES_KEY), cfg.codebook_size), torch.int16)
    if entropy.get("level_columns") is not None:
        levels = 1 << cfg.value_bits
        specs[LEVEL_TABLES_KEY] = ((rows(LEVEL_TABLES_KEY), levels), torch.int16)
    if entropy.get("rank_columns") is not None:
        alphabet = min(RANK_ALPHABET, num_classes)
        specs[RANK_TABLES_KEY] = ((rows(RANK_TABLES_KEY), alphabet), torch.int16)
        prior = dict(
            zip(PRIOR_KEYS, (book, (num_classes, latent), (num_classes,)), strict=True)
        )
        for key, dtype in zip(
            PRIOR_KEYS, (torch.int8, torch.int8, torch.int32), strict=True
        ):
            specs[key] = (prior[key], dtype)
    return specs


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
