"""Relabel a distilled image set (SRe2L/FKD protocol) straight into compressed archives.

For epoch e in range(E) and every image i, view (e, i) is a RandomResizedCrop
+ flip (+ CutMix/Mixup with a partner) rendered from (seed, e, i) by
:mod:`labelzip.augment`, and its label is the teacher's logits on that view.
Labels stream batch by batch into one or more :class:`ArchiveWriter` (one
teacher pass feeds every output), with layout ``["epoch", "sample"]`` of shape
``[E, M]``: label ``e * M + i`` is view (e, i).

Side information: views are replayed from the seed at training time, so the
archive stores the recipe once (view config, seed, epochs: a few hundred header
bytes, ~0 bytes per view) instead of SRe2L's ~25-37 bytes per view. The
explicit parameters can still be stored as side tensors for comparison
(``store_augmentations``); the metadata records what they would cost either way.

Fitting: codecs that learn (vqae, rskd with measured sizing) are fitted on the
teacher's labels of a bounded sample of views. When the views that must be
labelled number at most ``fit_views``, their logits are computed once, kept in
memory (``fit_views x C x 4`` bytes at most), used to fit and then written: one
teacher pass. Otherwise a first pass labels a seeded uniform sample of
``fit_views`` views per output (the extra teacher cost is that sample), then
the second pass labels and encodes every view.

RDED's online labels are materialised the same way: relabel the RDED set.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn

from labelzip.accounting import StorageAccount
from labelzip.archive import ArchiveMetadata, ArchiveWriter, Layout
from labelzip.augment import (
    ViewConfig,
    explicit_param_bytes,
    explicit_params,
    make_views,
    sample_view_params,
)
from labelzip.codecs.base import Codec
from labelzip.codecs.prune import PrunePlan
from labelzip.codecs.registry import codec_class, with_num_images
from labelzip.errors import CodecMismatchError, ConfigError, InputError
from labelzip.pipelines.imageset import ImageSet, check_image_tensor, model_id
from labelzip.pipelines.relabel_auto import resolve_auto_outputs
from labelzip.pipelines.relabel_types import (
    AUGMENT_PREFIX,
    LAYOUT_DIMS,
    PROTOCOL,
    RELABEL_KEY,
    ProgressFn,
    RelabelConfig,
    RelabelledArchive,
    RelabelOutput,
    RelabelResult,
    default_view_config,
    recipe_context,
)
from labelzip.rate import (
    ArchiveTarget,
    auto_prune_plan,
    fit_codec,
    rate_note,
    side_entry_bytes,
)
from labelzip.selection.auto import AutoChoice

__all__ = [
    "LAYOUT_DIMS",
    "PROTOCOL",
    "RELABEL_KEY",
    "ProgressFn",
    "RelabelConfig",
    "RelabelOutput",
    "RelabelResult",
    "RelabelledArchive",
    "ViewLabeller",
    "default_view_config",
    "explicit_records",
    "fit_output",
    "plan_output",
    "relabel",
    "relabel_metadata",
    "relabel_result",
    "view_batches",
]

logger = logging.getLogger(__name__)

_FIT_BATCH = 4096


# ---------------------------------------------------------------- the teacher pass


def view_batches(
    flat: torch.Tensor, num_images: int, config: RelabelConfig
) -> Iterator[tuple[int, slice]]:
    """The teacher batches of sorted flat view indices: (epoch, positions in
    ``flat``), at most ``batch_size`` views of one epoch each. A teacher's
    logits may depend on the batch a view is in (kernels chosen by batch
    size), so every pass over the same views uses these batches."""
    bounds = torch.searchsorted(
        flat, torch.arange(config.epochs + 1, dtype=torch.int64) * num_images
    ).tolist()
    for epoch in range(config.epochs):
        for start in range(bounds[epoch], bounds[epoch + 1], config.batch_size):
            yield epoch, slice(start, min(start + config.batch_size, bounds[epoch + 1]))


class ViewLabeller:
    """Renders views (e, i) and runs the teacher on them, in flat-index order."""

    def __init__(
        self,
        images: torch.Tensor,
        teacher: nn.Module,
        view: ViewConfig,
        config: RelabelConfig,
        num_classes: int,
        device: torch.device,
    ) -> None:
        self.images = images.to(device)
        self.teacher = teacher
        self.view = view
        self.config = config
        self.num_classes = num_classes
        self.device = device
        self.seconds = {"render": 0.0, "teacher": 0.0}
        self.count = 0

    @property
    def num_images(self) -> int:
        return len(self.images)

    def blocks(
        self, flat: torch.Tensor, progress: Callable[[int], None]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(flat (B,), logits (B, C) float32 CPU) for sorted flat indices."""
        m = self.num_images
        for epoch, part in view_batches(flat, m, self.config):
            block = flat[part]
            yield block, self.label(epoch, block - epoch * m)
            progress(len(block))

    def rows(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, C) float32 logits of sorted flat indices (N,), no progress."""
        parts = [r for _, r in self.blocks(flat, lambda n: None)]
        return torch.cat(parts) if parts else torch.empty(0, self.num_classes)

    @torch.inference_mode()
    def label(self, epoch: int, index: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        views, _ = make_views(
            self.images,
            index,
            seed=self.config.seed,
            epoch=epoch,
            config=self.view,
            device=self.device,
        )
        t1 = time.perf_counter()
        try:
            logits = self.teacher(views)
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as exc:
            raise InputError(
                f"the teacher cannot run on views of shape {tuple(views.shape)} "
                f"(images {tuple(self.images.shape[1:])}): {exc}; check the image "
                "size and channels the teacher expects"
            ) from exc
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise CodecMismatchError(
                f"the teacher outputs {tuple(logits.shape)} for {len(index)} views, "
                f"but the image set has {self.num_classes} classes; use a teacher "
                "with one output per class, in the set's class order"
            )
        out = logits.float().cpu()
        self.seconds["render"] += t1 - t0
        self.seconds["teacher"] += time.perf_counter() - t1
        self.count += len(index)
        return out


# ---------------------------------------------------------------- planning


def relabel_metadata(
    image_set: ImageSet,
    images: torch.Tensor,
    config: RelabelConfig,
    view: ViewConfig,
    teacher_id: str,
) -> ArchiveMetadata:
    """The archive metadata of a relabel run: set fingerprint, teacher, view recipe."""
    num_views = config.epochs * len(images)
    record = {
        "protocol": PROTOCOL,
        "epochs": config.epochs,
        "num_images": len(images),
        "image_shape": list(images.shape[1:]),
        "seed": config.seed,
        "view": view.model_dump(mode="json"),
        "augmentation": "explicit" if config.store_augmentations else "replayed",
        "augmentation_bytes_replayed": 0,
        "augmentation_bytes_explicit": explicit_param_bytes(num_views, view.mix),
    }
    return ArchiveMetadata(
        class_names=tuple(image_set.class_names),
        dataset_fingerprint=image_set.fingerprint,
        teacher=teacher_id,
        user={RELABEL_KEY: record},
    )


def explicit_records(
    images: torch.Tensor, config: RelabelConfig, view: ViewConfig
) -> dict[str, torch.Tensor]:
    """Explicit parameters of all E * M views in flat order (side tensors)."""
    index = torch.arange(len(images))
    parts: dict[str, list[torch.Tensor]] = {}
    for epoch in range(config.epochs):
        params = sample_view_params(
            images, index, seed=config.seed, epoch=epoch, config=view
        )
        for name, t in explicit_params(params, view.mix).items():
            parts.setdefault(AUGMENT_PREFIX + name, []).append(t)
    return {name: torch.cat(ts) for name, ts in parts.items()}


@dataclass
class _Job:
    """One output on its way to disk."""

    out: RelabelOutput
    plan: PrunePlan | None
    side: dict[str, torch.Tensor]
    fit_flat: torch.Tensor  # sorted flat indices of the views it is fitted on
    metadata: ArchiveMetadata  # the run's, plus the auto record when auto chose
    codec: Codec | None = None
    auto: AutoChoice | None = None


def _stored_flat(plan: PrunePlan | None, num_views: int) -> torch.Tensor:
    if plan is None:
        return torch.arange(num_views, dtype=torch.int64)
    return plan.kept_indices()


def plan_output(
    out: RelabelOutput,
    layout: Layout,
    num_classes: int,
    metadata: ArchiveMetadata,
    records: dict[str, torch.Tensor],
    config: RelabelConfig,
) -> _Job:
    """Codec, prune plan and side bytes of one output (raises if its target is unreachable)."""
    mix = str(metadata.user[RELABEL_KEY]["view"]["mix"])
    side_per_view = explicit_param_bytes(1, mix) if records else 0
    plan: PrunePlan | None = None
    if out.keep_fraction is not None:
        plan = PrunePlan(layout.dims, layout.shape, out.keep_fraction, out.prune_seed)
    elif out.auto_prune:
        goal = out.goal
        assert goal is not None  # RelabelOutput: auto_prune needs a target
        plan = auto_prune_plan(
            out.codec,
            ArchiveTarget(
                goal,
                layout,
                num_classes,
                config.chunk_size,
                metadata=metadata,
                side_bytes=side_entry_bytes(records),
            ),
            side_bytes_per_label=side_per_view,
            seed=out.prune_seed,
            options=with_num_images(out.codec, out.options, int(layout.shape[1])),
        )
    stored = _stored_flat(plan, layout.num_labels)
    side = {name: t[stored] for name, t in records.items()}
    if len(stored) > config.fit_views:
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + out.prune_seed)
        pick = torch.randperm(len(stored), generator=g)[: config.fit_views]
        fit_flat = stored[pick].sort().values
    else:
        fit_flat = stored
    return _Job(out, plan, side, fit_flat, metadata)


# ---------------------------------------------------------------- fitting, writing


def fit_output(
    job: _Job,
    rows: torch.Tensor,
    layout: Layout,
    num_classes: int,
    metadata: ArchiveMetadata,
    config: RelabelConfig,
) -> Codec:
    """Fit the job's codec on ``rows`` (its sample's logits), meeting its target."""
    out = job.out
    num_stored = job.plan.num_kept if job.plan is not None else layout.num_labels

    def source() -> Iterator[torch.Tensor]:
        for start in range(0, rows.shape[0], _FIT_BATCH):
            yield rows[start : start + _FIT_BATCH]

    options = with_num_images(out.codec, out.options, int(layout.shape[1]))
    context = None
    if codec_class(out.codec).needs_context:  # view context of the fit sample
        context = recipe_context(
            metadata.user, layout.dims, layout.shape, job.fit_flat, error=ConfigError
        )
    side = sum(t.numel() * t.element_size() for t in job.side.values())
    target = ArchiveTarget.of(
        out.goal,
        layout,
        num_classes,
        config.chunk_size,
        prune=job.plan,
        metadata=metadata,
        side_bytes=side + side_entry_bytes(job.side),
    )
    return fit_codec(
        out.codec,
        source,
        options,
        num_labels=num_stored,
        target=target,
        context=context,
    )


def _gather(
    cache_flat: torch.Tensor, cache_rows: torch.Tensor, flat: torch.Tensor
) -> torch.Tensor:
    return cache_rows[torch.searchsorted(cache_flat, flat)]


def _union(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.unique(torch.cat(list(parts))) if parts else torch.empty(0)


def _write(
    jobs: list[_Job],
    blocks: Iterator[tuple[torch.Tensor, torch.Tensor]],
    layout: Layout,
    metadata: ArchiveMetadata,
    config: RelabelConfig,
) -> list[StorageAccount]:
    with ExitStack() as stack:
        writers = []
        for job in jobs:
            assert job.codec is not None
            writer = ArchiveWriter(
                job.out.path,
                job.codec,
                layout=layout,
                chunk_size=config.chunk_size,
                prune=job.plan,
                metadata=job.metadata,
                side_tensors=job.side,
            )
            writers.append(stack.enter_context(writer))
        for flat, logits in blocks:
            for job, writer in zip(jobs, writers, strict=True):
                if job.plan is None:
                    writer.write(logits)
                    continue
                keep = job.plan.is_kept(flat)
                if bool(keep.any()):
                    writer.write_kept(logits[keep])
    accounts = []
    for writer in writers:
        assert writer.account is not None
        accounts.append(writer.account)
    return accounts


# ---------------------------------------------------------------- entry point


def relabel(
    image_set: ImageSet,
    teacher: nn.Module,
    outputs: Sequence[RelabelOutput],
    config: RelabelConfig | None = None,
    *,
    teacher_id: str | None = None,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
) -> RelabelResult:
    """Label E views of every image with the teacher and write compressed archives.

    Args:
        image_set: a DistilledSet (or any :class:`ImageSet`): images (M, ch, H, W)
            in 0..255, class names in the teacher's class order, a fingerprint.
        teacher: takes (B, ch, h, w) float views in 0..255, returns (B, C) logits;
            put in eval mode here.
        outputs: the archives to write (one teacher pass feeds them all).
        config: epochs, seed, view recipe, batch and fitting bounds.
        teacher_id: recorded in the archives; default class name + weight hash.
        device: where views are rendered and the teacher runs (default: the
            teacher's device).
        progress: ``progress(done, total)`` in teacher-labelled views.

    Returns:
        A :class:`RelabelResult` with each archive's all-in account.

    Raises:
        InputError: images not (M, ch, H, W), or the teacher fails on them.
        CodecMismatchError: the teacher's class count differs from the set's.
        ConfigError / UnreachableTargetError: bad outputs or unreachable targets.

    Example:
        >>> out = RelabelOutput(path="labels.lz", codec="topk", ratio=10)
        >>> relabel(distilled, teacher, [out], RelabelConfig(epochs=30))
    """
    config = config or RelabelConfig()
    outputs = list(outputs)
    if not outputs:
        raise ConfigError("relabel needs at least one output archive")
    paths = [o.path.resolve() for o in outputs]
    if len(set(paths)) != len(paths):
        raise ConfigError("two relabel outputs write the same file")
    images = check_image_tensor(image_set.images, "distilled images")
    if device is None:
        device = next(iter(teacher.parameters()), torch.empty(0)).device
    device = torch.device(device)
    teacher.eval()
    start = time.perf_counter()
    num_classes = len(image_set.class_names)
    view = config.view or default_view_config(*images.shape[-2:])
    layout = Layout(LAYOUT_DIMS, (config.epochs, len(images)))
    metadata = relabel_metadata(
        image_set, images, config, view, teacher_id or model_id(teacher)
    )
    records = (
        explicit_records(images, config, view) if config.store_augmentations else {}
    )
    labeller = ViewLabeller(images, teacher, view, config, num_classes, device)
    jobs = []  # codec 'auto': measured on the teacher's labels of a sample first
    for out, meta, choice in resolve_auto_outputs(
        outputs, labeller.rows, layout, num_classes, metadata, config
    ):
        job = plan_output(out, layout, num_classes, meta, records, config)
        job.auto = choice
        jobs.append(job)
    return _run(jobs, labeller, layout, metadata, config, device, progress, start)


def _needed(jobs: list[_Job], num_views: int) -> torch.Tensor:
    """Sorted flat indices of the views some archive stores a label for."""
    if any(job.plan is None for job in jobs):
        return torch.arange(num_views, dtype=torch.int64)
    return _union([_stored_flat(job.plan, num_views) for job in jobs])


def _run(
    jobs: list[_Job],
    labeller: ViewLabeller,
    layout: Layout,
    metadata: ArchiveMetadata,
    config: RelabelConfig,
    device: torch.device,
    progress: ProgressFn | None,
    start: float,
) -> RelabelResult:
    needed = _needed(jobs, layout.num_labels)
    single = len(needed) <= config.fit_views
    fit_flat = needed if single else _union([job.fit_flat for job in jobs])
    total = len(needed) + (0 if single else len(fit_flat))
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    pairs = list(labeller.blocks(fit_flat, advance))
    cache_flat = torch.cat([f for f, _ in pairs])
    cache_rows = torch.cat([r for _, r in pairs])
    del pairs
    t_fit = time.perf_counter()
    for job in jobs:
        rows = _gather(cache_flat, cache_rows, job.fit_flat)
        job.codec = fit_output(
            job, rows, layout, labeller.num_classes, job.metadata, config
        )
    seconds = {"fit": time.perf_counter() - t_fit}
    if single:  # every needed label is in memory: write from there
        size = config.batch_size
        blocks: Iterator[tuple[torch.Tensor, torch.Tensor]] = (
            (cache_flat[s : s + size], cache_rows[s : s + size])
            for s in range(0, len(cache_flat), size)
        )
    else:
        del cache_flat, cache_rows
        blocks = labeller.blocks(needed, advance)
    t_write, labelling = time.perf_counter(), sum(labeller.seconds.values())
    accounts = _write(jobs, blocks, layout, metadata, config)
    labelling = sum(labeller.seconds.values()) - labelling
    seconds["write"] = max(time.perf_counter() - t_write - labelling, 0.0)
    seconds.update(labeller.seconds, total=time.perf_counter() - start)
    return relabel_result(jobs, accounts, labeller, layout, config, single, seconds)


def _with_rate_note(job: _Job, account: StorageAccount) -> StorageAccount:
    """``account`` with the note :func:`~labelzip.rate.rate_note` gives for the job's target."""
    goal = job.out.goal
    if job.codec is None or goal is None:
        return account
    return dataclasses.replace(account, rate_note=rate_note(account, job.codec, goal))


def relabel_result(
    jobs: list[_Job],
    accounts: list[StorageAccount],
    labeller: ViewLabeller,
    layout: Layout,
    config: RelabelConfig,
    single: bool,
    seconds: dict[str, float],
) -> RelabelResult:
    archives = [
        RelabelledArchive(
            name=job.out.label,
            path=job.out.path,
            account=_with_rate_note(job, account),
            keep_per_image=job.plan.keep_per_group if job.plan else config.epochs,
            codec_config=job.codec.to_config() if job.codec else {},
            auto=job.auto,
        )
        for job, account in zip(jobs, accounts, strict=True)
    ]
    return RelabelResult(
        archives=archives,
        num_views=layout.num_labels,
        num_classes=labeller.num_classes,
        teacher_views=labeller.count,
        single_pass=single,
        side_bytes_replayed=0,
        side_bytes_explicit=explicit_param_bytes(layout.num_labels, labeller.view.mix),
        seconds=seconds,
    )
