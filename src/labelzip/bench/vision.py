"""Vision distillation benchmark: students trained from compressed labels, per framework.

For every (framework, IPC) the teacher labels E views of every distilled image
once (:func:`~labelzip.pipelines.relabel.relabel`: one teacher pass feeds every
archive), into a dense fp16 archive and one archive per (codec, target ratio);
one student is trained per archive (the quickstart's students: replayed views,
decoded labels, KD). Rows carry test accuracy, retention (accuracy over the
dense-label student of the same framework and IPC), the all-in ratio against
dense fp16 labels and against the framework's *shipped* labels (dense for
SRe2L/CDA/RDED/random, 40x-pruned for LPLD, so an LPLD row at 1200x all-in is
30x beyond what LPLD ships, as the paper counts its "30-40x additional
compression"), the bytes of labels (the archive file) and of the distilled
images (the storage module's image model), and KL(dense || decoded).

Credibility: the teacher's test accuracy and a full-data baseline (the same
student architecture trained with hard labels on the whole real training set
for a few epochs) are reported beside the dense-label students.

A (codec, ratio) that cannot be met even with LPLD-style pruning (one view per
image) is a skipped row carrying the :class:`UnreachableTargetError` message.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from labelzip.archive import ArchiveMetadata, Layout
from labelzip.augment import ViewConfig, make_views
from labelzip.codecs.registry import codec_class
from labelzip.data.base import ImageDataset
from labelzip.errors import InputError, UnreachableTargetError
from labelzip.outputs import atomic_path, write_text
from labelzip.pipelines.imageset import ImageSet, check_image_tensor
from labelzip.pipelines.quickstart import (
    ROW_SPECS,
    QuickstartConfig,
    QuickstartRow,
    build_distilled_set,
    prepare_teacher,
    quickstart_view_config,
    train_students,
    with_input_stats,
)
from labelzip.pipelines.relabel import (
    LAYOUT_DIMS,
    RelabelConfig,
    RelabelOutput,
    plan_output,
    relabel,
    relabel_metadata,
)
from labelzip.pipelines.students import build_student
from labelzip.pipelines.train_student import StudentConfig, evaluate_student
from labelzip.rate import ArchiveTarget, RateGoal, configure_codec
from labelzip.rate.target import RateValue
from labelzip.selection.auto import AUTO
from labelzip.selection.config import AutoConfig
from labelzip.storage import (
    StorageRow,
    custom_dataset,
    format_bytes,
    image_bytes_per_image,
    storage_table,
)
from labelzip.storage.datasets import DatasetSpec
from labelzip.storage.frameworks import DEFAULT_PRUNE_RATIO

__all__ = [
    "CONTEXT_DATASET",
    "CONTEXT_IPCS",
    "DEFAULT_VISION_CODECS",
    "FRAMEWORKS",
    "SHIPPED_LABEL_RATIO",
    "VisionBenchConfig",
    "VisionBenchRow",
    "full_data_baseline",
    "markdown_report",
    "run_vision_bench",
    "setting_quickstart_config",
    "setting_relabel_config",
    "shipped_ratio",
    "write_report",
]

logger = logging.getLogger(__name__)

# Compressed rows of the default run (dense always runs: it is the reference):
# auto (measured codec and view budget), the VQAE family (vqae, the view-context
# vqae-ctx and ctx-transform) and the paper's baselines, with LPLD-style
# auto-pruning where the row's spec asks for it.
DEFAULT_VISION_CODECS: tuple[str, ...] = (
    "auto",
    "vqae",
    "vqae-ctx",
    "ctx-transform",
    "topk-ms",
    "topk-mrs",
    "lpld",
    "rskd",
)

# All-in ratio vs dense fp16 of the labels each framework ships: LPLD keeps 1/40
# of the views as dense logits (its headline setting); the others ship every
# view's dense logits. Side information and containers are not counted here:
# the storage table reports them.
SHIPPED_LABEL_RATIO: dict[str, float] = {"lpld": DEFAULT_PRUNE_RATIO["lpld"]}

# The storage table's context setting: the paper's ImageNet-1K, 300 views/image.
CONTEXT_DATASET = "imagenet-1k"
CONTEXT_IPCS: tuple[int, ...] = (10, 50)
CONTEXT_EPOCHS = 300

LogFn = Callable[[str], None]

# Distillation methods that build a set from the training data or the teacher.
FRAMEWORKS: tuple[str, ...] = ("random", "sre2l", "cda", "lpld", "rded")


def shipped_ratio(framework: str) -> float:
    """All-in ratio vs dense fp16 of the labels ``framework`` ships (1 if dense)."""
    return SHIPPED_LABEL_RATIO.get(framework, 1.0)


class VisionBenchConfig(BaseModel):
    """What the benchmark distils, compresses and trains (defaults: the issue's spec)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    frameworks: tuple[str, ...] = Field(
        default=("random", "sre2l", "rded", "lpld"),
        min_length=1,
        description="distillation methods (labelzip.distill.METHODS)",
    )
    ipcs: tuple[int, ...] = Field(
        default=(10, 50), min_length=1, description="images per class"
    )
    settings: tuple[tuple[str, int], ...] = Field(
        default=(),
        description="explicit (framework, IPC) pairs run instead of frameworks x ipcs",
    )
    codecs: tuple[str, ...] = Field(
        default=DEFAULT_VISION_CODECS,
        description="compressed rows, quickstart ROW_SPECS names (dense always runs)",
    )
    ratios: tuple[RateValue, ...] = Field(
        default=(10.0, 40.0, 100.0, 300.0),
        min_length=1,
        description="all-in target ratios vs dense fp16 labels",
    )
    epochs: int = Field(
        default=300, ge=1, le=100_000, description="relabel epochs (views per image)"
    )
    epochs_per_ipc: dict[int, int] = Field(
        default_factory=dict, description="IPC -> relabel epochs, overriding epochs"
    )
    student: StudentConfig = Field(
        default_factory=lambda: StudentConfig(batch_size=50, lr=1e-2),
        description="student settings (epochs None: the relabel epochs)",
    )
    student_seeds: int = Field(
        default=1,
        ge=1,
        le=100,
        description="students per archive (seeds student.seed, +1, ...); accuracy "
        "and retention are their mean",
    )
    archive_seeds: int = Field(
        default=1,
        ge=1,
        le=32,
        description="archives per compressed (codec, ratio), written with prune "
        "seeds 0, 1, ...: other kept views and fit samples (auto: its own sample) "
        "at the same target. Their students' spread is noise one archive hides; "
        "the report adds each group's mean and standard error across archives",
    )
    teacher_arch: str = Field(default="convnet", description="small teacher arch")
    teacher_epochs: int = Field(default=3, ge=1, le=100, description="teacher epochs")
    seed: int = Field(default=0, ge=0, description="seed of sets, views and students")
    distill_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="framework -> distillation options"
    )
    view: ViewConfig | None = Field(
        default=None, description="view recipe; default the quickstart's at image size"
    )
    fit_views: int = Field(default=16384, ge=1, description="labels codecs fit on")
    baseline_epochs: int = Field(
        default=2, ge=0, le=1000, description="full-data baseline epochs (0: skip)"
    )
    baseline_batch_size: int = Field(default=128, ge=1, description="baseline batch")
    baseline_lr: float = Field(default=3e-3, gt=0, le=10.0, description="baseline LR")
    image_format: str = Field(
        default="jpeg",
        description="storage module image model: jpeg, raw, png-estimate",
    )

    @field_validator("frameworks")
    @classmethod
    def _known_frameworks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [n for n in value if n not in FRAMEWORKS]
        if unknown:
            raise ValueError(
                f"unknown frameworks {unknown}; choose from {list(FRAMEWORKS)}"
            )
        return value

    @field_validator("settings")
    @classmethod
    def _known_settings(
        cls, value: tuple[tuple[str, int], ...]
    ) -> tuple[tuple[str, int], ...]:
        bad = [(f, i) for f, i in value if f not in FRAMEWORKS or i < 1]
        if bad:
            raise ValueError(
                f"bad settings {bad}: frameworks from {list(FRAMEWORKS)}, IPC >= 1"
            )
        return value

    @field_validator("ipcs")
    @classmethod
    def _positive_ipcs(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(i < 1 for i in value):
            raise ValueError(f"ipcs must be >= 1, got {list(value)}")
        return value

    @field_validator("codecs")
    @classmethod
    def _known_codecs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [n for n in value if n not in ROW_SPECS]
        if unknown:
            raise ValueError(f"unknown codecs {unknown}; choose from {list(ROW_SPECS)}")
        return tuple(n for n in value if n != "dense")

    @field_validator("ratios")
    @classmethod
    def _ratios_above_one(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        bad = [r for r in value if not r > 1.0]
        if bad:
            raise ValueError(f"ratios must be > 1, got {bad}")
        return value

    def pairs(self) -> list[tuple[str, int]]:
        """The (framework, IPC) settings run, in order."""
        if self.settings:
            return list(self.settings)
        return [(f, i) for f in self.frameworks for i in self.ipcs]

    def epochs_for(self, ipc: int) -> int:
        """Relabel epochs (views per image) at ``ipc``."""
        return self.epochs_per_ipc.get(ipc, self.epochs)


@dataclass(frozen=True)
class VisionBenchRow:
    """One student: how its labels were stored and how well it learned."""

    framework: str
    ipc: int
    codec: str  # quickstart row name ("dense", "vqae", "lpld", ...)
    target_ratio: float | None  # None for the dense reference
    ratio: float  # all-in (file size) vs dense fp16 logits of every view
    ratio_vs_shipped: float  # vs the framework's shipped labels (LPLD: 40x-pruned)
    accuracy: float
    retention: float  # accuracy / dense-label accuracy (same framework and IPC)
    label_bytes: int  # the archive file
    image_bytes: int  # the distilled images (storage module image model)
    bits_per_label: float  # all-in, per consumed view
    views_kept: float  # share of views whose label is stored
    kl: float  # mean KL(dense || decoded) at the student's temperature
    decode_share: float
    train_seconds: float
    accuracies: tuple[float, ...] = ()  # one per student seed; accuracy is the mean
    archive_seed: int = 0  # the archive's prune seed (config.archive_seeds > 1)

    @property
    def total_bytes(self) -> int:
        return self.label_bytes + self.image_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "accuracies": list(self.accuracies),  # JSON round trips to a list
            "total_bytes": self.total_bytes,
        }


def _log(log: LogFn | None, message: str) -> None:
    logger.info(message)
    if log is not None:
        log(message)


def _row_name(codec: str, ratio: float) -> str:
    return f"{codec}@{ratio:g}x"


def _dataset_spec(train_set: ImageDataset) -> DatasetSpec:
    images = check_image_tensor(train_set.images, "training images")
    _, channels, height, width = images.shape
    if height != width:
        raise InputError(
            f"the storage model needs square images, got {height}x{width}; "
            "resize the dataset"
        )
    name = train_set.name.split("/")[0] or "custom"
    return custom_dataset(train_set.num_classes, int(height), int(channels), name)


# ------------------------------------------------------------- the full-data baseline


def full_data_baseline(
    train_set: ImageDataset,
    test_set: ImageSet,
    student: StudentConfig,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The student architecture trained with hard labels on all real images.

    AdamW + one-cycle, cross-entropy, crops of 85-100% and flips replayed from
    ``seed`` (the quickstart's view recipe without CutMix): the reference that
    says how much the distilled set plus soft labels lose against the real data.

    Returns:
        ``{"accuracy", "epochs", "images", "seconds"}``.
    """
    device = torch.device(device)
    images = check_image_tensor(train_set.images, "training images")
    h, w = images.shape[-2:]
    student = with_input_stats(student, train_set)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_student(
            student.arch,
            train_set.num_classes,
            images,
            (int(h), int(w)),
            width=student.width,
            depth=student.depth,
            mean=student.input_mean,
            std=student.input_std,
        ).to(device)
    view = ViewConfig(output_size=(int(h), int(w)), scale=(0.85, 1.0))
    steps = math.ceil(len(images) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps
    )
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=g)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            x, _ = make_views(
                images, idx, seed=seed, epoch=epoch, config=view, device=device
            )
            loss = F.cross_entropy(model(x), train_set.labels[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    accuracy = evaluate_student(model, test_set, device=device)
    return {
        "accuracy": accuracy,
        "epochs": epochs,
        "images": len(images),
        "seconds": time.perf_counter() - start,
    }


# ------------------------------------------------------------- one (framework, IPC)


def setting_quickstart_config(
    config: VisionBenchConfig, framework: str, ipc: int
) -> QuickstartConfig:
    """The quickstart config one (framework, IPC) of the benchmark runs with: its
    distillation, teacher, views and students (scripts that redo a setting use it
    to get the same sets and students)."""
    return QuickstartConfig(
        framework=framework,
        ipc=ipc,
        epochs=config.epochs_for(ipc),
        codecs=("dense",),
        teacher_arch=config.teacher_arch,
        teacher_epochs=config.teacher_epochs,
        seed=config.seed,
        distill_options=config.distill_options.get(framework, {}),
        view=config.view,
        fit_views=config.fit_views,
        student=config.student,
        student_seeds=config.student_seeds,
    )


def setting_relabel_config(
    config: VisionBenchConfig, qconfig: QuickstartConfig, image_set: ImageSet
) -> RelabelConfig:
    """The relabel config of one setting's distilled set (its view recipe)."""
    h, w = check_image_tensor(image_set.images, "distilled images").shape[-2:]
    return RelabelConfig(
        epochs=qconfig.epochs,
        seed=config.seed,
        view=config.view or quickstart_view_config(int(h), int(w)),
        fit_views=config.fit_views,
    )


def _reachable_outputs(
    config: VisionBenchConfig,
    setting: tuple[str, int],
    image_set: ImageSet,
    relabel_config: RelabelConfig,
    teacher_id: str,
    work: Path,
) -> tuple[
    list[RelabelOutput], dict[str, tuple[str, float, int]], list[dict[str, Any]]
]:
    """Dense plus every reachable (codec, ratio) output, once per archive seed;
    the rest as skipped rows.

    Plans each output exactly as :func:`relabel` will (same layout, metadata
    and auto-prune search), so an unreachable target is found before the
    teacher pass instead of failing it.
    """
    framework, ipc = setting
    images = check_image_tensor(image_set.images, "distilled images")
    layout = Layout(LAYOUT_DIMS, (relabel_config.epochs, len(images)))
    view = relabel_config.view
    assert view is not None
    metadata = relabel_metadata(image_set, images, relabel_config, view, teacher_id)
    num_classes = len(image_set.class_names)
    stem = f"{framework}_ipc{ipc}"
    outputs = [
        RelabelOutput(
            path=work / f"{stem}_dense.lz", name="dense", **ROW_SPECS["dense"]
        )
    ]
    names: dict[str, tuple[str, float, int]] = {}
    skipped: list[dict[str, Any]] = []
    for codec in config.codecs:
        for ratio in config.ratios:
            copies = [
                _seeded_output(codec, ratio, seed, config.archive_seeds, work / stem)
                for seed in range(config.archive_seeds)
            ]
            try:
                # the seed picks views and fit samples, never whether a target fits
                _check_reachable(
                    copies[0], layout, num_classes, metadata, relabel_config
                )
            except UnreachableTargetError as exc:
                skipped.append(
                    {
                        "framework": framework,
                        "ipc": ipc,
                        "codec": codec,
                        "target_ratio": ratio,
                        "reason": str(exc),
                    }
                )
                continue
            outputs += copies
            names.update({out.label: (codec, ratio, out.prune_seed) for out in copies})
    return outputs, names, skipped


def _seeded_output(
    codec: str, ratio: float, seed: int, seeds: int, stem: Path
) -> RelabelOutput:
    """The bench row ``codec`` at ``ratio`` written with prune seed ``seed`` (the
    seed named in file and row only when there are several)."""
    spec = dict(ROW_SPECS[codec])
    if isinstance(spec.get("auto"), AutoConfig):  # auto measures on its own sample
        spec["auto"] = spec["auto"].model_copy(update={"seed": seed})
    tag = f"_s{seed}" if seeds > 1 else ""
    name = _row_name(codec, ratio) + (f"#s{seed}" if seeds > 1 else "")
    return RelabelOutput(
        path=stem.with_name(f"{stem.name}_{codec}_{ratio:g}x{tag}.lz"),
        name=name,
        ratio=ratio,
        prune_seed=seed,
        **spec,
    )


def _check_reachable(
    out: RelabelOutput,
    layout: Layout,
    num_classes: int,
    metadata: ArchiveMetadata,
    relabel_config: RelabelConfig,
) -> None:
    """Raise UnreachableTargetError when relabel could not write ``out``.

    Auto-pruned outputs go through relabel's own planning (the LPLD search);
    the others through the codec's rate control at every view. ``auto`` is
    reachable when top-k (MS), one of its candidates, is at the views
    relabel's auto-prune rule keeps.
    """
    if out.codec == AUTO:
        out = RelabelOutput(path=out.path, ratio=out.ratio, **ROW_SPECS["topk-ms"])
    plan_output(out, layout, num_classes, metadata, {}, relabel_config)
    if out.auto_prune or out.ratio is None:
        return
    options = dict(out.options)
    if "num_images" in codec_class(out.codec).config_class.model_fields:
        options.setdefault("num_images", int(layout.shape[1]))
    goal = RateGoal(ratio=out.ratio)
    chunk = relabel_config.chunk_size
    target = ArchiveTarget(goal, layout, num_classes, chunk, metadata=metadata)
    configure_codec(out.codec, options, target)


def _bench_row(
    row: QuickstartRow,
    name: tuple[str, float | None, int],
    image_bytes: int,
) -> VisionBenchRow:
    codec, target, seed = name
    return VisionBenchRow(
        framework=row.framework,
        ipc=row.ipc,
        codec=codec,
        target_ratio=target,
        ratio=row.ratio,
        ratio_vs_shipped=row.ratio / shipped_ratio(row.framework),
        accuracy=row.accuracy,
        retention=row.retention,
        label_bytes=row.total_bytes,
        image_bytes=image_bytes,
        bits_per_label=row.bits_per_label,
        views_kept=row.views_kept,
        kl=row.kl,
        decode_share=row.decode_share,
        train_seconds=row.train_seconds,
        accuracies=row.accuracies,
        archive_seed=seed,
    )


def _run_setting(
    config: VisionBenchConfig,
    setting: tuple[str, int],
    *,
    teacher: tuple[torch.nn.Module, str],
    train_set: ImageDataset,
    test_set: ImageDataset,
    spec: DatasetSpec,
    work: Path,
    device: torch.device,
    log: LogFn | None,
) -> tuple[list[VisionBenchRow], list[dict[str, Any]], dict[str, Any]]:
    framework, ipc = setting
    model, teacher_id = teacher
    qconfig = setting_quickstart_config(config, framework, ipc)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    _log(log, f"[{framework} IPC {ipc}] distilling {ipc} images per class")
    image_set = build_distilled_set(
        qconfig, train_set, model, teacher_id, device, lambda *_: None
    )
    seconds["distill"] = time.perf_counter() - t0
    relabel_config = setting_relabel_config(config, qconfig, image_set)
    outputs, names, skipped = _reachable_outputs(
        config, setting, image_set, relabel_config, teacher_id, work
    )
    for item in skipped:
        _log(
            log,
            f"[{framework} IPC {ipc}] skipping {item['codec']} at "
            f"{item['target_ratio']:g}x: {item['reason']}",
        )
    t0 = time.perf_counter()
    _log(
        log,
        f"[{framework} IPC {ipc}] relabelling {qconfig.epochs} views x "
        f"{len(image_set.labels)} images into {len(outputs)} archives",
    )
    result = relabel(
        image_set,
        model,
        outputs,
        relabel_config,
        teacher_id=teacher_id,
        device=device,
    )
    seconds["relabel"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    student_epochs = config.student.epochs or qconfig.epochs
    done = [0]

    def report(stage: str, count: int, total: int) -> None:
        if stage == "students" and count % (student_epochs * config.student_seeds) == 0:
            done[0] += 1
            _log(
                log,
                f"[{framework} IPC {ipc}] student {done[0]}/{len(outputs)} trained "
                f"({time.perf_counter() - t0:.0f} s)",
            )

    student = with_input_stats(config.student, train_set)
    rows = train_students(qconfig, student, image_set, result, test_set, device, report)
    seconds["students"] = time.perf_counter() - t0
    num_images = len(image_set.labels)
    image_bytes = num_images * image_bytes_per_image(spec, config.image_format)
    out: list[VisionBenchRow] = []
    for row in rows:
        name: tuple[str, float | None, int] = names.get(row.codec, ("dense", None, 0))
        out.append(_bench_row(row, name, image_bytes))
    info = {
        "framework": framework,
        "ipc": ipc,
        "epochs": qconfig.epochs,
        "num_images": num_images,
        "num_views": result.num_views,
        "dense_fp16_bytes": result.num_views * result.num_classes * 2,
        "shipped_ratio": shipped_ratio(framework),
        "image_bytes": image_bytes,
        "relabel_seconds": result.seconds,
        "seconds": seconds,
    }
    return out, skipped, info


# ------------------------------------------------------------- entry point


def run_vision_bench(
    config: VisionBenchConfig,
    *,
    train_set: ImageDataset,
    test_set: ImageDataset,
    work_dir: str | Path,
    device: torch.device | str = "cpu",
    cache_dir: Path | None = None,
    teacher: tuple[torch.nn.Module, str] | None = None,
    log: LogFn | None = None,
) -> dict[str, Any]:
    """Teacher, then per (framework, IPC): distil, relabel once, one student per archive.

    Args:
        config: frameworks, IPCs, codecs, ratios, epochs, student settings.
        train_set: real training images (teacher, random subset, RDED, baseline).
        test_set: real test images (every accuracy).
        work_dir: where the archives are written (kept).
        device: where everything runs.
        cache_dir: teacher cache folder (default ``~/.cache/labelzip/teachers``).
        teacher: (model, id) of a ready teacher taking 0..255 images (e.g. the
            EfficientNet-Lite0 for ImageNet); default: the small teacher of
            ``config.teacher_arch`` trained on ``train_set`` (cached).
        log: called with one line per stage and per trained student.

    Returns:
        The JSON-able report: ``teacher``, ``full_data_baseline``, ``settings``,
        ``rows``, ``skipped``, ``storage`` and ``seconds``.
    """
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    start = time.perf_counter()
    spec = _dataset_spec(train_set)
    pairs = config.pairs()
    first = setting_quickstart_config(config, *pairs[0])
    if teacher is None:
        _log(log, f"teacher: {config.teacher_arch}, {config.teacher_epochs} epochs")
        model, teacher_id, teacher_acc, cached = prepare_teacher(
            first, train_set, test_set, device, cache_dir
        )
    else:
        model, teacher_id = teacher
        model.to(device).eval()
        teacher_acc = evaluate_student(model, test_set, device=device)
        cached = False
    _log(log, f"teacher test accuracy {100 * teacher_acc:.2f}%")
    baseline: dict[str, Any] | None = None
    if config.baseline_epochs:
        _log(log, f"full-data baseline: {config.baseline_epochs} epochs, hard labels")
        baseline = full_data_baseline(
            train_set,
            test_set,
            config.student,
            epochs=config.baseline_epochs,
            batch_size=config.baseline_batch_size,
            lr=config.baseline_lr,
            seed=config.seed,
            device=device,
        )
        _log(log, f"full-data baseline accuracy {100 * baseline['accuracy']:.2f}%")
    rows: list[VisionBenchRow] = []
    skipped: list[dict[str, Any]] = []
    settings: list[dict[str, Any]] = []
    for pair in pairs:
        got, skip, info = _run_setting(
            config,
            pair,
            teacher=(model, teacher_id),
            train_set=train_set,
            test_set=test_set,
            spec=spec,
            work=work,
            device=device,
            log=log,
        )
        rows += got
        skipped += skip
        settings.append(info)
    return {
        "dataset": {
            "name": spec.name,
            "num_classes": spec.num_classes,
            "resolution": spec.resolution,
            "channels": spec.channels,
            "train_images": len(train_set),
            "test_images": len(test_set),
        },
        "config": config.model_dump(mode="json"),
        "teacher": {
            "id": teacher_id,
            "accuracy": teacher_acc,
            "from_cache": cached,
        },
        "full_data_baseline": baseline,
        "shipped_ratios": {f: shipped_ratio(f) for f, _ in pairs},
        "settings": settings,
        "rows": [row.to_dict() for row in rows],
        "archive_summary": archive_seed_summary([row.to_dict() for row in rows]),
        "skipped": skipped,
        "storage": [r.to_dict() for r in _storage_rows(config, spec, settings)],
        "seconds": time.perf_counter() - start,
    }


# ------------------------------------------------------------- storage context


def _storage_rows(
    config: VisionBenchConfig, spec: DatasetSpec, settings: Sequence[dict[str, Any]]
) -> list[StorageRow]:
    """Images + labels per framework and per target ratio, from the storage module.

    This run's dataset at each IPC and its epochs, and ImageNet-1K at IPC 10/50
    with 300 views per image. labelzip rows assume an archive that exactly
    meets the target (rate control counts every byte): dense fp16 / ratio.
    """
    seen: set[int] = set()
    cells: list[tuple[DatasetSpec | str, int, int]] = []
    for info in settings:
        if info["ipc"] not in seen:
            seen.add(info["ipc"])
            cells.append((spec, info["ipc"], info["epochs"]))
    cells += [(CONTEXT_DATASET, ipc, CONTEXT_EPOCHS) for ipc in CONTEXT_IPCS]
    rows: list[StorageRow] = []
    for dataset, ipc, epochs in cells:
        base = storage_table(
            dataset=dataset,
            framework=["sre2l", "lpld"],
            ipc=ipc,
            epochs=epochs,
            image_format=config.image_format,
        )
        rows += base
        num_classes = base[0].num_classes
        for ratio in config.ratios:
            (row,) = storage_table(
                dataset=dataset,
                framework="labelzip",
                ipc=ipc,
                epochs=epochs,
                image_format=config.image_format,
                codec_bits_per_label=16.0 * num_classes / ratio,
                codec_model_bytes=0,
                codec_header_bytes=0,
            )
            # the seed is inside the all-in budget: no side bytes on top
            rows.append(replace(row, framework=f"labelzip@{ratio:g}x", side_bytes=0))
    return rows


# ------------------------------------------------------------- reports


def archive_seed_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each (framework, IPC, codec, target) written with several archive seeds:
    the mean over its archives, each archive's mean accuracy, and the standard
    error of the mean across archives (their spread holds both the students'
    and the archives' noise; a single archive's student seeds see only the
    first).

    Rows are report rows (:meth:`VisionBenchRow.to_dict`; ``kl`` may be
    absent: the group's is then None); groups keep the rows' order, and a
    group of one archive is left out.
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        key = (row["framework"], row["ipc"], row["codec"], row["target_ratio"])
        groups.setdefault(key, []).append(row)
    out: list[dict[str, Any]] = []
    for (framework, ipc, codec, target), group in groups.items():
        if len(group) < 2:
            continue
        means = [float(r["accuracy"]) for r in group]
        spread = statistics.stdev(means) / math.sqrt(len(means))
        out.append(
            {
                "framework": framework,
                "ipc": ipc,
                "codec": codec,
                "target_ratio": target,
                "archive_seeds": [int(r.get("archive_seed", 0)) for r in group],
                "archive_accuracies": means,
                "accuracy": statistics.fmean(means),
                "accuracy_se": spread,
                "retention": statistics.fmean(float(r["retention"]) for r in group),
                "ratio": statistics.fmean(float(r["ratio"]) for r in group),
                "views_kept": [float(r["views_kept"]) for r in group],
                "kl": None
                if any(r.get("kl") is None for r in group)
                else statistics.fmean(float(r["kl"]) for r in group),
            }
        )
    return out


def _summary_lines(report: dict[str, Any], framework: str, ipc: int) -> list[str]:
    """The archive-seed table of one setting (none with one archive per row)."""
    groups = [
        g
        for g in report.get("archive_summary") or ()
        if g["framework"] == framework and g["ipc"] == ipc
    ]
    if not groups:
        return []
    lines = [
        "",
        "Across archive seeds (the rows above with prune seeds "
        f"{', '.join(str(s) for s in groups[0]['archive_seeds'])}: other kept "
        "views and fit samples at the same target; SE: standard error of the "
        "mean across the archives' means):",
        "",
        "| labels | target | archives | all-in vs fp16 | views kept | KL@T "
        "| accuracy (each archive) | SE | retention |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        kept = sorted({round(100 * v, 1) for v in g["views_kept"]})
        each = " / ".join(f"{100 * a:.1f}" for a in g["archive_accuracies"])
        lines.append(
            f"| {g['codec']} | {g['target_ratio']:g}x | "
            f"{len(g['archive_accuracies'])} | {g['ratio']:.1f}x | "
            f"{' / '.join(f'{v:g}%' for v in kept)} | "
            f"{'-' if g['kl'] is None else format(g['kl'], '.3f')} | "
            f"{_pct(g['accuracy'])} ({each}) | {100 * g['accuracy_se']:.2f} | "
            f"{_pct(g['retention'])} |"
        )
    return lines


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def _accuracy_cell(row: dict[str, Any]) -> str:
    """The mean accuracy, and each student seed's when there are several."""
    each = row.get("accuracies") or ()
    if len(each) < 2:
        return _pct(row["accuracy"])
    return f"{_pct(row['accuracy'])} ({' / '.join(f'{100 * a:.1f}' for a in each)})"


def _table_rows(report: dict[str, Any], framework: str, ipc: int) -> list[str]:
    seeds = int(report["config"].get("archive_seeds", 1))
    lines = [
        "| labels | target | all-in vs fp16 | vs shipped | views kept | bits/label "
        "| labels | images | KL@T | accuracy | retention |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        if row["framework"] != framework or row["ipc"] != ipc:
            continue
        target = "-" if row["target_ratio"] is None else f"{row['target_ratio']:g}x"
        seeded = row["target_ratio"] is not None and seeds > 1
        label = (
            f"{row['codec']} (seed {row.get('archive_seed', 0)})"
            if seeded
            else row["codec"]
        )
        lines.append(
            f"| {label} | {target} | {row['ratio']:.1f}x | "
            f"{row['ratio_vs_shipped']:.2f}x | {100 * row['views_kept']:.1f}% | "
            f"{row['bits_per_label']:.2f} | {format_bytes(row['label_bytes'])} | "
            f"{format_bytes(row['image_bytes'])} | {row['kl']:.3f} | "
            f"{_accuracy_cell(row)} | {_pct(row['retention'])} |"
        )
    for item in report["skipped"]:
        if item["framework"] == framework and item["ipc"] == ipc:
            reason = item["reason"].replace("|", "/")
            lines.append(
                f"| {item['codec']} | {item['target_ratio']:g}x | skipped: {reason} "
                "| | | | | | | | |"
            )
    return lines


def _storage_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        "| dataset | IPC | views/image | labels | images | labels all-in | "
        "images + labels | label share | labels vs fp16 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["storage"]:
        total = row["total_bytes"]
        share = row["label_total_bytes"] / total if total else 0.0
        ratio = row["ratio_vs_dense"]
        lines.append(
            f"| {row['dataset']} | {row['ipc']} | {row['epochs']} | "
            f"{row['framework']} | {format_bytes(row['image_bytes'])} | "
            f"{format_bytes(row['label_total_bytes'])} | {format_bytes(total)} | "
            f"{100 * share:.1f}% | {'-' if ratio is None else f'{ratio:.1f}x'} |"
        )
    return lines


def markdown_report(report: dict[str, Any]) -> str:
    """One table per (framework, IPC), the references, and the storage table."""
    d = report["dataset"]
    teacher = report["teacher"]
    base = report["full_data_baseline"]
    lines = [
        f"# Vision benchmark: {d['name']} ({d['num_classes']} classes, "
        f"{d['resolution']} px, {d['test_images']:,} test images)",
        "",
        f"- Teacher ({teacher['id'].split(':')[0]}): {_pct(teacher['accuracy'])} "
        "test accuracy.",
    ]
    if base is not None:
        lines.append(
            f"- Full-data baseline (the student architecture, hard labels, all "
            f"{base['images']:,} training images, {base['epochs']} epochs): "
            f"{_pct(base['accuracy'])}."
        )
    lines += [
        "- all-in vs fp16: dense fp16 logits of every view over the archive file "
        "(header, model, payload). vs shipped: over the labels the framework ships "
        "(dense for SRe2L/CDA/RDED/random; LPLD keeps 1/40 of the views, so its "
        "shipped labels are 40x). Retention: accuracy over the dense-label "
        "student of the same framework and IPC. KL@T: KL(dense || decoded) at the "
        "student's temperature. Images: the storage module's image model.",
    ]
    for info in report["settings"]:
        fw, ipc = info["framework"], info["ipc"]
        lines += [
            "",
            f"## {fw}, IPC {ipc} ({info['num_images']} images x {info['epochs']} "
            f"views, dense fp16 {format_bytes(info['dense_fp16_bytes'])}, shipped "
            f"labels {info['shipped_ratio']:g}x)",
            "",
            *_table_rows(report, fw, ipc),
            *_summary_lines(report, fw, ipc),
        ]
    lines += [
        "",
        "## Storage: images + labels (storage module)",
        "",
        "sre2l/lpld: the frameworks' own files (dense fp16 logits, stored "
        "augmentation, torch.save containers). labelzip@Rx: an archive meeting R "
        "all-in (augmentation replayed from a seed inside the budget).",
        "",
        *_storage_lines(report),
    ]
    return "\n".join(lines) + "\n"


def write_report(
    report: dict[str, Any], out_dir: str | Path, stem: str = "vision_bench"
) -> list[Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    write_text(paths[0], json.dumps(report, indent=2, sort_keys=True) + "\n")
    write_text(paths[1], markdown_report(report))
    _plot(report, paths[2])
    return paths


def _panel(
    ax: Any,
    rows: Sequence[dict[str, Any]],
    codecs: Sequence[str],
    colors: dict[str, str],
    teacher_accuracy: float,
    baseline: dict[str, Any] | None,
) -> None:
    """One (framework, IPC): a line per codec (a target's archive seeds as their
    mean), references as horizontal lines."""
    for codec in codecs:
        by_target: dict[float, list[tuple[float, float]]] = {}
        for r in rows:
            if r["codec"] == codec:
                point = (r["ratio"], 100 * r["accuracy"])
                by_target.setdefault(r["target_ratio"], []).append(point)
        pts = sorted(
            (statistics.fmean(x for x, _ in p), statistics.fmean(y for _, y in p))
            for p in by_target.values()
        )
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, "o-", color=colors[codec], label=codec)
    for r in rows:
        if r["codec"] == "dense":
            ax.axhline(100 * r["accuracy"], ls="--", lw=0.9, c="gray", label="dense")
    ax.axhline(100 * teacher_accuracy, ls=":", lw=0.9, c="k", label="teacher")
    if baseline is not None:
        ax.axhline(
            100 * baseline["accuracy"], ls="-.", lw=0.9, c="tab:red", label="full data"
        )
    ax.set_xscale("log")
    ax.set_xlabel("all-in ratio vs dense fp16", fontsize=8)
    ax.set_ylabel("student test accuracy (%)", fontsize=8)
    ax.grid(True, which="major", lw=0.3)
    ax.tick_params(labelsize=7)


def _plot(report: dict[str, Any], path: Path) -> Path:
    """Accuracy vs all-in ratio (log x), one line per codec, a panel per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    settings = [(s["framework"], s["ipc"]) for s in report["settings"]]
    frameworks = list(dict.fromkeys(f for f, _ in settings))
    ipcs = list(dict.fromkeys(i for _, i in settings))
    width = max(6.4, 4.6 * len(ipcs))
    fig, axes = plt.subplots(
        len(frameworks),
        len(ipcs),
        figsize=(width, 3.4 * len(frameworks) + 0.8),
        squeeze=False,
        dpi=110,
    )
    codecs = sorted({r["codec"] for r in report["rows"] if r["codec"] != "dense"})
    colors = {c: f"C{i}" for i, c in enumerate(codecs)}
    targets = sorted(set(report["config"]["ratios"]))
    base = report["full_data_baseline"]
    for a, fw in enumerate(frameworks):
        for b, ipc in enumerate(ipcs):
            ax = axes[a][b]
            if (fw, ipc) not in settings:
                ax.set_visible(False)
                continue
            rows = [
                r for r in report["rows"] if r["framework"] == fw and r["ipc"] == ipc
            ]
            _panel(ax, rows, codecs, colors, report["teacher"]["accuracy"], base)
            ax.set_title(f"{fw}, IPC {ipc}", fontsize=9)
            ax.set_xlim(min(targets) / 1.6, max(targets) * 1.6)
            ax.set_xticks(targets)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
            ax.xaxis.set_minor_formatter(NullFormatter())
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7)
    fig.suptitle(f"labelzip vision benchmark: {report['dataset']['name']}", fontsize=10)
    legend_rows = math.ceil(len(labels) / 4) if handles else 0
    bottom = (0.25 + 0.2 * legend_rows) / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom, 1, 0.97))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
