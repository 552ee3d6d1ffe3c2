"""Rate-distortion benchmark: all-in bits per label against fidelity, every codec.

Each point is a real archive on disk (codes + codebook + decoder + header), its
codec chosen by rate control for the target ratio vs dense fp16 logits, and its
decoded labels compared with the teacher's at the KD temperatures T = 1, 4, 20.

Usage (the committed results were made with the command in their header):
    python benchmarks/rate_distortion.py LABELS.safetensors --name effnet \
        --ratios 10 20 40 80 160 --out benchmarks/results

LABELS holds "logits" (N, C) or (N, E, C); with (N, C) and a "source_index" or
"image_index" tensor (the image each view came from) the views are regrouped per
image (equal views per image, extra views dropped) so that LPLD pruning can
reuse labels within an image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from labelzip.bench.fidelity import CodecSpec, FidelityRow, measure_point
from labelzip.errors import UnreachableTargetError
from labelzip.io import atomic_path

BASELINES = [
    CodecSpec("dense-fp16", "dense", {"dtype": "fp16"}),
    CodecSpec("topk-mr", "topk", {"decoder": "mr"}),
    CodecSpec("topk-ms", "topk", {"decoder": "ms"}),
    CodecSpec("topk-mrs", "topk", {"decoder": "mrs"}),
    CodecSpec("rskd", "rskd", {"sizing": "measured"}),
    CodecSpec("vqae", "vqae", {}),
]


def load_views(path: str, max_views: int | None) -> torch.Tensor:
    """Logits as (images, views, C); regroups (N, C) by ``source_index`` if present."""
    from safetensors.torch import load_file

    tensors = load_file(path)
    logits = tensors["logits"].float()
    group_key = next((k for k in ("source_index", "image_index") if k in tensors), None)
    if logits.dim() == 2 and group_key is not None:
        source = tensors[group_key]
        groups = [logits[source == s] for s in torch.unique(source)]
        per = min(g.shape[0] for g in groups)
        logits = torch.stack([g[:per] for g in groups])
    elif logits.dim() == 2:
        logits = logits.unsqueeze(1)
    if max_views is not None and logits.shape[0] * logits.shape[1] > max_views:
        per = max(1, max_views // logits.shape[0])
        logits = logits[:, :per]
    return logits.contiguous()


def specs_for(names: list[str]) -> list[CodecSpec]:
    known = {s.label: s for s in BASELINES}
    specs = [known[n] for n in names if n in known]
    if "lpld" in names:
        specs.append(CodecSpec("lpld", "dense", {"dtype": "fp16"}, prune_keep=-1.0))
    return specs


def measure(spec: CodecSpec, logits: torch.Tensor, ratio: float) -> FidelityRow:
    if spec.prune_keep == -1.0:
        # LPLD: dense fp16 labels for 1/ratio of the views, reused for the rest;
        # the keep fraction is the free parameter (a little under 1/ratio for the header).
        keep = 1.0 / (ratio * 1.01)
        lpld = CodecSpec(spec.label, spec.codec, spec.options, prune_keep=keep)
        return measure_point(lpld, logits, ratio=None)
    return measure_point(spec, logits, ratio=ratio)


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def markdown(rows: list[FidelityRow], meta: dict[str, Any]) -> str:
    lines = [
        f"# Rate-distortion: {meta['name']}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']['processor']}, {meta['machine']['cpus']} CPUs, "
        f"torch {meta['machine']['torch']} ({meta['machine']['torch_threads']} threads)  ",
        f"Labels: {meta['num_labels']} x C={meta['num_classes']} "
        f"({meta['shape']}); reference dense fp16 = {meta['reference_bytes']} bytes",
        "",
        "| codec | target | all-in ratio | bits/label | model bytes | KL T=1 | KL T=4 "
        "| KL T=20 | top-1 | top-5 | encode lab/s | decode lab/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = f"{r.target_ratio:g}x" if r.target_ratio else "-"
        lines.append(
            f"| {r.label} | {target} | {r.ratio:.1f}x | {r.bits_per_label:.1f} "
            f"| {r.model_bytes} | {r.kl['T1']:.4f} | {r.kl['T4']:.4f} | {r.kl['T20']:.5f} "
            f"| {r.top1:.4f} | {r.top5:.4f} | {r.encode_labels_per_s:,.0f} "
            f"| {r.decode_labels_per_s:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[FidelityRow], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    labels = sorted({r.label for r in rows})
    panels = [("KL T=1", "T1"), ("KL T=4", "T4"), ("KL T=20", "T20"), ("top-1", None)]
    for ax, (name, key) in zip(axes, panels, strict=True):
        for label in labels:
            pts = sorted(
                (r for r in rows if r.label == label), key=lambda r: r.bits_per_label
            )
            xs = [r.bits_per_label for r in pts]
            ys = [r.kl[key] if key else r.top1 for r in pts]
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log")
        if key:
            ax.set_yscale("log")
        ax.set_xlabel("all-in bits per label")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labels", help=".safetensors with 'logits' (N, C) or (N, E, C)")
    parser.add_argument("--name", required=True, help="result file stem")
    parser.add_argument(
        "--ratios", type=float, nargs="+", default=[10, 20, 40, 80, 160]
    )
    parser.add_argument(
        "--codecs",
        nargs="+",
        default=["topk-mr", "topk-ms", "topk-mrs", "rskd", "lpld", "vqae"],
    )
    parser.add_argument("--max-views", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument(
        "--replot", action="store_true", help="redraw the PNG from the saved JSON"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.replot:
        saved = json.loads((out / f"rd_{args.name}.json").read_text())
        rows = [FidelityRow(**r) for r in saved["rows"]]
        plot(
            rows, out / f"rd_{args.name}.png", f"{args.name}: rate-distortion (all-in)"
        )
        return 0
    torch.set_num_threads(args.threads)
    logits = load_views(args.labels, args.max_views)
    num_labels = logits.shape[0] * logits.shape[1]
    meta: dict[str, Any] = {
        "name": args.name,
        "command": "python benchmarks/rate_distortion.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "shape": list(logits.shape),
        "num_labels": num_labels,
        "num_classes": logits.shape[-1],
        "reference_bytes": num_labels * logits.shape[-1] * 2,
    }
    rows: list[FidelityRow] = []
    skipped: list[dict[str, Any]] = []
    rows.append(
        measure_point(
            CodecSpec("dense-fp16", "dense", {"dtype": "fp16"}), logits, ratio=None
        )
    )
    for spec in specs_for(args.codecs):
        for ratio in args.ratios:
            try:
                row = measure(spec, logits, ratio)
            except UnreachableTargetError as exc:
                skipped.append(
                    {"label": spec.label, "ratio": ratio, "reason": str(exc)}
                )
                print(f"  {spec.label} {ratio:g}x: unreachable ({exc})", flush=True)
                continue
            rows.append(row)
            print(
                f"  {row.label:10s} {ratio:6g}x -> {row.ratio:7.1f}x  "
                f"KL1 {row.kl['T1']:.4f} KL4 {row.kl['T4']:.4f} KL20 {row.kl['T20']:.5f} "
                f"top1 {row.top1:.4f}  fit {row.fit_s:.1f}s",
                flush=True,
            )
    out.mkdir(parents=True, exist_ok=True)
    result = {"meta": meta, "rows": [r.to_dict() for r in rows], "unreachable": skipped}
    with atomic_path(out / f"rd_{args.name}.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    with atomic_path(out / f"rd_{args.name}.md") as tmp:
        tmp.write_text(markdown(rows, meta))
    plot(rows, out / f"rd_{args.name}.png", f"{args.name}: rate-distortion (all-in)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
