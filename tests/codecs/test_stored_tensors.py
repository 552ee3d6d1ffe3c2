"""Every registered codec checks its stored tensors against its config in from_stored.

An archive's model tensors are rebuilt by ``Codec.from_stored``; a tensor whose
dtype or shape differs from what the stored config implies (a header edit a
format 1/2 digest does not see), a missing one or an extra one must end in one
:class:`ArchiveFormatError`, never in wrong labels or a traceback later.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from labelzip.codecs.base import Codec, LabelContext
from labelzip.codecs.registry import available_codecs, codec_class, create_codec
from labelzip.errors import ArchiveFormatError

torch.set_num_threads(1)

QUICK: dict[str, dict[str, object]] = {
    "dense": {},
    "distillkit": {"quant": {"d": 24, "k": 6, "exact_k": 6, "residual_bins": []}},
    "topk": {"k": 3},
    "topk-q": {"k": 3},
    "rskd": {"num_samples": 8},
    "topk-tail": {"k": 3},
    "vqae": {"steps": 20, "hidden_dim": 16, "encoder_dim": 16, "batch_size": 32},
    "vqae-sparse": {"steps": 20, "k": 4},
    "vqae-rs": {"steps": 20, "k": 4, "sample_scale": 8.0, "residual_step": 0.01},
    "vqae-ctx": {"prior_steps": 10, "rounds": 1, "round_steps": 5},
    "ctx-transform": {"prior_steps": 10},
}


def _context(images: int, views: int) -> LabelContext:
    g = torch.Generator().manual_seed(0)
    image = torch.arange(images).repeat(views)
    partner = (image + torch.randint(1, images, image.shape, generator=g)) % images
    weight = 0.4 + 0.6 * torch.rand(image.shape, generator=g)
    return LabelContext(image, partner, weight, images)


@pytest.fixture(scope="module")
def stored() -> Callable[[str], tuple[type[Codec], dict, dict[str, torch.Tensor]]]:
    """``stored(name)``: (class, stored config, model tensors) of a fitted codec."""
    cache: dict[str, tuple[type[Codec], dict, dict[str, torch.Tensor]]] = {}

    def build(name: str) -> tuple[type[Codec], dict, dict[str, torch.Tensor]]:
        if name not in cache:
            g = torch.Generator().manual_seed(1)
            logits = 3 * torch.randn(160, 24, generator=g)
            codec = create_codec(name, **QUICK[name])
            if codec.needs_context:
                codec.fit_in_context([logits], _context(8, 20))
            else:
                codec.fit([logits])
            cache[name] = (type(codec), codec.to_config(), codec.model_tensors())
        return cache[name]

    return build


def test_every_registered_codec_is_covered() -> None:
    assert sorted(QUICK) == available_codecs()


@pytest.mark.parametrize("name", sorted(QUICK))
def test_stored_tensors_round_trip(name: str, stored: Callable) -> None:
    cls, config, tensors = stored(name)
    rebuilt = cls.from_stored(dict(config), dict(tensors))
    assert rebuilt.num_classes == 24
    assert codec_class(name) is cls


@pytest.mark.parametrize("name", sorted(QUICK))
def test_extra_tensor_is_refused(name: str, stored: Callable) -> None:
    cls, config, tensors = stored(name)
    extra = {**tensors, "smuggled": torch.zeros(3, dtype=torch.float16)}
    with pytest.raises(ArchiveFormatError, match="smuggled"):
        cls.from_stored(dict(config), extra)


def _other_dtypes(t: torch.Tensor) -> list[torch.dtype]:
    """Dtypes of the same width: a one-byte header edit keeps the byte range."""
    same = {
        1: [torch.uint8, torch.int8],
        2: [torch.float16, torch.bfloat16, torch.int16, torch.uint16],
        4: [torch.float32, torch.int32, torch.uint32],
        8: [torch.float64, torch.int64],
    }[t.element_size()]
    return [d for d in same if d != t.dtype]


@pytest.mark.parametrize("name", sorted(QUICK))
def test_every_model_tensor_checks_its_dtype_and_shape(
    name: str, stored: Callable
) -> None:
    cls, config, tensors = stored(name)
    for key, tensor in tensors.items():
        for dtype in _other_dtypes(tensor):
            edited = {**tensors, key: tensor.contiguous().view(dtype)}
            with pytest.raises(ArchiveFormatError):
                cls.from_stored(dict(config), edited)
        shape = tuple(reversed(tensor.shape))
        if shape != tuple(tensor.shape):  # transposed in the header: same bytes
            edited = {**tensors, key: tensor.contiguous().reshape(shape)}
            with pytest.raises(ArchiveFormatError):
                cls.from_stored(dict(config), edited)
        edited = {k: v for k, v in tensors.items() if k != key}
        with pytest.raises(ArchiveFormatError):
            cls.from_stored(dict(config), edited)
