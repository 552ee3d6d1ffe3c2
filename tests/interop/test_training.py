"""The drop-in training loader on an SRe2L-format store written as SRe2L writes one.

The store comes from :mod:`sre2l_writer` (SRe2L's relabel recipe with PIL); it is
imported losslessly, then :class:`ImportedViews` + :class:`StoredBatchSampler`
must give back, batch for batch, the very views the teacher labelled (replayed
on the images from the stored coords, flips and mix) and the stored fp16
labels; and the snippet of docs/interop-training.md must train a model for an epoch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from labelzip.errors import ConfigError, InputError
from labelzip.interop.base import ImportOptions
from labelzip.interop.convert import import_store
from labelzip.interop.safe_load import load_torch_file
from labelzip.interop.training import ImportedViews, StoredBatchSampler
from labelzip.interop.view_replay import seeded_batches

pytest.importorskip("PIL.Image")

from . import fixtures  # noqa: E402
from .sre2l_writer import STD, normalise, write_sre2l_store  # noqa: E402

SIZE = 16
BATCH = 5
EPOCHS = 2
DOCS = Path(__file__).resolve().parents[2] / "docs" / "interop-training.md"
# A view differs from PIL's by at most one uint8 level, i.e. 1/255 before Normalize.
VIEW_ATOL = 1.0 / 255.0 / float(STD.min()) + 1e-5


def _images(n: int = 12) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    out = []
    for k in range(n):
        h, w = 20 + 3 * k, 36 - k
        base = torch.rand(3, h // 4 + 1, w // 4 + 1, generator=gen)
        smooth = torch.nn.functional.interpolate(
            base[None], size=(h, w), mode="bilinear"
        )
        out.append((smooth[0] * 255).round().to(torch.uint8))
    return out


class Tiny(torch.nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _store(tmp_path: Path, mix_type: str | None):
    images = _images()
    root = tmp_path / "FKD_soft_label"
    seen = write_sre2l_store(
        root,
        images,
        Tiny(0).eval(),
        epochs=EPOCHS,
        batch_size=BATCH,
        mix_type=mix_type,
        size=SIZE,
    )
    archive = tmp_path / "labels.lz"
    import_store(
        root, "sre2l", archive, options=ImportOptions(sampler_seed=42, batch_size=BATCH)
    )
    return images, root, seen, archive


@pytest.mark.parametrize("mix_type", ["cutmix", "mixup", None])
def test_replayed_batches_are_what_the_teacher_saw(tmp_path: Path, mix_type) -> None:
    images, root, seen, archive = _store(tmp_path, mix_type)
    views = ImportedViews(archive, images, output_size=SIZE, transform=normalise)
    sampler = StoredBatchSampler(archive)
    loader = DataLoader(views, batch_sampler=sampler)
    batches = list(loader)
    assert len(batches) == len(seen) == EPOCHS * 3  # 12 images: 5 + 5 + 2 per epoch
    for (key, expected), (x, soft, image_index) in zip(
        sorted(seen.items()), batches, strict=True
    ):
        epoch, b = key
        assert x.shape == expected.shape
        diff = (x - expected).abs()
        assert float(diff.max()) <= VIEW_ATOL, key
        assert float(diff.mean()) < 0.25 * VIEW_ATOL, key
        stored = load_torch_file(root / f"epoch_{epoch}" / f"batch_{b}.tar")
        assert torch.equal(soft.half(), stored[5])  # lossless: the stored fp16 labels
        assert image_index.tolist() == seeded_batches(len(images), BATCH, 42, epoch)[b]


def test_single_items_and_workers_match_whole_batches(tmp_path: Path) -> None:
    images, _, _, archive = _store(tmp_path, "cutmix")
    views = ImportedViews(archive, images, output_size=SIZE, transform=normalise)
    sampler = StoredBatchSampler(archive, epoch=1)
    whole = list(DataLoader(views, batch_sampler=sampler))
    assert len(whole) == 3
    # One label alone is mixed with its stored partner exactly as in its batch.
    x, soft, image = views[sampler.plan.batches[3].start + 2]
    assert torch.equal(x, whole[0][0][2]) and torch.equal(soft, whole[0][1][2])
    assert image == int(whole[0][2][2])
    workers = list(DataLoader(views, batch_sampler=sampler, num_workers=2))
    for a, b in zip(whole, workers, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    sampler.set_batches([5, 0])
    assert [len(b) for b in sampler] == [2, 5]


def test_bad_use_is_one_line_errors(tmp_path: Path) -> None:
    images, _, _, archive = _store(tmp_path, "mixup")
    sampler = StoredBatchSampler(archive)
    with pytest.raises(ConfigError, match="epoch 7 is not stored"):
        sampler.set_epoch(7)
    with pytest.raises(ConfigError, match="batch positions"):
        sampler.set_batches([0, 99])
    with pytest.raises(InputError, match="address 12 images"):
        ImportedViews(archive, images[:5], output_size=SIZE)
    views = ImportedViews(archive, images, output_size=SIZE)
    with pytest.raises(InputError, match="label indices"):
        views.__getitems__([0, len(views)])
    with pytest.raises(InputError, match="does not exist"):
        ImportedViews(tmp_path / "missing.lz", images)


def _docs_snippet() -> str:
    text = DOCS.read_text(encoding="utf-8")
    found = re.search(r"<!-- drop-in-training -->\s*```python\n(.*?)```", text, re.S)
    assert found is not None, (
        "docs/interop-training.md lost its drop-in training snippet"
    )
    return found.group(1)


def test_docs_snippet_trains_one_epoch(tmp_path: Path) -> None:
    images, _, _, archive = _store(tmp_path, "cutmix")
    model = Tiny(1)
    before = [p.detach().clone() for p in model.parameters()]
    scope = {
        "archive": archive,
        "images": images,
        "input_size": SIZE,
        "normalise": normalise,
        "model": model,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
        "epochs": 1,
        "T": 4.0,
        "workers": 0,
    }
    exec(compile(_docs_snippet(), str(DOCS), "exec"), scope)
    assert torch.isfinite(scope["loss"])
    assert any(
        not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)
    )


def _file_order(root: Path, flat: bool) -> list[Path]:
    if flat:
        count = len(list(root.glob("batch_*.tar")))
        return [root / f"batch_{b}.tar" for b in range(count)]
    out = []
    for e in range(len(list(root.glob("epoch_*")))):
        count = len(list((root / f"epoch_{e}").glob("batch_*.tar")))
        out += [root / f"epoch_{e}" / f"batch_{b}.tar" for b in range(count)]
    return out


@pytest.mark.parametrize("fmt", ["lpld", "lpqld", "gvbsm", "edc"])
def test_plan_gives_back_every_stored_parameter(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / fmt
    getattr(fixtures, f"write_{fmt}")(root)
    archive = tmp_path / f"{fmt}.lz"
    import_store(root, fmt, archive, options=ImportOptions(num_classes=9))
    flat = fmt == "lpqld"
    if fmt in ("lpld", "lpqld"):
        name = "sampler_indices_batch.json" if flat else "sampler_indices_epoch.json"
        listed = json.loads((root / name).read_text())
        images = torch.tensor([i for key in listed for i in listed[key]])
    sampler = StoredBatchSampler(archive)
    plan = sampler.plan
    files = _file_order(root, flat)
    assert len(plan.batches) == len(sampler) == len(files)
    position = 0
    for path, batch, labels in zip(files, plan.batches, sampler, strict=True):
        stored = load_torch_file(path)
        params = plan.batch_params(batch)
        assert labels == list(range(batch.start, batch.start + batch.size))
        assert (
            torch.equal(params.coords, stored[0])
            and params.coords.dtype == stored[0].dtype
        )
        assert torch.equal(params.flip, stored[1])
        assert torch.equal(params.mix_index, stored[2].long())
        assert batch.mix.kind == "cutmix" and batch.mix.lam == stored[3]
        assert batch.mix.bbox == tuple(int(v) for v in stored[4])
        if fmt in ("gvbsm", "edc"):
            assert torch.equal(params.images, stored[6])
        else:
            assert torch.equal(params.images, images[position : position + batch.size])
        position += batch.size
    if flat:
        with pytest.raises(ConfigError, match="no epochs"):
            sampler.set_epoch(0)
