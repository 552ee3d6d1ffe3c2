"""VQAE codecs for LM vocabularies: the autoencoder sees only the teacher's top-K.

:mod:`sparse` (``vqae-sparse``) codes the top-K ids and a VQ-coded head profile
and models the tail from a unigram prior; :mod:`sampled` (``vqae-sampled``, old
key ``vqae-rs``) keeps that head and stores random samples of the tail, as RS-KD
does. Design notes and measurements: docs/lm.md.
"""
