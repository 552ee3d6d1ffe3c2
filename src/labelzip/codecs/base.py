"""The codec contract every soft-label codec follows.

Three phases, as in CompressAI: ``fit`` learns what the codec needs from a stream
of teacher outputs (a no-op for dense codecs), then ``encode``/``decode`` turn a
batch of logits into bytes and back. Everything stored per label lives in the
bytes of an :class:`EncodedBlock`; everything stored once lives in
:meth:`Codec.model_tensors`. The archive stores exactly these two things, so the
bytes counted by :meth:`Codec.account` are the bytes on disk.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict

from labelzip.accounting import StorageAccount
from labelzip.errors import ArchiveFormatError, ConfigError, InputError, NotFittedError
from labelzip.ops.logits import LogitSource, all_finite, check_logits, iterate_source

__all__ = [
    "Codec",
    "CodecConfig",
    "EncodedBlock",
    "LabelContext",
    "LogitSource",
    "ModelFreeCodec",
    "ParsedBlock",
    "PlannedConfig",
    "ParsedDecoding",
    "SampledCodec",
    "all_finite",
    "check_logits",
    "compact_ints",
    "check_model_tensors",
    "first_batch_classes",
    "iterate_source",
]


class CodecConfig(BaseModel):
    """Base of every codec's validated configuration (a discriminated union on kind)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: str


@dataclass(frozen=True)
class EncodedBlock:
    """The stored bytes of ``num_labels`` consecutive labels.

    Attributes:
        num_labels: how many labels the block holds.
        data: flat ``uint8`` CPU tensor, the block's bytes exactly as stored.
    """

    num_labels: int
    data: torch.Tensor

    @property
    def nbytes(self) -> int:
        return int(self.data.numel())


@dataclass(frozen=True, eq=False)
class ParsedBlock:
    """A block unpacked into per-label tensors, before the expensive part of decoding.

    What :meth:`Codec.parse_block` returns and :meth:`Codec.decode_parsed`
    consumes: every tensor in ``parts`` has one row per label, so a reader can
    keep many parsed chunks cached (they are small), take the rows a batch
    needs from several of them and decode all those rows in one call.

    Attributes:
        num_labels: labels (rows) held.
        parts: codec-defined tensors, each of shape ``(num_labels, ...)``.
    """

    num_labels: int
    parts: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        for name, part in self.parts.items():
            if part.dim() == 0 or part.shape[0] != self.num_labels:
                raise InputError(
                    f"ParsedBlock part {name!r} has shape {tuple(part.shape)}, "
                    f"expected {self.num_labels} rows"
                )

    @property
    def nbytes(self) -> int:
        """Bytes the parts hold (what a reader's cache budget counts)."""
        return sum(p.numel() * p.element_size() for p in self.parts.values())

    def take(self, rows: torch.Tensor) -> ParsedBlock:
        """The labels at local ``rows`` ((n,) int64, any order, repeats allowed)."""
        out: dict[str, torch.Tensor] = {}
        for name, part in self.parts.items():
            out[name] = part[rows.to(part.device)]
        return ParsedBlock(int(rows.numel()), out)

    @staticmethod
    def cat(blocks: Iterable[ParsedBlock]) -> ParsedBlock:
        """Concatenate parsed blocks of one codec (same part names), rows in order."""
        items = list(blocks)
        if not items:
            raise InputError("ParsedBlock.cat needs at least one block")
        if len(items) == 1:
            return items[0]
        names = list(items[0].parts)
        if any(list(b.parts) != names for b in items):
            raise InputError("ParsedBlock.cat got blocks with different parts")
        return ParsedBlock(
            sum(b.num_labels for b in items),
            {n: torch.cat([b.parts[n] for b in items]) for n in names},
        )


def compact_ints(values: torch.Tensor, bound: int) -> torch.Tensor:
    """``values`` (ints in ``[0, bound)`` or ``-1``) in the narrowest signed dtype.

    For parsed blocks, which a reader caches: int8 when ``bound <= 127``, else
    int16, int32 or int64 likewise. Widen with ``.long()`` before indexing.
    """
    for dtype in (torch.int8, torch.int16, torch.int32):
        if bound <= torch.iinfo(dtype).max:
            return values.to(dtype)
    return values.to(torch.int64)


@dataclass(frozen=True, eq=False)
class LabelContext:
    """What is known for free about N labels at encode and decode time.

    Relabelled views are replayed from a stored seed, so for label (epoch e,
    image i) both sides know the image, its mix partner and the mixing weight
    without storing a byte per label. Context codecs (``needs_context``) spend
    their per-label bits only on what this context does not predict.

    Attributes:
        image: (N,) int64 index of the view's own image, in ``[0, num_images)``.
        partner: (N,) int64 index of the mix partner, ``-1`` when not mixed.
        weight: (N,) float32 weight of the own image in the mix (1 when not
            mixed; CutMix: its area fraction).
        num_images: M, the number of images the indices address.
    """

    image: torch.Tensor
    partner: torch.Tensor
    weight: torch.Tensor
    num_images: int

    def __post_init__(self) -> None:
        n = self.image.shape[0] if self.image.dim() == 1 else -1
        for name in ("image", "partner", "weight"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.shape[0] != n:
                raise InputError(
                    f"LabelContext.{name} must be a 1-D tensor of the same length "
                    f"as image ({n}), got "
                    f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t)}"
                )
        if self.image.dtype != torch.int64 or self.partner.dtype != torch.int64:
            raise InputError("LabelContext.image and .partner must be int64 tensors")
        if not self.weight.is_floating_point():
            raise InputError("LabelContext.weight must be a floating-point tensor")
        if self.num_images < 1:
            raise InputError(f"num_images must be >= 1, got {self.num_images}")
        if n and (
            int(self.image.min()) < 0
            or int(self.image.max()) >= self.num_images
            or int(self.partner.min()) < -1
            or int(self.partner.max()) >= self.num_images
        ):
            raise InputError(
                f"LabelContext indices must lie in [0, {self.num_images}) "
                "(partner -1 for unmixed views)"
            )

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def select(self, index: torch.Tensor | slice) -> LabelContext:
        """The context of labels ``index`` (a slice, bool mask or int tensor)."""
        if isinstance(index, torch.Tensor):
            index = index.to(self.image.device)
        return LabelContext(
            self.image[index], self.partner[index], self.weight[index], self.num_images
        )

    def to(self, device: torch.device | str) -> LabelContext:
        return LabelContext(
            self.image.to(device),
            self.partner.to(device),
            self.weight.to(device),
            self.num_images,
        )

    def equals(self, other: LabelContext) -> bool:
        """Same labels, images, partners and weights (weights to fp32 precision)."""
        return (
            self.num_images == other.num_images
            and torch.equal(self.image.cpu(), other.image.cpu())
            and torch.equal(self.partner.cpu(), other.partner.cpu())
            and torch.equal(self.weight.float().cpu(), other.weight.float().cpu())
        )

    @staticmethod
    def cat(parts: Iterable[LabelContext]) -> LabelContext:
        """Concatenate contexts of consecutive label runs (same ``num_images``)."""
        items = list(parts)
        if not items:
            raise InputError("LabelContext.cat needs at least one context")
        sizes = {c.num_images for c in items}
        if len(sizes) != 1:
            raise InputError(f"contexts address different image counts {sorted(sizes)}")
        return LabelContext(
            torch.cat([c.image for c in items]),
            torch.cat([c.partner for c in items]),
            torch.cat([c.weight for c in items]),
            items[0].num_images,
        )


def check_model_tensors(
    kind: str,
    shapes: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    tensors: Mapping[str, torch.Tensor],
    *,
    exact: bool = False,
) -> None:
    """ArchiveFormatError unless every named tensor has its (shape, dtype).

    For ``from_stored``: a missing or misshapen model tensor names itself. With
    ``exact``, tensors not in ``shapes`` are an error too.
    """
    for name, (shape, dtype) in shapes.items():
        t = tensors.get(name)
        if t is None or tuple(t.shape) != shape or t.dtype != dtype:
            got = None if t is None else (tuple(t.shape), t.dtype)
            raise ArchiveFormatError(
                f"{kind} tensor {name!r} should be {shape} {dtype}, got {got}"
            )
    extra = set(tensors) - set(shapes)
    if exact and extra:
        raise ArchiveFormatError(f"unexpected {kind} tensors {sorted(extra)}")


@runtime_checkable
class SampledCodec(Protocol):
    """A codec whose decoded labels are random draws around a known mean.

    RS-KD's labels (and ``vqae-rs``'s tails) are unbiased samples of the
    teacher: each decoded label is far from its teacher label (a few ids carry
    all the mass), but their mean over the random streams is the teacher
    distribution, or a known distortion of it. A student trained on many such
    labels at the temperature they were drawn for learns that mean, so it is
    what ``--codec auto`` scores them on (docs/auto.md, "Sampled labels").
    """

    @property
    def sampling_temperature(self) -> float:
        """The temperature T the labels are drawn at: ``softmax(decoded / T)``
        is unbiased for the mean of :meth:`expected_logits` at T only."""
        ...

    def expected_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, C) teacher logits -> (N, C) logits whose softmax at
        :attr:`sampling_temperature` is the mean of ``softmax(decoded / T)``
        over the codec's random draws of these labels (``-inf`` allowed)."""
        ...


class Codec(ABC):
    """A soft-label codec: fit, then encode/decode batches of (N, C) logits.

    Subclasses set ``kind`` (registry key, equals ``config.kind``),
    ``codec_id`` (the stable integer from :data:`registry.CODEC_IDS`) and
    ``config_class`` (their pydantic config).
    """

    kind: ClassVar[str]
    codec_id: ClassVar[int]
    config_class: ClassVar[type[CodecConfig]]
    # True for codecs whose fit/encode/decode need a LabelContext (the *_in_context
    # methods); the archive then rebuilds it from its stored view recipe.
    needs_context: ClassVar[bool] = False

    def __init__(self, config: CodecConfig | None = None) -> None:
        """A codec with ``config``, or its config class's defaults when ``None``."""
        self.config = (
            config if config is not None else self.config_class.model_validate({})
        )
        self.num_classes: int | None = None

    # -- fitting -----------------------------------------------------------------
    @abstractmethod
    def fit(self, source: LogitSource, *, num_labels: int | None = None) -> Codec:
        """Learn from a stream of (B, C) logits; returns ``self``.

        ``num_labels`` is how many labels will be encoded in total: rate control
        uses it to amortise the model bytes over the payload.
        """

    @property
    def is_fitted(self) -> bool:
        return self.num_classes is not None

    def resolved_option(self, name: str) -> Any:
        """Config option ``name``, which ``None`` leaves to :meth:`fit` to choose.

        Raises:
            ConfigError: it is still ``None`` (fit has not run).
        """
        value = getattr(self.config, name)
        if value is None:
            raise ConfigError(f"{name} is chosen by fit(); call fit() first")
        return value

    def _require_fitted(self, action: str) -> int:
        if self.num_classes is None:
            raise NotFittedError(
                f"{type(self).__name__}.{action} called before fit(); "
                "call codec.fit(batches) first"
            )
        return self.num_classes

    # -- byte path ---------------------------------------------------------------
    @abstractmethod
    def encode(self, logits: torch.Tensor) -> EncodedBlock:
        """Encode (N, C) logits into one block of bytes."""

    @abstractmethod
    def decode(
        self, block: EncodedBlock, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Decode a block into (N, C) float32 logits on ``device``.

        The result may be log-probabilities (equal to logits up to a per-row
        constant) and may contain ``-inf`` where a decoder assigns no mass.
        """

    # -- with a label context (additive; plain codecs ignore the context) -------------
    def fit_in_context(
        self,
        source: LogitSource,
        context: LabelContext | None,
        *,
        num_labels: int | None = None,
    ) -> Codec:
        """:meth:`fit` on labels whose context is ``context`` (rows in source order)."""
        return self.fit(source, num_labels=num_labels)

    def encode_in_context(
        self, logits: torch.Tensor, context: LabelContext | None
    ) -> EncodedBlock:
        """:meth:`encode` (N, C) logits whose context is ``context`` (N labels)."""
        return self.encode(logits)

    def decode_in_context(
        self,
        block: EncodedBlock,
        context: LabelContext | None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """:meth:`decode` a block whose labels have context ``context``."""
        return self.decode(block, device)

    # -- two-step decoding (random access) --------------------------------------------
    def parse_block(
        self,
        block: EncodedBlock,
        context: LabelContext | None = None,
        device: torch.device | str | None = None,
    ) -> ParsedBlock:
        """The cheap first step of decoding: the block as compact per-label tensors.

        Codecs whose decoding has an expensive per-label part (a decoder
        network, a scatter into C classes) override this and
        :meth:`decode_parsed` so that a reader can parse a chunk once, keep it
        cached at a fraction of its decoded size, and run the expensive part
        only on the labels a batch asks for. The default parses to the full
        decode (``parts = {"rows": (N, C) float32}``), so every codec works.

        Args:
            block: the stored block.
            context: the labels' view context (context codecs; None otherwise).
            device: where the parts live.

        Raises:
            ArchiveFormatError: as :meth:`decode` for a corrupt block.
        """
        rows = self.decode_in_context(block, context, device)
        return ParsedBlock(block.num_labels, {"rows": rows})

    def decode_parsed(
        self, parsed: ParsedBlock, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The second step: (n, C) float32 labels of every row of ``parsed``.

        ``decode_parsed(parse_block(block))`` equals :meth:`decode` bit for
        bit, and so does decoding any selection of rows (:meth:`decode_rows`)
        for those rows.
        """
        rows = parsed.parts["rows"]
        return rows.to(device) if device is not None else rows

    def decode_rows(
        self,
        parsed: ParsedBlock,
        rows: torch.Tensor,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """(n, C) float32 labels of local ``rows`` of a parsed block."""
        return self.decode_parsed(parsed.take(rows), device)

    def planned_model_tensors(self, num_classes: int) -> dict[str, torch.Tensor] | None:
        """Zero tensors of the shapes and dtypes an unfitted codec will store, if known.

        Lets rate control (:mod:`labelzip.rate`) size the header exactly before fit; ``None``
        (the default) means unknown until fit.
        """
        return None

    # -- what is shipped once ------------------------------------------------------
    @abstractmethod
    def model_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors stored once per archive (decoder, codebook, tables), as stored."""

    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable description that, with the tensors, rebuilds the codec.

        The resolved configuration plus ``num_classes``; codecs with more fitted
        state extend it.
        """
        num_classes = self._require_fitted("to_config")
        return {**self.config.model_dump(mode="json"), "num_classes": num_classes}

    @classmethod
    def _unfitted_from_stored(cls, config: dict[str, Any]) -> tuple[Codec, int]:
        """A codec built from a stored :meth:`to_config`, and its ``num_classes``.

        Raises:
            ArchiveFormatError: ``num_classes`` missing or invalid, or the stored
                options fail the codec's config validation.
        """
        options = dict(config)
        num_classes = options.pop("num_classes", None)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ArchiveFormatError(
                f"{cls.kind} codec config needs a positive integer num_classes, "
                f"got {num_classes!r}"
            )
        try:
            codec = cls(cls.config_class(**options))
        except Exception as exc:
            raise ArchiveFormatError(
                f"invalid stored {cls.kind} config: {exc}"
            ) from exc
        return codec, num_classes

    @classmethod
    @abstractmethod
    def from_stored(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> Codec:
        """Rebuild a fitted codec from :meth:`to_config` and :meth:`model_tensors`."""

    @classmethod
    def for_target(
        cls, *, num_labels: int, num_classes: int, budget_bytes: int, **options: Any
    ) -> Codec:
        """Rate control: an unfitted codec whose payload + model bytes fit the budget.

        Options the user fixed are kept; the codec chooses the rest. Raises
        :class:`UnreachableTargetError` naming the best reachable rate.
        """
        raise NotImplementedError(f"{cls.__name__} has no rate control")

    # -- accounting -----------------------------------------------------------------
    def model_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.model_tensors().values())

    def expected_payload_bits(self) -> float | None:
        """Payload bits per label for fixed-rate codecs; ``None`` if data-dependent."""
        return None

    def rate_limit(self) -> str:
        """Why this configuration is the closest a rate target lets it get (a clause).

        Rate control picks the largest configuration that fits; when the
        archive still lands well under its target, :func:`labelzip.archive.
        rate_note` reports this reason. Codecs with a discrete size step
        override it (top-k's K, RS-KD's S, dense's dtype).
        """
        return f"{self.kind} has no larger configuration that fits the budget"

    def account(
        self,
        num_labels: int,
        payload_bytes: int,
        *,
        side_bytes: int = 0,
        header_bytes: int = 0,
        reference: str = "fp16",
    ) -> StorageAccount:
        """All-in storage of ``num_labels`` labels whose blocks took ``payload_bytes``."""
        num_classes = self._require_fitted("account")
        return StorageAccount(
            codec=self.kind,
            num_labels=num_labels,
            num_classes=num_classes,
            payload_bytes=payload_bytes,
            model_bytes=self.model_bytes(),
            side_bytes=side_bytes,
            header_bytes=header_bytes,
            reference=reference,
        )


class ModelFreeCodec(Codec):
    """A codec that stores nothing once per archive: every byte is in its blocks.

    ``from_stored`` rebuilds it from its stored config alone (dense, top-k,
    RS-KD, DistillKit's rows); :meth:`check_stored` lets a subclass refuse a
    stored config that cannot serve the stored class count.
    """

    def model_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    @classmethod
    def from_stored(
        cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> Self:
        check_model_tensors(cls.kind, {}, tensors, exact=True)  # none are stored
        codec, num_classes = cls._unfitted_from_stored(config)
        assert isinstance(codec, cls)
        codec.check_stored(num_classes)
        codec.num_classes = num_classes
        return codec

    def check_stored(self, num_classes: int) -> None:
        """Raise :class:`ArchiveFormatError` if this stored config cannot decode
        ``num_classes`` classes (e.g. a top-k larger than C). Default: any C."""


class PlannedConfig(ModelFreeCodec):
    """A model-free codec whose fit learns only the class count.

    Its stored config (:meth:`Codec.to_config`) is therefore known before fit,
    and rate control (:func:`labelzip.rate.estimate_header_bytes`) sizes its
    header exactly instead of reserving slack for fitted config fields: 256
    bytes that, at 100x on a 6 KB archive, are a stored view per sample.
    """

    def planned_model_tensors(self, num_classes: int) -> dict[str, torch.Tensor] | None:
        return {}

    def planned_config(self, num_classes: int) -> dict[str, Any] | None:
        """:meth:`Codec.to_config` as it will be after fit."""
        return {**self.config.model_dump(mode="json"), "num_classes": num_classes}


class ParsedDecoding(Codec):
    """A codec whose :meth:`decode` is its two steps, parse then decode the rows.

    For codecs whose natural decoder is :meth:`parse_block` followed by
    :meth:`decode_parsed` (both overridden): one code path serves whole blocks
    and random access, so the two agree bit for bit. Combine it before
    :class:`ModelFreeCodec` in the bases when both apply.
    """

    def decode(
        self, block: EncodedBlock, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Block -> (N, C) float32 labels on ``device`` (see :meth:`decode_parsed`)."""
        return self.decode_parsed(self.parse_block(block, None, device))


def first_batch_classes(source: LogitSource) -> int:
    """C of the first (B, C) batch of ``source``, checked with :func:`check_logits`.

    What a codec whose fit only learns the class count reads.

    Raises:
        InputError: an empty source, or an invalid first batch.
    """
    for batch in iterate_source(source):
        return int(check_logits(batch).shape[1])
    raise InputError("fit() got an empty source; pass at least one (B, C) batch")
