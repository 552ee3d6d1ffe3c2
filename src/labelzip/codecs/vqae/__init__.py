"""The VQAE codec: top class ids plus vector-quantized codes, one small decoder.

Modules: :mod:`quantizer` (residual product VQ with EMA codebooks),
:mod:`autoencoder` (encoder, decoder), :mod:`train` (streaming fit on the KD
loss), :mod:`codec` (the :class:`~labelzip.codecs.base.Codec`), :mod:`rate`
(rate control). Design notes and measurements: docs/vqae-design.md.
"""

from labelzip.codecs.vqae.codec import VQAECodec, VQAEConfig

__all__ = ["VQAECodec", "VQAEConfig"]
