"""labelzip: make the soft labels of dataset and LLM distillation small enough to ship."""

from labelzip.accounting import StorageAccount
from labelzip.codecs import (
    Codec,
    EncodedBlock,
    available_codecs,
    codec_class,
    create_codec,
)
from labelzip.errors import (
    ArchiveFormatError,
    ChecksumError,
    CodecMismatchError,
    ConfigError,
    InputError,
    LabelzipError,
    NotFittedError,
    UnreachableTargetError,
)
from labelzip.ops.metrics import kl_divergence, top1_agreement, topk_overlap

__version__ = "0.1.0"

__all__ = [
    "ArchiveFormatError",
    "ChecksumError",
    "Codec",
    "CodecMismatchError",
    "ConfigError",
    "EncodedBlock",
    "InputError",
    "LabelzipError",
    "NotFittedError",
    "StorageAccount",
    "UnreachableTargetError",
    "__version__",
    "available_codecs",
    "codec_class",
    "create_codec",
    "kl_divergence",
    "top1_agreement",
    "topk_overlap",
]
