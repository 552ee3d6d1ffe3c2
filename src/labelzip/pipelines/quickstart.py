"""The quickstart: the paper's experiment end to end on Fashion-MNIST, on a CPU.

Steps: train (or load from the cache) the ConvNet teacher; build a distilled
set (random real subset or SRe2L recovery) at IPC 10; relabel E views per image
(one teacher pass feeds every archive); store the labels densely (fp16, the
reference) and, at the same all-in ratio, with VQAE (``vqae-ctx``: predicted
from the replayed view's context; and plain ``vqae``) and the baselines (top-k
MS/MRS, LPLD pruning, RS-KD); train one student per archive from replayed views
and decoded labels; report test accuracy and retention (accuracy over the
dense-label student's).

Equal bytes: every compressed archive meets the same all-in target (header
included) through rate control. A codec that cannot meet it with a label for
every view (at 40x a 10-class label has 4 bits in all) keeps labels for fewer
views per image, LPLD-style, chosen by :func:`~labelzip.rate.auto_prune_plan`.

Why E = 300 views per image by default (SRe2L's relabel epochs): the archive
header (~2 KB) must be small against the budget. At IPC 10, E = 50 gives 5,000
labels, 100 KB of fp16 logits and a 2.5 KB budget at 40x: not even the header
fits. E = 300 gives a 15 KB budget.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from labelzip.archive import load_archive
from labelzip.augment import ViewConfig
from labelzip.data.base import ImageDataset
from labelzip.errors import ConfigError
from labelzip.ops.metrics import kl_divergence
from labelzip.outputs import atomic_path
from labelzip.pipelines.imageset import ImageSet, check_image_tensor
from labelzip.pipelines.relabel import (
    RelabelConfig,
    RelabelOutput,
    RelabelResult,
    relabel,
)
from labelzip.pipelines.replay import ReplayDataset, ViewCache
from labelzip.pipelines.train_student import StudentConfig, train_student

__all__ = [
    "DEFAULT_CODECS",
    "ROW_SPECS",
    "QuickstartConfig",
    "QuickstartResult",
    "QuickstartRow",
    "StageProgress",
    "build_distilled_set",
    "prepare_teacher",
    "quickstart_view_config",
    "run_quickstart",
    "train_students",
    "with_input_stats",
    "write_plot",
]

logger = logging.getLogger(__name__)

# Row name -> how its archive is made. ``ratio`` comes from the config (all but dense).
# vqae-ctx: labels predicted from the replayed view's context (per-image prototypes
# mixed like the view) plus a VQ residual, for every view; vqae-ctx-third: for a
# third of the views, more bits each. Their retention against plain vqae and
# top-k: docs/vqae-design.md, "Context prior".
ROW_SPECS: dict[str, dict[str, Any]] = {
    "dense": {"codec": "dense", "options": {"dtype": "fp16"}},
    "vqae-ctx-third": {"codec": "vqae-ctx", "keep_fraction": 1 / 3},
    "vqae-ctx": {"codec": "vqae-ctx"},
    "ctx-transform": {"codec": "ctx-transform", "auto_prune": True},
    "vqae": {"codec": "vqae", "auto_prune": True},
    "topk-ms": {
        "codec": "topk",
        "options": {"decoder": "ms", "k": 2},
        "auto_prune": True,
    },
    "topk-mr": {
        "codec": "topk",
        "options": {"decoder": "mr", "k": 2},
        "auto_prune": True,
    },
    "topk-mrs": {
        "codec": "topk",
        "options": {"decoder": "mrs", "k": 3},
        "auto_prune": True,
    },
    "lpld": {"codec": "dense", "options": {"dtype": "fp16"}, "auto_prune": True},
    "rskd": {"codec": "rskd", "auto_prune": True},
    # measured choice of codec and view budget (docs/auto.md); a bench row, not a
    # quickstart default (it labels a sample of the views once more)
    "auto": {"codec": "auto"},
}
DEFAULT_CODECS: tuple[str, ...] = tuple(n for n in ROW_SPECS if n != "auto")

StageProgress = Callable[[str, int, int], None]
"""``progress(stage, done, total)`` for the stages: teacher, distill, relabel, students."""


class QuickstartConfig(BaseModel):
    """Everything the quickstart decides; defaults finish in minutes on 2 cores."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    framework: str = Field(default="random", description="distillation method")
    ipc: int = Field(default=10, ge=1, le=10_000, description="images per class")
    epochs: int = Field(
        default=300, ge=1, le=10_000, description="relabel epochs (views per image)"
    )
    ratio: float = Field(
        default=40.0,
        gt=1.0,
        le=1e6,
        allow_inf_nan=False,
        description="all-in ratio of every compressed row",
    )
    codecs: tuple[str, ...] = Field(
        default=DEFAULT_CODECS, min_length=1, description="rows, from ROW_SPECS"
    )
    teacher_arch: str = Field(default="convnet", description="small teacher arch")
    teacher_epochs: int = Field(default=3, ge=1, le=100, description="teacher epochs")
    seed: int = Field(default=0, ge=0, description="seed of set, views and students")
    distill_options: dict[str, Any] = Field(
        default_factory=dict, description="options of the distillation method"
    )
    view: ViewConfig | None = Field(
        default=None,
        description="view recipe; default quickstart_view_config at the image size",
    )
    fit_views: int = Field(default=16384, ge=1, description="labels codecs fit on")
    student: StudentConfig = Field(
        default_factory=lambda: StudentConfig(batch_size=50, lr=1e-2),
        description="student training settings",
    )
    student_seeds: int = Field(
        default=1,
        ge=1,
        le=100,
        description="students per archive (seeds student.seed, +1, ...); rows "
        "report the mean accuracy (a student's seed alone moves it 2-7 points)",
    )


@dataclass(frozen=True)
class QuickstartRow:
    """One student: how its labels were stored and how well it learned."""

    framework: str
    ipc: int
    codec: str
    ratio: float  # all-in, vs dense fp16 logits
    accuracy: float
    retention: float  # accuracy / dense-label accuracy
    total_bytes: int
    bits_per_label: float
    views_kept: float  # fraction of views whose label is stored
    kl: float  # mean KL(teacher || decoded) at the student's temperature
    decode_share: float  # decoding time / training time
    train_seconds: float
    accuracies: tuple[float, ...] = ()  # one per student seed; accuracy is the mean

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracies": list(self.accuracies)}


@dataclass
class QuickstartResult:
    rows: list[QuickstartRow]
    teacher_accuracy: float
    teacher_from_cache: bool
    relabel: RelabelResult | None
    seconds: dict[str, float] = field(default_factory=dict)
    workdir: Path | None = None


def quickstart_view_config(height: int, width: int) -> ViewConfig:
    """Crops of 85-100% of the image, flip, CutMix: the recipe for 28 px images.

    SRe2L's crop scale 0.08-1 is tuned for 224 px ImageNet; on 28 px
    Fashion-MNIST it destroys most views, and 0.85-1 trained the best
    dense-label students (docs/bench-vision.md, "The teacher and the
    quickstart's student recipe at 28 px").
    """
    return ViewConfig(output_size=(height, width), scale=(0.85, 1.0), mix="cutmix")


def _outputs(config: QuickstartConfig, workdir: Path) -> list[RelabelOutput]:
    unknown = [name for name in config.codecs if name not in ROW_SPECS]
    if unknown:
        raise ConfigError(
            f"unknown quickstart rows {unknown}; choose from {list(ROW_SPECS)}"
        )
    names = ["dense", *[n for n in config.codecs if n != "dense"]]
    outputs = []
    for name in names:
        spec = dict(ROW_SPECS[name])
        if name != "dense":
            spec["ratio"] = config.ratio
        outputs.append(RelabelOutput(path=workdir / f"{name}.lz", name=name, **spec))
    return outputs


def prepare_teacher(
    config: QuickstartConfig,
    train_set: ImageDataset,
    test_set: ImageDataset,
    device: torch.device,
    cache_dir: Path | None,
) -> tuple[torch.nn.Module, str, float, bool]:
    """Train or load the cached small teacher; (model, id, test accuracy, from cache)."""
    from labelzip.teachers import evaluate_teacher, train_teacher

    trained = train_teacher(
        train_set,
        config.teacher_arch,
        config.teacher_epochs,
        0,
        device,
        cache_dir=cache_dir,
    )
    accuracy = evaluate_teacher(trained.model.cpu(), test_set)
    trained.model.to(device)
    return (
        trained.model,
        f"{config.teacher_arch}:{trained.key}",
        accuracy,
        trained.from_cache,
    )


def build_distilled_set(
    config: QuickstartConfig,
    train_set: ImageDataset,
    teacher: torch.nn.Module,
    teacher_id: str,
    device: torch.device,
    progress: StageProgress,
) -> ImageSet:
    """Distil the configured framework at the configured IPC with this teacher."""
    from labelzip.distill import distill

    return distill(
        config.framework,
        train_set,
        teacher,
        ipc=config.ipc,
        seed=config.seed,
        device=device,
        progress=lambda done, total: progress("distill", done, total),
        teacher_id=teacher_id,
        **config.distill_options,
    )


def _fidelity(dense_path: Path, path: Path, temperature: float) -> float:
    reference = load_archive(dense_path)
    decoded = load_archive(path)
    c = reference.shape[-1]
    kl = kl_divergence(reference.reshape(-1, c), decoded.reshape(-1, c), temperature)
    return float(kl.mean())


def run_quickstart(
    config: QuickstartConfig,
    *,
    train_set: ImageDataset,
    test_set: ImageDataset,
    workdir: Path,
    device: torch.device | str = "cpu",
    cache_dir: Path | None = None,
    progress: StageProgress | None = None,
) -> QuickstartResult:
    """Run teacher -> distilled set -> relabel -> archives -> students -> rows.

    Args:
        config: framework, IPC, epochs, target ratio, rows, seeds.
        train_set: real training images (teacher, random subset, RDED).
        test_set: real test images (accuracy of teacher and students).
        workdir: folder for the archives (must exist).
        device: where everything runs.
        cache_dir: teacher cache folder (default ``~/.cache/labelzip/teachers``).
        progress: ``progress(stage, done, total)``.

    Returns:
        One :class:`QuickstartRow` per codec, dense first.
    """
    report = progress or (lambda stage, done, total: None)
    device = torch.device(device)
    seconds: dict[str, float] = {}
    outputs = _outputs(config, workdir)
    t0 = time.perf_counter()
    report("teacher", 0, 1)
    teacher, teacher_id, teacher_acc, cached = prepare_teacher(
        config, train_set, test_set, device, cache_dir
    )
    report("teacher", 1, 1)
    seconds["teacher"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report("distill", 0, 1)
    image_set = build_distilled_set(
        config, train_set, teacher, teacher_id, device, report
    )
    report("distill", 1, 1)
    seconds["distill"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    h, w = check_image_tensor(image_set.images).shape[-2:]
    relabel_config = RelabelConfig(
        epochs=config.epochs,
        seed=config.seed,
        view=config.view or quickstart_view_config(h, w),
        fit_views=config.fit_views,
    )
    result = relabel(
        image_set,
        teacher,
        outputs,
        relabel_config,
        teacher_id=teacher_id,
        device=device,
        progress=lambda done, total: report("relabel", done, total),
    )
    seconds["relabel"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    student = with_input_stats(config.student, train_set)
    rows = train_students(config, student, image_set, result, test_set, device, report)
    seconds["students"] = time.perf_counter() - t0
    return QuickstartResult(rows, teacher_acc, cached, result, seconds, workdir)


def with_input_stats(student: StudentConfig, train_set: ImageDataset) -> StudentConfig:
    """Normalise students with the real training data's statistics.

    Synthetic sets (SRe2L) have other pixel statistics than the real test
    images; the real ones are what a practitioner has, and they trained better
    students (docs/bench-vision.md, "The teacher and the quickstart's student
    recipe at 28 px").
    """
    if student.input_mean is not None or not isinstance(train_set.images, torch.Tensor):
        return student
    flat = (
        train_set.images.float().transpose(0, 1).reshape(train_set.images.shape[1], -1)
    )
    mean = tuple(float(v) for v in flat.mean(dim=1))
    std = tuple(float(v) for v in flat.std(dim=1))
    return student.model_copy(update={"input_mean": mean, "input_std": std})


def train_students(
    config: QuickstartConfig,
    student_config: StudentConfig,
    image_set: ImageSet,
    result: RelabelResult,
    test_set: ImageDataset,
    device: torch.device,
    report: StageProgress,
) -> list[QuickstartRow]:
    """Students per archive (dense first: its mean accuracy is the reference)."""
    cache = ViewCache()  # all archives share the views of one relabel run
    dense_path = result.archives[0].path
    seeds = [student_config.seed + i for i in range(config.student_seeds)]
    total = (config.student.epochs or config.epochs) * len(result.archives) * len(seeds)
    done = [0]

    def tick(_: object) -> None:
        done[0] += 1
        report("students", done[0], total)

    rows: list[QuickstartRow] = []
    for archive in result.archives:
        accuracies: list[float] = []
        decode_share = train_seconds = 0.0
        for seed in seeds:
            replay = ReplayDataset(
                image_set, archive.path, device=device, view_cache=cache
            )
            student = train_student(
                replay,
                student_config.model_copy(update={"seed": seed}),
                test_set=test_set,
                on_epoch=tick,
            )
            replay.close()
            accuracies.append(student.accuracy if student.accuracy is not None else 0.0)
            decode_share = max(decode_share, student.decode_share)
            train_seconds += student.train_seconds
        accuracy = sum(accuracies) / len(accuracies)
        if rows:
            dense_acc = rows[0].accuracy
            retention = accuracy / dense_acc if dense_acc > 0 else float("nan")
        else:
            retention = 1.0  # the dense row is the reference
        account = archive.account
        rows.append(
            QuickstartRow(
                framework=config.framework,
                ipc=config.ipc,
                codec=archive.name,
                ratio=account.ratio,
                accuracy=accuracy,
                retention=retention,
                total_bytes=account.total_bytes,
                bits_per_label=account.bits_per_label,
                views_kept=archive.keep_per_image / config.epochs,
                kl=_fidelity(dense_path, archive.path, config.student.temperature),
                decode_share=decode_share,
                train_seconds=train_seconds,
                accuracies=tuple(accuracies),
            )
        )
        logger.info("%s: accuracy %.4f", archive.name, accuracy)
    return rows


def write_plot(
    rows: Sequence[QuickstartRow], path: Path, teacher_accuracy: float | None = None
) -> Path:
    """Rate-accuracy scatter (accuracy vs all-in ratio, log x) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for row in rows:
        ax.scatter(row.ratio, 100 * row.accuracy, s=40)
        ax.annotate(
            row.codec,
            (row.ratio, 100 * row.accuracy),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    if rows:
        dense = [r for r in rows if r.codec == "dense"]
        if dense:
            ax.axhline(100 * dense[0].accuracy, ls="--", lw=0.8, c="gray")
    if teacher_accuracy is not None:
        ax.axhline(100 * teacher_accuracy, ls=":", lw=0.8, c="black", label="teacher")
        ax.legend(loc="lower left", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("all-in compression ratio vs dense fp16 labels")
    ax.set_ylabel("student test accuracy (%)")
    first = rows[0] if rows else None
    title = f"{first.framework}, IPC {first.ipc}" if first else "quickstart"
    ax.set_title(f"labelzip quickstart: {title}")
    ax.grid(True, which="both", lw=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
