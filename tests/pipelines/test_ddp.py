"""Data-parallel student training: two gloo ranks on CPU, spawned in-process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import nn

from labelzip.augment import ViewConfig
from labelzip.distill import DistilledSet
from labelzip.pipelines.relabel import RelabelConfig, RelabelOutput, relabel
from labelzip.pipelines.replay import ReplayDataset
from labelzip.pipelines.train_student import StudentConfig, train_student

VIEW = ViewConfig(output_size=28, scale=(0.5, 1.0), mix="cutmix", mix_prob=0.5)
STUDENT = StudentConfig(width=8, depth=2, batch_size=8, lr=5e-3, seed=0)


def _ddp_worker(
    rank: int, init: str, set_path: str, archive: str, out: str, world: int
) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        image_set = DistilledSet.load(set_path)
        replay = ReplayDataset(image_set, archive)
        seen: list[torch.Tensor] = []
        original = replay.batch

        def spy(epoch: int, index: torch.Tensor):  # type: ignore[no-untyped-def]
            seen.append(index.clone())
            return original(epoch, index)

        replay.batch = spy  # type: ignore[method-assign]
        config = STUDENT.model_copy(update={"epochs": 2})
        result = train_student(replay, config, test_set=image_set.to_dataset())
        torch.save(
            {
                "params": [p.detach() for p in result.model.parameters()],
                "indices": torch.cat(seen),
                "losses": [log.loss for log in result.history],
                "accuracy": result.accuracy,
            },
            f"{out}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_ddp_two_gloo_ranks_shard_images_and_stay_in_sync(
    tmp_path: Path, set_factory: Callable[..., DistilledSet], teacher: nn.Module
) -> None:
    image_set = set_factory(6, seed=0)
    archive = tmp_path / "dense.lz"
    config = RelabelConfig(epochs=2, view=VIEW, batch_size=64)
    relabel(image_set, teacher, [RelabelOutput(path=archive)], config)
    set_path = image_set.save(tmp_path / "set.safetensors")
    init = f"file://{tmp_path / 'rendezvous'}"
    args = (init, str(set_path), str(archive), str(tmp_path), 2)
    mp.spawn(_ddp_worker, args=args, nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    # Each epoch, the ranks took disjoint halves of the 24 images.
    for epoch in range(2):
        a = r0["indices"][12 * epoch : 12 * (epoch + 1)]
        b = r1["indices"][12 * epoch : 12 * (epoch + 1)]
        assert set(a.tolist()).isdisjoint(b.tolist())
        assert set(a.tolist()) | set(b.tolist()) == set(range(24))
    # Gradients were all-reduced: identical weights, losses and accuracy.
    for p, q in zip(r0["params"], r1["params"], strict=True):
        assert torch.equal(p, q)
    assert r0["losses"] == r1["losses"] and r0["accuracy"] == r1["accuracy"]
