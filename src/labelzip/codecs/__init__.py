"""Soft-label codecs under one contract and one storage account.

Packages by family; the modules at this level are shared by all of them:
:mod:`base` (the codec contract), :mod:`registry` (names, stable ids),
:mod:`entropy` (ANS coding), :mod:`idblock` (packed class-id blocks),
:mod:`prune` (which labels an archive stores).

- ``baseline/``: dense logits, top-k and its variants, RS-KD, DistillKit.
- ``vqae/``: the VQ autoencoder codec (the paper's VQAE) and its parts.
- ``vqae_lm/``: VQAE variants for LM vocabularies (the network sees the top-K only).
- ``context/``: codecs that predict labels from the relabel recipe's view draws.

Every registered codec (``labelzip info`` shows the name; archives store the
key, which never changes; both are accepted wherever a codec is named):

==  ===============  =============  ======================  ===========================
id  key (stored)     name           class                   file (under codecs/)
==  ===============  =============  ======================  ===========================
1   dense            dense          DenseCodec              baseline/dense.py
2   topk             topk           TopKCodec               baseline/topk.py
3   rskd             rskd           RSKDCodec               baseline/rskd.py
4   vqae             vqae           VQAECodec               vqae/codec.py
5   topk-tail        topk-tail      TopKTailCodec           baseline/topk_tail.py
6   vqae-ctx         view-mix       ViewMixCodec            context/viewmix.py
7   vqae-sparse      vqae-sparse    VQAESparseCodec         vqae_lm/sparse.py
8   vqae-rs          vqae-sampled   VQAESampledCodec        vqae_lm/sampled.py
9   ctx-transform    ctx-transform  ContextTransformCodec   context/ctx_transform.py
10  distillkit       distillkit     DistillKitCodec         baseline/distillkit.py
11  topk-q           topk-q         TopKQuantCodec          baseline/topk_quant.py
==  ===============  =============  ======================  ===========================

"RS" in ``vqae-rs`` is random sampling (as in RS-KD), not Reed-Solomon.
"""

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
