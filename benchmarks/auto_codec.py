"""``--codec auto`` against every single codec, by label fidelity of the final archives.

For each label set and all-in ratio, every codec is written as ``labelzip
compress`` writes it (rate control at the target, full schedule), keeping every
view when that meets the target and otherwise the most views per sample that
do (relabel's ``--auto-prune`` rule), and so is ``--codec auto`` (candidates measured on a held-out sample,
then the winner fitted on everything). Each archive is decoded whole and
compared with the teacher: mean KL(teacher || decoded) at T=4 over every
label (a pruned view counts with the label that stands in for it), top-1
agreement, the KL of the stored labels alone, and auto's score
(:func:`labelzip.selection.score.reuse_score`: each label's stand-in's codec
error plus min(1, reuse_views(C)/m) of the reuse mismatch, m views stored per
sample: 2/m at up to 10 classes, C/10 times that above). Fit time is measured per archive; for auto it is split into the
choice and the final fit.

Label sets (the vision ones (E, N, C), dims epoch,sample, as relabel writes):

- ``effnet``: the first ``--effnet-epochs`` epochs of the 1000-class
  EfficientNet-Lite0 views in ``/work/benchdata/effnet_views.safetensors``
  (60 images, one view per image per epoch);
- ``quickstart``: the quickstart's Fashion-MNIST labels (ConvNet teacher,
  random IPC 10, 300 views per image), made once into ``--cache``;
- ``lm``: (N, V) SmolLM2-135M next-token logits (V = 49152) from
  ``benchmarks/make_lm_label_set.py`` (``--lm``), no views; the LM codecs.

Usage:
    python benchmarks/auto_codec.py --sets effnet quickstart --ratios 40 100 \\
        --out benchmarks/results/auto_codec
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from labelzip.archive import ArchiveMetadata, ArchiveReader, Layout, load_archive
from labelzip.errors import UnreachableTargetError
from labelzip.logit_store import open_logits
from labelzip.ops.metrics import kl_divergence, top1_agreement
from labelzip.pipelines.compress import (
    CompressSettings,
    choose_auto,
    fit_codec,
    label_layout,
    prune_plan,
    write_archive,
)
from labelzip.rate import ArchiveTarget, RateGoal, auto_prune_plan
from labelzip.selection.auto import (
    LM_MIN_CLASSES,
    AutoChoice,
    AutoConfig,
    run_options,
    with_auto_record,
)
from labelzip.selection.score import reuse_score

logger = logging.getLogger("auto_codec")

EFFNET = Path("/work/benchdata/effnet_views.safetensors")
VIEW_DIMS = ("epoch", "sample")
# Every single codec compress offers for a logits file (no view context).
SINGLES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("topk", {"decoder": "ms", "temperature": 4.0}),
    ("topk", {"decoder": "mr"}),
    ("topk", {"decoder": "mrs"}),
    ("dense", {}),
    ("rskd", {}),
    ("vqae", {}),
)


LM_SINGLES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("topk", {"decoder": "ms", "temperature": 4.0}),
    ("topk-tail", {}),
    ("rskd", {}),
    ("vqae-sparse", {}),
    ("vqae-rs", {}),
)


def lm_positions(path: Path) -> torch.Tensor:
    """(N, V) next-token logits of ``benchmarks/make_lm_label_set.py`` (float32)."""
    return load_file(str(path))["logits"].float()


def effnet_views(epochs: int) -> torch.Tensor:
    """(epochs, 60, 1000) logits: rows are stored epoch-major, 60 images each."""
    data = load_file(str(EFFNET))
    num_images = int(data["image_index"].max()) + 1
    rows = epochs * num_images
    if not torch.equal(
        data["image_index"][:rows] % num_images, data["image_index"][:rows]
    ):
        raise SystemExit("effnet_views rows are not epoch-major")
    return data["logits"][:rows].reshape(epochs, num_images, -1).contiguous()


def quickstart_views(cache: Path) -> torch.Tensor:
    """(300, 100, 10) quickstart labels, made once (teacher, random IPC 10, relabel)."""
    path = cache / "quickstart_views.safetensors"
    if path.is_file():
        return load_file(str(path))["logits"]
    from labelzip.data.fashion_mnist import load_fashion_mnist
    from labelzip.pipelines.imageset import check_image_tensor
    from labelzip.pipelines.quickstart import (
        QuickstartConfig,
        build_distilled_set,
        prepare_teacher,
        quickstart_view_config,
    )
    from labelzip.pipelines.relabel import RelabelConfig, RelabelOutput, relabel

    config = QuickstartConfig()
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    device = torch.device("cpu")
    teacher, teacher_id, accuracy, _ = prepare_teacher(
        config, train, test, device, cache
    )
    logger.info("teacher %s: test accuracy %.4f", teacher_id, accuracy)
    images = build_distilled_set(config, train, teacher, teacher_id, device, _quiet)
    h, w = check_image_tensor(images.images).shape[-2:]
    dense = cache / "quickstart_dense.lz"
    relabel(
        images,
        teacher,
        [RelabelOutput(path=dense, codec="dense", options={"dtype": "fp32"})],
        RelabelConfig(
            epochs=config.epochs, seed=config.seed, view=quickstart_view_config(h, w)
        ),
        teacher_id=teacher_id,
        device=device,
    )
    logits = load_archive(dense)
    save_file({"logits": logits.contiguous()}, str(path))
    return logits


def _quiet(stage: str, done: int, total: int) -> None:
    """A progress callback that shows nothing."""


def fidelity(teacher: torch.Tensor, path: Path) -> dict[str, float]:
    """KL(T=4) and top-1 agreement of the whole decoded archive, the KL of its
    stored labels, and auto's score of the archive."""
    num_classes = teacher.shape[-1]
    flat = teacher.reshape(-1, num_classes)
    decoded = load_archive(path).reshape(-1, num_classes)
    with ArchiveReader(path) as reader:
        plan = reader.prune
    used = kl_divergence(flat, decoded, temperature=4.0)
    index = torch.arange(flat.shape[0])
    source = index if plan is None else plan.kept_flat(plan.stored_index(index))
    source_kl = kl_divergence(flat[source], decoded, temperature=4.0)
    stored = torch.unique(source)
    return {
        "kl": float(used.mean()),
        "top1": top1_agreement(flat, decoded),
        "stored_kl": float(source_kl[stored].mean()),
        "score": float(
            reuse_score(
                used,
                source_kl,
                None if plan is None else plan.keep_per_group,
                num_classes=flat.shape[1],
            ).mean()
        ),
    }


def write_one(
    source: Path,
    out: Path,
    settings: CompressSettings,
    auto: AutoConfig | None,
) -> tuple[dict[str, Any], AutoChoice | None]:
    """Compress ``source`` as the CLI does; the account and the seconds."""
    metadata = ArchiveMetadata()
    choice: AutoChoice | None = None
    with open_logits(source) as store:
        dims = VIEW_DIMS if len(store.shape) == 3 else None
        layout = label_layout(store, dims)
        started = time.perf_counter()
        if auto is not None:
            choice = choose_auto(store, settings, layout, metadata, auto)
            win = choice.winner
            keep = win.keep_fraction if win.keep_fraction < 1.0 else None
            settings = dataclasses.replace(
                settings,
                codec=win.codec,
                options=run_options(win.codec, win.options, auto),
                prune_keep=keep,
            )
            metadata = with_auto_record(metadata, choice)
        chosen = time.perf_counter()
        if auto is None and dims is not None:
            settings = with_auto_prune(settings, layout, store.num_classes, metadata)
        plan = prune_plan(layout, settings)
        codec = fit_codec(store, settings, layout, plan, metadata)
        fitted = time.perf_counter()
        account = write_archive(out, store, codec, settings, layout, plan, metadata)
    row = {
        "codec": settings.codec,
        "options": {
            k: v for k, v in settings.options.items() if k not in ("seed", "device")
        },
        "keep": settings.prune_keep or 1.0,
        "ratio": account.ratio,
        "bytes": account.total_bytes,
        "choose_s": chosen - started,
        "fit_s": fitted - chosen,
    }
    return row, choice


def with_auto_prune(
    settings: CompressSettings,
    layout: Layout,
    num_classes: int,
    metadata: ArchiveMetadata,
) -> CompressSettings:
    """A single codec as relabel's ``--auto-prune`` runs it: every view kept when
    that meets the target, else the most views per sample that do."""
    assert settings.goal is not None, "auto-prune meets a target"
    plan = auto_prune_plan(
        settings.codec,
        ArchiveTarget(
            settings.goal,
            layout,
            num_classes,
            chunk_size=settings.chunk_size,
            metadata=metadata,
        ),
        options=settings.options,
    )
    if plan is None:
        return settings
    return dataclasses.replace(settings, prune_keep=plan.keep_fraction)


def run_set(
    name: str,
    logits: torch.Tensor,
    ratios: list[float],
    auto: AutoConfig,
    work: Path,
    runs: list[str] | None = None,
) -> list[dict[str, Any]]:
    source = work / f"{name}.safetensors"
    save_file({"logits": logits.contiguous()}, str(source))
    rows: list[dict[str, Any]] = []
    for ratio in ratios:
        jobs: list[
            tuple[str, Callable[[], tuple[dict[str, Any], AutoChoice | None]]]
        ] = []
        singles = LM_SINGLES if logits.shape[-1] > LM_MIN_CLASSES else SINGLES
        for codec, options in singles:
            settings = CompressSettings(
                codec=codec,
                options=run_options(codec, options, auto),
                goal=RateGoal(ratio=ratio),
            )
            label = (
                f"{codec}({','.join(f'{k}={v}' for k, v in options.items())})"
                if options
                else codec
            )
            jobs.append(
                (label, lambda s=settings: write_one(source, work / "a.lz", s, None))
            )
        auto_settings = CompressSettings(codec="auto", goal=RateGoal(ratio=ratio))
        jobs.append(
            ("auto", lambda s=auto_settings: write_one(source, work / "a.lz", s, auto))
        )
        for label, job in jobs:
            if runs is not None and label not in runs:
                continue
            try:
                row, choice = job()
            except UnreachableTargetError as exc:
                rows.append(
                    {"set": name, "target": ratio, "run": label, "skipped": str(exc)}
                )
                logger.info("%s %gx %s: unreachable", name, ratio, label)
                continue
            scores = fidelity(logits, work / "a.lz")
            kl, top1 = scores["kl"], scores["top1"]
            row.update({"set": name, "target": ratio, "run": label, **scores})
            if choice is not None:
                row["auto_table"] = choice.table()
            rows.append(row)
            logger.info(
                "%s %gx %s: %.2fx kl %.5f top1 %.4f choose %.1fs fit %.1fs",
                name,
                ratio,
                label,
                row["ratio"],
                kl,
                top1,
                row["choose_s"],
                row["fit_s"],
            )
    return rows


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, ""]
    for name, target in dict.fromkeys((r["set"], r["target"]) for r in rows):
        group = [r for r in rows if r["set"] == name and r["target"] == target]
        lines += [
            f"### {name}, {target:g}x all-in",
            "",
            "| run | codec chosen | keep | all-in ratio | score | KL(T=4) | stored KL "
            "| top-1 | choose s | fit s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in group:
            if "skipped" in r:
                lines.append(f"| {r['run']} | unreachable | | | | | | | | |")
                continue
            opts = ",".join(f"{k}={v}" for k, v in r["options"].items())
            lines.append(
                f"| {r['run']} | {r['codec']}{f'({opts})' if opts else ''} | {r['keep']:g} "
                f"| {r['ratio']:.2f}x | {r['score']:.5f} | {r['kl']:.5f} "
                f"| {r['stored_kl']:.5f} | {r['top1']:.4f} "
                f"| {r['choose_s']:.1f} | {r['fit_s']:.1f} |"
            )
        for r in group:
            if "auto_table" in r:
                lines += ["", "auto's candidates (held-out sample):", "", "```"]
                lines += r["auto_table"] + ["```"]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", default=["effnet", "quickstart"])
    p.add_argument("--ratios", nargs="+", type=float, default=[40.0, 100.0])
    p.add_argument("--effnet-epochs", type=int, default=500)
    p.add_argument(
        "--lm",
        type=Path,
        default=Path("/work/devdata/lm_smollm2_logits.safetensors"),
        help="LM label set of benchmarks/make_lm_label_set.py",
    )
    p.add_argument("--cache", type=Path, default=Path("/tmp/labelzip_auto_bench"))
    p.add_argument("--auto-steps", type=int, default=300)
    p.add_argument("--auto-confirm-steps", type=int, default=1000)
    p.add_argument(
        "--runs", nargs="+", help="only these runs (e.g. auto vqae); default all"
    )
    p.add_argument("--auto-sample", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True, help="writes OUT.md and OUT.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    auto = AutoConfig(
        steps=args.auto_steps,
        confirm_steps=args.auto_confirm_steps,
        sample_labels=args.auto_sample,
    )
    makers = {
        "effnet": lambda: effnet_views(args.effnet_epochs),
        "quickstart": lambda: quickstart_views(args.cache),
        "lm": lambda: lm_positions(args.lm),
    }
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        for name in args.sets:
            logits = makers[name]()
            logger.info("%s: %s", name, tuple(logits.shape))
            rows += run_set(name, logits, args.ratios, auto, Path(tmp), args.runs)
    header = (
        f"# --codec auto vs every single codec\n\n"
        f"Command: `python benchmarks/auto_codec.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n"
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, torch "
        f"{torch.__version__}, {args.threads} thread(s), shared 2-core host; total "
        f"{time.perf_counter() - started:.0f} s."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(markdown(rows, header) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
