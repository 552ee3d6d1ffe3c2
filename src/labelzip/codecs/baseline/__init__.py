"""Baseline codecs: dense logits, top-k and its variants, RS-KD sampling, DistillKit.

The codecs the papers and frameworks labelzip compares against, written from
their descriptions, plus the top-k variants (quantised values, modelled tail)
labelzip adds: :mod:`dense`, :mod:`topk`, :mod:`topk_quant` (``topk-q``),
:mod:`topk_tail`, :mod:`rskd`, :mod:`distillkit` (with DistillKit's row
quantiser in :mod:`distillkit_quant`).
"""
