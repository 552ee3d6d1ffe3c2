"""Soft-label codecs under one contract and one storage account."""

from labelzip.codecs.base import Codec, CodecConfig, EncodedBlock, check_logits
from labelzip.codecs.registry import available_codecs, codec_class, create_codec

__all__ = [
    "Codec",
    "CodecConfig",
    "EncodedBlock",
    "available_codecs",
    "check_logits",
    "codec_class",
    "create_codec",
]
