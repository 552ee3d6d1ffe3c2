"""View-context codecs: labels predicted from the relabel recipe's view draws.

A ``labelzip relabel`` archive labels seeded views (crops mixed by CutMix or
Mixup); the image and partner of every view, and its mix weight, follow from the
recipe in the header (:mod:`recipe`). :mod:`viewmix` (``view-mix``, old key
``vqae-ctx``) codes labels against a per-image prototype prior mixed like the
views; :mod:`ctx_transform` codes the residual to that prior on a PCA basis.
Design notes: docs/vqae-design.md.
"""
