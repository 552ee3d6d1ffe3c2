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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from labelzip.accounting import StorageAccount
from labelzip.errors import ArchiveFormatError, InputError, NotFittedError

__all__ = [
    "Codec",
    "CodecConfig",
    "EncodedBlock",
    "LogitSource",
    "check_logits",
    "iterate_source",
]

# A re-iterable stream of (B, C) float logit batches: a list, a DataLoader-like
# object, or a zero-argument callable returning a fresh iterator (for multi-pass fits).
LogitSource = Iterable[torch.Tensor] | Callable[[], Iterable[torch.Tensor]]


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


def check_logits(logits: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Validate a (N, C) batch of teacher logits; returns it unchanged.

    Raises:
        InputError: wrong type, rank or dtype, class count mismatch, NaN or Inf.
    """
    if not isinstance(logits, torch.Tensor):
        raise InputError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise InputError(
            f"logits must have shape (N, C), got {tuple(logits.shape)}; "
            "flatten leading dimensions first"
        )
    if not logits.is_floating_point():
        raise InputError(
            f"logits must be a floating-point tensor, got {logits.dtype}; "
            "store raw teacher logits (fp32, fp16 or bf16)"
        )
    if num_classes is not None and logits.shape[1] != num_classes:
        raise InputError(
            f"codec was fitted for {num_classes} classes, logits have {logits.shape[1]}"
        )
    if not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).any(dim=1).sum())
        raise InputError(
            f"logits contain NaN or Inf in {bad} of {logits.shape[0]} rows"
        )
    return logits


class Codec(ABC):
    """A soft-label codec: fit, then encode/decode batches of (N, C) logits.

    Subclasses set ``kind`` (registry key, equals ``config.kind``),
    ``codec_id`` (the stable integer from :data:`registry.CODEC_IDS`) and
    ``config_class`` (their pydantic config).
    """

    kind: ClassVar[str]
    codec_id: ClassVar[int]
    config_class: ClassVar[type[CodecConfig]]

    def __init__(self, config: CodecConfig) -> None:
        self.config = config
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


def iterate_source(source: LogitSource) -> Iterable[torch.Tensor]:
    """A fresh pass over ``source`` (calls it if it is a factory)."""
    if callable(source) and not isinstance(source, torch.Tensor):
        return source()
    return source
