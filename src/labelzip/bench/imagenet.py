"""The 1000-class track of the vision benchmark: EfficientNet-Lite0 labels of SRe2L images.

One run does, for a subset of ImageNet-1K classes:

1. recover ``ipc`` SRe2L images per class from EfficientNet-Lite0 (data-free,
   few steps at a small resolution on a CPU) and measure the teacher's top-1 on
   its own recovered images (a sanity check that recovery worked);
2. relabel them with seeded views (SRe2L/FKD protocol, ``epochs`` views per
   image; every label is the teacher's full 1000-class logits) into a dense fp32
   archive: the reference labels;
3. compress those labels with every codec at every all-in ratio through the
   archive path (rate control, a real file on disk; all-in bytes are the file
   size, header included) with the header the relabel pipeline writes;
4. decode each archive and measure label fidelity against the reference: KL at
   T = 1, 4, 20, top-1 agreement and top-5 overlap;
5. project the measured codec numbers (payload bits per stored label, model and
   header bytes) to ImageNet-1K scale with the SRe2L protocol (300 epochs) next
   to the published frameworks' storage (images + labels at IPC 10 and 50).

The label set is small (classes x ipc x epochs labels), so fixed costs -- the
header with its 1000 class names, a learned codec's decoder -- weigh far more
than at ImageNet-1K scale: a target a codec cannot reach here is reported as
unreachable with the codec's own reason, never hidden.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from labelzip.archive import (
    ArchiveMetadata,
    ArchiveReader,
    Layout,
    save_archive,
)
from labelzip.bench.fidelity import fidelity_scores
from labelzip.bench.imagenet_report import write_imagenet_report
from labelzip.codecs.base import Codec, LabelContext
from labelzip.codecs.prune import PrunePlan
from labelzip.codecs.registry import codec_class, with_num_images
from labelzip.errors import ConfigError, UnreachableTargetError
from labelzip.outputs import scratch_folder
from labelzip.rate import ArchiveTarget, RateGoal, auto_prune_plan, fit_codec
from labelzip.rate.target import RateValue

if TYPE_CHECKING:
    from labelzip.distill import DistilledSet

__all__ = [
    "DEFAULT_CLASSES",
    "DEFAULT_CODECS",
    "OPTIONAL_CODECS",
    "CodecChoice",
    "ImagenetTrackConfig",
    "ImagenetTrackResult",
    "TrackProgress",
    "TrackRow",
    "run_imagenet_track",
    "write_imagenet_report",
]

logger = logging.getLogger(__name__)

# Ten visually distinct ImageNet-1K classes: goldfish, hummingbird, golden
# retriever, arctic fox, monarch, balloon, basketball, French horn, sports car,
# Granny Smith.
DEFAULT_CLASSES = (1, 94, 207, 279, 323, 417, 430, 566, 817, 948)
IMAGENET_CLASSES = 1000
REFERENCE_LABEL = "dense-fp16"
STORAGE_FRAMEWORKS = ("sre2l", "lpld", "lpqld", "fkd", "rded")

TrackProgress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; stages: recover, relabel, compress."""


class CodecChoice(BaseModel):
    """One curve of the track: a codec, its fixed options, optional LPLD pruning.

    With ``prune`` the views kept per image are chosen by rate control (the
    most that meet the target, LPLD-style: pruned views reuse a kept view's
    label) and the codec stores only those.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str = Field(min_length=1, description="name in reports")
    codec: str = Field(min_length=1, description="codec registry name")
    options: dict[str, Any] = Field(
        default_factory=dict, description="codec options the rate control keeps"
    )
    prune: bool = Field(
        default=False, description="LPLD: prune views per image to meet the target"
    )

    @field_validator("codec")
    @classmethod
    def _known(cls, value: str) -> str:
        codec_class(value)  # ConfigError naming the registered codecs
        return value


DEFAULT_CODECS = (
    CodecChoice(label="vqae", codec="vqae"),
    CodecChoice(label="topk-ms", codec="topk", options={"decoder": "ms"}),
    CodecChoice(label="topk-mrs", codec="topk", options={"decoder": "mrs"}),
    CodecChoice(label="rskd", codec="rskd", options={"sizing": "measured"}),
    CodecChoice(label="lpld", codec="dense", options={"dtype": "fp16"}, prune=True),
)
# Codecs the track can run on request (``--codecs``) but does not by default.
# ctx-transform needs the relabel recipe's view context (rebuilt from the header).
OPTIONAL_CODECS = (
    CodecChoice(label="ctx-transform", codec="ctx-transform", prune=True),
)


class ImagenetTrackConfig(BaseModel):
    """What the 1000-class track recovers, relabels, compresses and reports.

    Defaults fit a CPU (~15 minutes on one loaded thread): 10 classes x 4 IPC at
    64 px, 200 recovery steps with the short-budget BN weight and crop range,
    300 relabel epochs (SRe2L's protocol) = 12,000 labels.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    classes: tuple[int, ...] = Field(
        default=DEFAULT_CLASSES,
        min_length=1,
        description="ImageNet-1K class ids (0..999) to recover",
    )
    ipc: int = Field(default=4, ge=1, le=1300, description="recovered images per class")
    recover_steps: int = Field(
        default=200, ge=1, le=100_000, description="SRe2L optimisation steps per batch"
    )
    image_size: int = Field(
        default=64,
        ge=16,
        le=512,
        description="side of the recovered images and relabel views (224 is native)",
    )
    recover_bn_weight: float = Field(
        default=0.001,
        ge=0,
        le=1e4,
        description="weight of the BN-statistics loss; SRe2L's 0.01 needs ~1000 "
        "steps before images match their class (docs/distill.md), 0.001 is the "
        "measured short-budget setting",
    )
    recover_crop_scale: tuple[float, float] = Field(
        default=(0.5, 1.0),
        description="RandomResizedCrop area range per recovery step; SRe2L uses "
        "(0.08, 1), (0.5, 1) converges faster at few steps (docs/distill.md)",
    )
    recover_batch_size: int = Field(
        default=100, ge=1, le=10_000, description="images optimised together"
    )
    epochs: int = Field(
        default=300, ge=1, le=100_000, description="relabel views per image (E)"
    )
    ratios: tuple[RateValue, ...] = Field(
        default=(40.0, 100.0, 300.0),
        min_length=1,
        description="all-in target ratios vs dense fp16 logits",
    )
    codecs: tuple[CodecChoice, ...] = Field(
        default=DEFAULT_CODECS,
        min_length=1,
        description="codecs measured at every ratio",
    )
    temperatures: tuple[float, ...] = Field(
        default=(1.0, 4.0, 20.0), min_length=1, description="KD temperatures of the KL"
    )
    storage_ipc: tuple[int, ...] = Field(
        default=(10, 50), min_length=1, description="IPCs of the ImageNet-1K table"
    )
    storage_epochs: int = Field(
        default=300, ge=1, le=100_000, description="epochs of the ImageNet-1K table"
    )
    seed: int = Field(default=0, ge=0, lt=2**63, description="seed of everything")
    device: str = Field(default="cpu", description="torch device of teacher and codecs")
    threads: int | None = Field(
        default=1, ge=1, le=256, description="torch CPU threads during the run"
    )

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        bad = [c for c in value if not 0 <= c < IMAGENET_CLASSES]
        if bad:
            raise ValueError(f"class ids must be in 0..999, got {bad}")
        if len(set(value)) != len(value):
            raise ValueError(f"class ids must be distinct, got {list(value)}")
        return value

    @field_validator("recover_crop_scale")
    @classmethod
    def _crop(cls, value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(
                f"recover_crop_scale must satisfy 0 < min <= max <= 1, got {value}"
            )
        return value

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not v > 0 for v in value):
            raise ValueError(f"values must be > 0, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _labels(self) -> ImagenetTrackConfig:
        names = [c.label for c in self.codecs]
        if len(set(names)) != len(names) or REFERENCE_LABEL in names:
            raise ValueError(
                f"codec labels must be distinct and not {REFERENCE_LABEL!r} (the "
                f"reference row), got {names}"
            )
        return self

    @property
    def num_images(self) -> int:
        return len(self.classes) * self.ipc

    @property
    def num_labels(self) -> int:
        return self.num_images * self.epochs


@dataclass(frozen=True)
class TrackRow:
    """One archive: all-in size and label fidelity vs the teacher's fp32 logits."""

    label: str
    codec: str
    target_ratio: float | None
    ratio: float
    bits_per_label: float
    total_bytes: int
    payload_bytes: int
    model_bytes: int
    header_bytes: int
    stored_labels: int
    kept_per_image: int
    kl: dict[str, float]
    top1: float
    top5: float
    fit_s: float
    config: dict[str, Any]

    @property
    def payload_bits_per_stored_label(self) -> float:
        return 8.0 * self.payload_bytes / max(self.stored_labels, 1)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["payload_bits_per_stored_label"] = self.payload_bits_per_stored_label
        return out


@dataclass
class ImagenetTrackResult:
    """Everything one run measured; ``to_dict`` is the JSON report."""

    config: dict[str, Any]
    recovery: dict[str, Any]
    relabel: dict[str, Any]
    rows: list[TrackRow]
    unreachable: list[dict[str, Any]]
    storage: list[dict[str, Any]]
    machine: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    def row(self, label: str, target: float | None) -> TrackRow | None:
        """The row of ``label`` at target ratio ``target`` (None: fixed rate)."""
        for row in self.rows:
            if row.label == label and row.target_ratio == target:
                return row
        return None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImagenetTrackResult:
        """Rebuild a result from :meth:`to_dict` output (re-render a saved report)."""
        fields = set(TrackRow.__dataclass_fields__)
        return cls(
            config=dict(data["config"]),
            recovery=dict(data["recovery"]),
            relabel=dict(data["relabel"]),
            rows=[
                TrackRow(**{k: v for k, v in r.items() if k in fields})
                for r in data["rows"]
            ],
            unreachable=list(data["unreachable"]),
            storage=list(data["storage"]),
            machine=dict(data["machine"]),
            seconds=dict(data.get("seconds", {})),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "recovery": self.recovery,
            "relabel": self.relabel,
            "rows": [r.to_dict() for r in self.rows],
            "unreachable": self.unreachable,
            "storage": self.storage,
            "machine": self.machine,
            "seconds": self.seconds,
        }


# ---------------------------------------------------------------- the run


def _machine(threads: int) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _stage(progress: TrackProgress | None, stage: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        if progress is not None:
            progress(stage, done, total)

    return report


def run_imagenet_track(
    config: ImagenetTrackConfig | None = None,
    *,
    progress: TrackProgress | None = None,
    teacher: nn.Module | None = None,
    workdir: str | os.PathLike[str] | None = None,
) -> ImagenetTrackResult:
    """Recover, relabel, compress and measure the 1000-class track (see module doc).

    Args:
        config: the run's settings (default :class:`ImagenetTrackConfig`).
        progress: ``progress(stage, done, total)`` for a CLI progress bar.
        teacher: a stand-in 1000-class teacher with BatchNorm layers taking
            (B, 3, H, W) images in 0..255 (tests); default EfficientNet-Lite0.
        workdir: where the temporary archives go (default the system temp dir).

    Returns:
        An :class:`ImagenetTrackResult`: one reference row (dense fp16, 1x) and
        one row per reachable (codec, ratio), the unreachable targets with the
        codec's reason, the recovery sanity check and the ImageNet-1K table.

    Raises:
        InputError: the EfficientNet-Lite0 packages are missing (names the pip
            command) or the teacher does not output 1000 classes.
    """
    config = config or ImagenetTrackConfig()
    old_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    try:
        device = torch.device(config.device)
        if teacher is None:
            from labelzip.teachers import load_efficientnet_lite0

            teacher = load_efficientnet_lite0(device)
        teacher = teacher.to(device).eval()
        distilled, recovery = _recover(config, teacher, device, progress, seconds)
        with scratch_folder(
            workdir or tempfile.gettempdir(), "labelzip-imagenet"
        ) as tmp:
            relabelled, reference, layout, metadata = _relabel(
                config, distilled, teacher, device, Path(tmp), progress, seconds
            )
            relabel_info = _relabel_info(
                relabelled, reference, distilled.labels, config
            )
            t0 = time.perf_counter()
            rows, unreachable = _compress_all(
                config, reference, layout, metadata, Path(tmp), progress
            )
            seconds["compress"] = time.perf_counter() - t0
        storage = _storage(config, rows)
    finally:
        torch.set_num_threads(old_threads)
    seconds["total"] = time.perf_counter() - start
    return ImagenetTrackResult(
        config=config.model_dump(mode="json"),
        recovery=recovery,
        relabel=relabel_info,
        rows=rows,
        unreachable=unreachable,
        storage=storage,
        machine=_machine(config.threads or old_threads),
        seconds=seconds,
    )


def _recover(
    config: ImagenetTrackConfig,
    teacher: nn.Module,
    device: torch.device,
    progress: TrackProgress | None,
    seconds: dict[str, float],
) -> tuple[DistilledSet, dict[str, Any]]:
    """Recover the SRe2L images (timed into ``seconds``) and their summary."""
    from labelzip.distill import RecoverConfig, RunOptions, recover

    recover_config = RecoverConfig(
        steps=config.recover_steps,
        image_size=config.image_size,
        channels=3,
        batch_size=config.recover_batch_size,
        bn_weight=config.recover_bn_weight,
        crop_scale=config.recover_crop_scale,
        classes=list(config.classes),
    )
    t0 = time.perf_counter()
    distilled = recover(
        "sre2l",
        None,
        teacher,
        config.ipc,
        recover_config,
        RunOptions(
            seed=config.seed, device=device, progress=_stage(progress, "recover")
        ),
    )
    seconds["recover"] = time.perf_counter() - t0
    if len(distilled.class_names) != IMAGENET_CLASSES:
        raise ConfigError(
            f"the ImageNet track needs a {IMAGENET_CLASSES}-class teacher, this "
            f"one has {len(distilled.class_names)} outputs"
        )
    recovery = {
        "method": "sre2l",
        "num_images": int(distilled.images.shape[0]),
        "image_shape": list(distilled.images.shape[1:]),
        "steps": config.recover_steps,
        "bn_weight": config.recover_bn_weight,
        "crop_scale": list(config.recover_crop_scale),
        "teacher": distilled.teacher_id,
        **distilled.config.get("diagnostics", {}),
    }
    return distilled, recovery


def _relabel(
    config: ImagenetTrackConfig,
    distilled: DistilledSet,
    teacher: nn.Module,
    device: torch.device,
    tmp: Path,
    progress: TrackProgress | None,
    seconds: dict[str, float],
) -> tuple[Any, torch.Tensor, Layout, ArchiveMetadata]:
    """Relabel the images into a dense fp32 archive in ``tmp`` (timed into
    ``seconds``); the relabel result, the decoded reference, its layout and
    metadata."""
    from labelzip.pipelines.relabel import RelabelConfig, RelabelOutput, relabel

    relabel_config = RelabelConfig(
        epochs=config.epochs,
        seed=config.seed,
        fit_views=max(config.num_labels, 1),
    )
    reference_path = tmp / "reference_fp32.lz"
    t0 = time.perf_counter()
    relabelled = relabel(
        distilled,
        teacher,
        [RelabelOutput(path=reference_path, codec="dense", options={"dtype": "fp32"})],
        relabel_config,
        teacher_id=distilled.teacher_id,
        device=device,
        progress=_stage(progress, "relabel"),
    )
    seconds["relabel"] = time.perf_counter() - t0
    with ArchiveReader(reference_path) as reader:
        metadata = reader.metadata
        layout = Layout(
            tuple(reader.header.layout.dims), tuple(reader.header.layout.shape)
        )
        reference = torch.cat(list(reader.decode_all()))
    return relabelled, reference, layout, metadata


def _relabel_info(
    relabelled: Any,
    reference: torch.Tensor,
    image_classes: torch.Tensor,
    config: ImagenetTrackConfig,
) -> dict[str, Any]:
    """Label-set summary: sizes, and how often a view's top-1 is its image's class."""
    num_images = len(image_classes)
    view_class = image_classes.repeat(config.epochs)  # layout (epoch, sample)
    probs = reference.softmax(-1)
    entropy = -(probs * reference.log_softmax(-1)).sum(-1)
    return {
        "num_labels": int(reference.shape[0]),
        "num_images": num_images,
        "epochs": config.epochs,
        "num_classes": int(reference.shape[1]),
        "reference_fp16_bytes": int(reference.shape[0] * reference.shape[1] * 2),
        "dense_fp32_archive_bytes": relabelled.archives[0].account.total_bytes,
        "view_top1_is_image_class": float(
            (reference.argmax(-1) == view_class).float().mean()
        ),
        "mean_entropy_nats": float(entropy.mean()),
        "median_top1_prob": float(probs.max(-1).values.median()),
        "teacher_views": relabelled.teacher_views,
        "seconds": relabelled.seconds,
    }


def _compress_all(
    config: ImagenetTrackConfig,
    reference: torch.Tensor,
    layout: Layout,
    metadata: Any,
    tmp: Path,
    progress: TrackProgress | None,
) -> tuple[list[TrackRow], list[dict[str, Any]]]:
    dense = CodecChoice(label=REFERENCE_LABEL, codec="dense", options={"dtype": "fp16"})
    jobs: list[tuple[CodecChoice, float | None]] = [(dense, None)]
    jobs += [(c, r) for c in config.codecs for r in config.ratios]
    rows: list[TrackRow] = []
    unreachable: list[dict[str, Any]] = []
    report = _stage(progress, "compress")
    for done, (choice, ratio) in enumerate(jobs):
        try:
            row = _measure(choice, ratio, reference, layout, metadata, tmp, config)
        except UnreachableTargetError as exc:
            unreachable.append(
                {"label": choice.label, "ratio": ratio, "reason": str(exc)}
            )
            logger.info("%s at %gx: unreachable: %s", choice.label, ratio or 1, exc)
        else:
            rows.append(row)
            logger.info(
                "%s at %s: %.1fx, KL T=4 %.4g, top-1 %.4f",
                choice.label, ratio, row.ratio, row.kl.get("T4", math.nan), row.top1,
            )  # fmt: skip
        report(done + 1, len(jobs))
    return rows, unreachable


def _measure(
    choice: CodecChoice,
    ratio: float | None,
    reference: torch.Tensor,
    layout: Layout,
    metadata: Any,
    tmp: Path,
    config: ImagenetTrackConfig,
) -> TrackRow:
    """Write one archive of the reference labels and measure it against them."""
    num_classes = reference.shape[1]
    options = with_num_images(choice.codec, choice.options, int(layout.shape[1]))
    cls = codec_class(choice.codec)
    plan = _prune_plan(choice, ratio, layout, num_classes, metadata, options, config)
    kept = plan.kept_indices() if plan is not None else torch.arange(len(reference))
    stored = reference[kept] if plan is not None else reference
    context: LabelContext | None = None
    if cls.needs_context:  # rebuilt from the relabel recipe, as the reader will
        from labelzip.pipelines.relabel_types import recipe_context

        context = recipe_context(
            metadata.user, tuple(layout.dims), tuple(layout.shape), kept
        )
    t0 = time.perf_counter()
    codec = _fit(choice, ratio, stored, context, layout, plan, metadata, options)
    fit_s = time.perf_counter() - t0
    path = tmp / f"{choice.label}-{ratio or 1:g}.lz"
    account = save_archive(
        path,
        codec,
        reference.reshape(*layout.shape, num_classes),
        layout=layout,
        prune=plan,
        metadata=metadata,
    )
    size = os.path.getsize(path)
    if account.total_bytes != size:
        raise AssertionError(
            f"archive account {account.total_bytes} B disagrees with the file ({size} B)"
        )
    with ArchiveReader(path) as reader:
        decoded = torch.cat(list(reader.decode_all()))
    path.unlink()
    kl, top1, top5 = fidelity_scores(reference, decoded, config.temperatures)
    epochs = layout.shape[0]
    return TrackRow(
        label=choice.label,
        codec=choice.codec,
        target_ratio=ratio,
        ratio=account.ratio,
        bits_per_label=account.bits_per_label,
        total_bytes=account.total_bytes,
        payload_bytes=account.payload_bytes,
        model_bytes=account.model_bytes,
        header_bytes=account.header_bytes,
        stored_labels=int(stored.shape[0]),
        kept_per_image=plan.keep_per_group if plan is not None else epochs,
        kl=kl,
        top1=top1,
        top5=top5,
        fit_s=fit_s,
        config=codec.to_config(),
    )


def _prune_plan(
    choice: CodecChoice,
    ratio: float | None,
    layout: Layout,
    num_classes: int,
    metadata: Any,
    options: dict[str, Any],
    config: ImagenetTrackConfig,
) -> PrunePlan | None:
    """The LPLD plan of a pruning choice at ``ratio`` (``None`` without pruning)."""
    if not choice.prune:
        return None
    if ratio is None:
        raise ConfigError(f"{choice.label}: pruning needs a target ratio")
    goal = RateGoal(ratio=ratio)
    target = ArchiveTarget(goal, layout, num_classes, _chunk_size(), metadata=metadata)
    return auto_prune_plan(choice.codec, target, seed=config.seed, options=options)


def _fit(
    choice: CodecChoice,
    ratio: float | None,
    stored: torch.Tensor,
    context: LabelContext | None,
    layout: Layout,
    plan: PrunePlan | None,
    metadata: Any,
    options: dict[str, Any],
) -> Codec:
    """The codec of ``choice`` fitted on the stored labels: as configured without
    a ratio, else by rate control to the all-in ``ratio``."""

    def batches() -> list[torch.Tensor]:
        return list(stored.split(4096))

    goal = RateGoal.of(ratio)
    target = ArchiveTarget.of(
        goal, layout, stored.shape[1], prune=plan, metadata=metadata
    )
    return fit_codec(
        choice.codec,
        batches,
        options,
        num_labels=stored.shape[0],
        target=target,
        context=context,
    )


def _chunk_size() -> int:
    from labelzip.archive import DEFAULT_CHUNK_SIZE

    return DEFAULT_CHUNK_SIZE


# ---------------------------------------------------------------- ImageNet-1K table


def _storage(
    config: ImagenetTrackConfig, rows: Sequence[TrackRow]
) -> list[dict[str, Any]]:
    """Published frameworks at ImageNet-1K scale, then each measured codec projected.

    A codec's projection keeps its measured payload bits per stored label, its
    model and header bytes, and its kept fraction of views (LPLD pruning).
    """
    from labelzip.storage import storage_table

    table = storage_table(
        dataset="imagenet-1k",
        framework=list(STORAGE_FRAMEWORKS),
        ipc=list(config.storage_ipc),
        epochs=config.storage_epochs,
    )
    out = [{"source": "formula", **r.to_dict()} for r in table]
    for row in rows:
        prune_ratio = config.epochs / max(row.kept_per_image, 1)
        projected = storage_table(
            dataset="imagenet-1k",
            framework="labelzip",
            ipc=list(config.storage_ipc),
            epochs=config.storage_epochs,
            codec_bits_per_label=max(row.payload_bits_per_stored_label, 1e-9),
            codec_model_bytes=row.model_bytes,
            codec_header_bytes=row.header_bytes,
            labelzip_prune_ratio=prune_ratio,
        )
        for r in projected:
            entry = {"source": "measured", **r.to_dict()}
            entry.update(
                framework=f"labelzip:{row.label}",
                codec=row.label,
                target_ratio=row.target_ratio,
                measured_ratio=row.ratio,
                kl_t4=row.kl.get("T4"),
            )
            out.append(entry)
    return out
