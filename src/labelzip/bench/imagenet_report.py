"""The ImageNet-1K track's report: JSON, a markdown page and a KL-vs-ratio plot.

Renders an :class:`~labelzip.bench.imagenet.ImagenetTrackResult` (a fresh run
or one read back from its JSON) without re-running anything.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labelzip.io import atomic_path

if TYPE_CHECKING:
    from labelzip.bench.imagenet import ImagenetTrackResult

__all__ = ["write_imagenet_report"]


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / 2**30:.2f}"


def _markdown(result: ImagenetTrackResult, meta: Mapping[str, Any]) -> str:
    lines = _setup_lines(result, meta) + _fidelity_lines(result)
    lines += _storage_lines(result)
    lines.append("")
    return "\n".join(lines)


def _setup_lines(result: ImagenetTrackResult, meta: Mapping[str, Any]) -> list[str]:
    """Title, command, machine, run time and the setup list."""
    cfg, rec, rel, mach = result.config, result.recovery, result.relabel, result.machine
    lines = [
        "# ImageNet-1K track: EfficientNet-Lite0 labels of SRe2L-recovered images",
        "",
    ]
    if meta.get("command"):
        lines.append(f"Command: `{meta['command']}`  ")
    return lines + [
        f"Machine: {mach['processor']}, {mach['cpus']} CPUs, {mach['platform']}, "
        f"torch {mach['torch']} ({mach['torch_threads']} threads)"
        + (f"; {meta['machine_note']}" if meta.get("machine_note") else "")
        + "  ",
        f"Run time: {result.seconds.get('total', 0):.0f} s (recover "
        f"{result.seconds.get('recover', 0):.0f} s, relabel "
        f"{result.seconds.get('relabel', 0):.0f} s, compress + measure "
        f"{result.seconds.get('compress', 0):.0f} s)",
        "",
        "## Setup",
        "",
        f"- Classes ({len(cfg['classes'])}): {', '.join(str(c) for c in cfg['classes'])}; "
        f"IPC {cfg['ipc']}; SRe2L recovery {cfg['recover_steps']} steps at "
        f"{cfg['image_size']} px, BN weight {cfg['recover_bn_weight']:g}, crop "
        f"scale {tuple(cfg['recover_crop_scale'])} (seed {cfg['seed']}).",
        f"- Sanity check: the teacher's top-1 on its own recovered images = "
        f"{rec.get('teacher_accuracy', float('nan')):.3f} (mean target probability "
        f"{rec.get('teacher_target_prob', float('nan')):.3f}; recovery loss "
        f"{rec.get('first_loss', float('nan')):.2f} -> {rec.get('final_loss', float('nan')):.2f}).",
        f"- Relabel: {rel['epochs']} seeded views per image (SRe2L/FKD protocol) -> "
        f"{rel['num_labels']:,} labels x C = {rel['num_classes']}; a view's top-1 is its "
        f"image's class for {rel['view_top1_is_image_class']:.3f} of views; mean "
        f"entropy {rel['mean_entropy_nats']:.2f} nats, median top-1 probability "
        f"{rel['median_top1_prob']:.3f}.",
        f"- Reference: the teacher's fp32 logits (dense fp16 of this set = "
        f"{rel['reference_fp16_bytes']:,} bytes). Every row is an archive on disk with "
        "the relabel header (1000 class names, view recipe); all-in bytes = file size.",
        "",
    ]


def _fidelity_lines(result: ImagenetTrackResult) -> list[str]:
    """The table of measured rows, then the unreachable targets with their reasons."""
    cfg = result.config
    temps = [f"T{t:g}" for t in cfg["temperatures"]]
    lines = [
        "## Label fidelity per codec and all-in ratio",
        "",
        "| codec | target | all-in ratio | bits/label | total bytes | model bytes "
        "| header bytes | kept views/image | "
        + " | ".join(f"KL {t.replace('T', 'T=')}" for t in temps)
        + " | top-1 | top-5 |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(temps) + "---|---|",
    ]
    for r in result.rows:
        target = f"{r.target_ratio:g}x" if r.target_ratio else "-"
        kls = " | ".join(f"{r.kl[t]:.4g}" for t in temps)
        lines.append(
            f"| {r.label} | {target} | {r.ratio:.1f}x | {r.bits_per_label:.1f} "
            f"| {r.total_bytes:,} | {r.model_bytes:,} | {r.header_bytes:,} "
            f"| {r.kept_per_image}/{cfg['epochs']} | {kls} | {r.top1:.4f} | {r.top5:.4f} |"
        )
    if result.unreachable:
        lines += ["", "Unreachable targets on this label set (the codec's reason):", ""]
        for u in result.unreachable:
            ratio = f"{u['ratio']:g}x" if u["ratio"] else "-"
            lines.append(f"- {u['label']} at {ratio}: {u['reason']}")
    return lines


def _storage_lines(result: ImagenetTrackResult) -> list[str]:
    """The ImageNet-1K storage table: published frameworks and projected rows."""
    cfg = result.config
    lines = [
        "",
        f"## Storage at ImageNet-1K scale ({cfg['storage_epochs']} epochs, SRe2L protocol)",
        "",
        "Published frameworks from the storage formulas (docs/storage.md; dense "
        "labels, LPLD's 40x pruning, LPQLD, FKD's top-k, RDED online/materialised). "
        "`labelzip:<codec> @<target>` rows project what that archive measured here -- "
        "payload bits per stored label, model and header bytes, kept views per "
        "image -- to 1000 classes x IPC x 300 views. The header (~18 KB, mostly the "
        "1000 class names) and a learned codec's model are a large share of the "
        "small archive's target but amortise at ImageNet-1K scale, so a codec "
        "chosen for a target here projects to a higher ratio there (the model is "
        "the one fitted here; a full-scale fit may use a larger one).",
        "",
        "| IPC | framework | payload bits/stored label | kept views | images GiB "
        "| labels GiB | total GiB | labels vs dense fp16 | KL T=4 (measured here) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sorted(result.storage, key=lambda s: (s["ipc"], s["source"] != "formula")):
        vs_dense = s.get("ratio_vs_dense")
        row = (
            result.row(s["codec"], s.get("target_ratio"))
            if s["source"] == "measured"
            else None
        )
        bits = f"{row.payload_bits_per_stored_label:.1f}" if row else "-"
        kept = f"{row.kept_per_image}/{cfg['epochs']}" if row else "-"
        kl = f"{row.kl['T4']:.4g}" if row and "T4" in row.kl else "-"
        lines.append(
            f"| {s['ipc']} | {s['framework']}"
            + (f" @{s['target_ratio']:g}x" if s.get("target_ratio") else "")
            + f" | {bits} | {kept} | {_gib(s['image_bytes'])} "
            f"| {_gib(s['label_total_bytes'])} | {_gib(s['total_bytes'])} "
            f"| {f'{vs_dense:.1f}x' if vs_dense else 'online'} | {kl} |"
        )
    return lines


def _plot(result: ImagenetTrackResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    floor = 1e-8  # log axes: an exact (KL 0) point is drawn at the floor
    for label in dict.fromkeys(r.label for r in result.rows):
        pts = sorted(
            (r for r in result.rows if r.label == label), key=lambda r: r.ratio
        )
        ax.plot(
            [r.ratio for r in pts],
            [max(r.kl.get("T4", math.nan), floor) for r in pts],
            marker="o",
            label=label,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("all-in compression ratio vs dense fp16 (file size)")
    ax.set_ylabel("KL(teacher || decoded) at T = 4")
    cfg = result.config
    ax.set_title(
        f"ImageNet-1K track: {len(cfg['classes'])} classes x IPC {cfg['ipc']} "
        f"x {cfg['epochs']} views",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_imagenet_report(
    result: ImagenetTrackResult,
    out_dir: str | os.PathLike[str],
    *,
    meta: Mapping[str, Any] | None = None,
    stem: str = "imagenet_track",
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``.md`` and ``.png`` (KL at T=4 vs all-in ratio, log-log).

    Args:
        result: what :func:`run_imagenet_track` returned.
        out_dir: created if missing.
        meta: shown in the report and stored in the JSON (``command``: the exact
            command line; ``machine_note``: free text about the machine's load).

    Returns:
        The written paths by kind (``json``, ``md``, ``png``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    paths = {kind: out / f"{stem}.{kind}" for kind in ("json", "md", "png")}
    with atomic_path(paths["json"]) as tmp:
        tmp.write_text(json.dumps({"meta": meta, **result.to_dict()}, indent=1))
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(_markdown(result, meta))
    _plot(result, paths["png"])
    return paths
