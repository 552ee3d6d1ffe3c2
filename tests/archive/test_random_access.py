"""Random access: shuffled batches decode to exactly the rows of a whole-chunk decode.

The reader parses chunks (cheap, cached under a byte budget) and runs the
expensive part of decoding only on the rows a batch asks for, gathered from
every chunk they live in. Every registered codec, plain and pruned, must give
the same bits as :func:`load_archive` (which decodes whole chunks).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from labelzip.archive import (
    ArchiveMetadata,
    ArchiveReader,
    Layout,
    load_archive,
    save_archive,
)
from labelzip.augment import ViewConfig
from labelzip.codecs.base import ParsedBlock
from labelzip.codecs.prune import PrunePlan
from labelzip.codecs.registry import available_codecs, create_codec
from labelzip.errors import ConfigError, InputError

torch.set_num_threads(1)

C, CHUNK = 12, 64
# Small configurations: the test is about the read path, not codec quality.
FAST: dict[str, dict[str, Any]] = {
    "dense": {"dtype": "fp16"},
    "distillkit": {"quant": {"d": 12, "k": 4, "exact_k": 4, "residual_bins": []}},
    "topk": {"k": 3, "decoder": "mrs"},
    "rskd": {"num_samples": 6},
    "topk-tail": {"k": 3},
    "topk-q": {"k": 3, "value_bits": 3},
    "vqae": {
        "num_ids": 2,
        "value_bits": 3,
        "codebook_size": 8,
        "hidden_dim": 12,
        "encoder_dim": 24,
        "num_chunks": 3,
        "chunk_dim": 2,
        "steps": 30,
    },
    "vqae-sparse": {"steps": 40, "hidden": 16, "k": 3},
    "vqae-rs": {"steps": 40, "hidden": 16, "k": 3, "sample_scale": 4.0},
    "vqae-ctx": {"codebook_size": 4, "prior_steps": 20, "rounds": 1, "round_steps": 10},
    "ctx-transform": {"prior_steps": 20, "learning_rate": 0.05, "step": 0.5},
}
CONTEXT = ("vqae-ctx", "ctx-transform")


def _labels(name: str) -> tuple[torch.Tensor, Layout, ArchiveMetadata]:
    """384 labels: relabel-style views for context codecs, plain logits otherwise."""
    g = torch.Generator().manual_seed(0)
    if name not in CONTEXT:
        logits = 1.5 * torch.randn(384, C, generator=g)
        logits[torch.arange(384), torch.randint(0, C, (384,), generator=g)] += 4.0
        return logits, Layout(("sample", "view"), (96, 4)), ArchiveMetadata()
    from labelzip.codecs.context.viewmix import view_mix_prior
    from labelzip.pipelines.relabel_types import recipe_context

    view = ViewConfig(output_size=(8, 8), scale=(0.5, 1.0), mix="cutmix")
    recipe = {"view": view.model_dump(mode="json"), "seed": 1, "image_shape": [1, 8, 8]}
    meta = ArchiveMetadata(user={"relabel": recipe})
    layout = Layout(("epoch", "sample"), (24, 16))
    ctx = recipe_context(meta.user, layout.dims, layout.shape, torch.arange(384))
    prior = view_mix_prior(3 * torch.randn(16, C, generator=g), ctx)
    return prior + 0.5 * torch.randn(prior.shape, generator=g), layout, meta


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A plain and a pruned archive of every registered codec (chunks of 64)."""
    root = tmp_path_factory.mktemp("random_access")
    out = {}
    for name in available_codecs():
        logits, layout, meta = _labels(name)
        for pruned in (False, True):
            plan = PrunePlan(layout.dims, layout.shape, 0.5, 3) if pruned else None
            path = root / f"{name}{'-pruned' if pruned else ''}.lz"
            save_archive(
                path,
                create_codec(name, **FAST[name]),
                logits.reshape(*layout.shape, C),
                layout=layout,
                prune=plan,
                metadata=meta,
                chunk_size=CHUNK,
            )
            out[path.stem] = path
    return out


def test_every_codec_is_covered(archives: dict[str, Path]) -> None:
    assert set(FAST) == set(available_codecs())
    assert len(archives) == 2 * len(FAST)


@pytest.mark.parametrize("pruned", [False, True])
@pytest.mark.parametrize("name", sorted(FAST))
def test_shuffled_batches_equal_whole_chunk_decode(
    archives: dict[str, Path], name: str, pruned: bool, tmp_path: Path
) -> None:
    path = archives[f"{name}{'-pruned' if pruned else ''}"]
    whole = load_archive(path).reshape(384, C)
    g = torch.Generator().manual_seed(1)
    order = torch.randperm(384, generator=g)
    for cache in ({}, {"cache_bytes": 0}, {"cache_chunks": 1}, "pinned", "spilled"):
        options = cache if isinstance(cache, dict) else {}
        if cache == "spilled":  # nothing fits the cache: parsed rows on disk
            options = {"cache_bytes": 0}
        with ArchiveReader(path, **options) as reader:
            if cache == "pinned":  # every batch is one gather from the pinned chunks
                assert reader.prefetch() == reader.num_chunks
                assert reader.cached_chunks == reader.num_chunks
            if cache == "spilled":
                assert reader.prefetch(spill_dir=tmp_path) == reader.num_chunks
                assert reader.spilled_bytes > 0 and reader.cached_bytes == 0
                reads = reader.chunk_reads
            start = 0
            for size in (1, 7, 50, 200, 126):  # every label once, odd batch sizes
                index = order[start : start + size]
                got = reader.decode(index)
                assert torch.equal(got, whole[index]), (name, cache, size)
                start += size
            assert start == 384
            # repeats and a 2-D index keep their shape
            index = torch.tensor([[5, 5, 300], [0, 383, 5]])
            assert torch.equal(reader.decode(index), whole[index])
            assert torch.equal(reader.decode(7), whole[7])
            if cache == "spilled":  # every batch was served from the spill store
                assert reader.chunk_reads == reads
        assert not list(tmp_path.iterdir())  # closing removed the spill store


@pytest.mark.parametrize("name", ["dense", "topk", "rskd", "topk-tail", "vqae"])
def test_fast_paths_parse_compactly_and_decode_rows_exactly(
    archives: dict[str, Path], name: str
) -> None:
    with ArchiveReader(archives[name]) as reader:
        codec = reader.codec
        block = reader.read_chunk(1)
        full = codec.decode(block)
        parsed = codec.parse_block(block)
        assert "rows" not in parsed.parts  # not the default (a full decode)
        assert parsed.nbytes < full.numel() * full.element_size()
        assert torch.equal(codec.decode_parsed(parsed), full)
        rows = torch.tensor([63, 0, 17, 17])
        assert torch.equal(codec.decode_rows(parsed, rows), full[rows])


def test_cache_is_bounded_by_bytes_and_served_from(archives: dict[str, Path]) -> None:
    path = archives["vqae"]
    with ArchiveReader(path) as reader:
        one = reader.parsed_chunk(0).nbytes
    with ArchiveReader(path, cache_bytes=2 * one) as reader:
        reader.decode(torch.arange(384))
        assert reader.chunk_reads == 6
        assert reader.cached_bytes <= 2 * one and reader.cached_chunks == 2
        reader.decode(torch.arange(320, 384))  # the last chunk stays cached
        assert reader.chunk_reads == 6
    with ArchiveReader(path, cache_chunks=0) as reader:
        reader.decode(torch.tensor([0, 1]))
        reader.decode(torch.tensor([2]))
        assert reader.chunk_reads == 2 and reader.cached_bytes == 0
    with ArchiveReader(path, cache_chunks=2) as reader:  # the old default's memory
        assert reader.cache_bytes == 2 * CHUNK * C * 4 and reader.cache_chunks == 2
        assert reader.prefetch() == 6 and reader.chunk_reads == 6
        reader.decode(torch.randperm(384))
        assert reader.chunk_reads == 6  # the whole archive fits parsed


def test_prefetch_pins_the_chunks_of_an_epoch(archives: dict[str, Path]) -> None:
    path = archives["vqae"]
    whole = load_archive(path).reshape(384, C)
    with ArchiveReader(path) as reader:
        epoch = reader.layout.ravel(torch.arange(40, 60), torch.arange(4)[:, None])
        epoch = epoch.reshape(-1)  # labels 160..239: chunks 2 and 3
        assert reader.prefetch(epoch) == 2 and reader.cached_chunks == 2
        shuffled = epoch[torch.randperm(80)]
        assert torch.equal(reader.decode(shuffled), whole[shuffled])
        assert reader.chunk_reads == 2
        # a label outside the pinned chunks goes through the LRU cache
        assert torch.equal(reader.decode(torch.tensor([161, 0])), whole[[161, 0]])
        assert reader.chunk_reads == 3
        # the next epoch replaces the pin
        assert reader.prefetch(torch.arange(300, 384)) == 2
        assert reader.cached_bytes <= reader.cache_bytes
    with ArchiveReader(path, cache_chunks=0) as reader:  # too small to pin: still right
        assert reader.prefetch() == 6 and reader.cached_chunks == 0
        assert torch.equal(reader.decode(torch.arange(383, -1, -1)), whole.flip(0))


def test_bad_cache_arguments_and_indices(archives: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="not both"):
        ArchiveReader(archives["dense"], cache_chunks=2, cache_bytes=10)
    with pytest.raises(ConfigError, match=">= 0"):
        ArchiveReader(archives["dense"], cache_bytes=-1)
    with ArchiveReader(archives["dense"]) as reader:
        with pytest.raises(InputError, match="must lie in"):
            reader.decode(torch.tensor([0, 384]))
        assert reader.decode(torch.zeros(0, dtype=torch.int64)).shape == (0, C)


def test_reader_pickles_as_its_path(archives: dict[str, Path]) -> None:
    path = archives["vqae-pruned"]
    with ArchiveReader(path, cache_bytes=1 << 20) as reader:
        want = reader.decode(torch.arange(0, 384, 5))
        blob = pickle.dumps(reader)
    assert len(blob) < 1000  # no tensors, no codec, no cache, no descriptor
    clone = pickle.loads(blob)
    assert clone._fd is None and clone.cache_bytes == 1 << 20
    assert torch.equal(clone.decode(torch.arange(0, 384, 5)), want)
    clone.close()


def test_parsed_block_checks_its_rows() -> None:
    with pytest.raises(InputError, match="expected 3 rows"):
        ParsedBlock(3, {"ids": torch.zeros(2, 4)})
    a = ParsedBlock(2, {"x": torch.tensor([[1], [2]])})
    b = ParsedBlock(1, {"x": torch.tensor([[3]])})
    joined = ParsedBlock.cat([a, b])
    assert joined.num_labels == 3 and joined.take(torch.tensor([2, 0])).parts[
        "x"
    ].tolist() == [[3], [1]]
    with pytest.raises(InputError, match="different parts"):
        ParsedBlock.cat([a, ParsedBlock(1, {"y": torch.zeros(1)})])
