"""Rate accuracy: the archive size each codec reaches for a requested ratio.

Usage (the committed result was made with the command in its header):
    python benchmarks/rate_accuracy.py LABELS.safetensors --num-labels 10000 \
        --out benchmarks/results/rate_accuracy.md

Every codec's archive must land within 10% of the requested size, or its
account carries a note (``rate_note``) giving the size it reaches and why. The
learned codecs are fitted with a short schedule (--fit-steps): the size a
configuration encodes to barely depends on how long it was trained, and rate
control picks the configuration before training.

The view-context codecs (vqae-ctx, ctx-transform) need each label's view
context: the label set's recipe (view config, seed) and its view order
(``view % images``, ``view // images``) are those of a relabel archive's
``[epoch, sample]`` layout, so the labels are stored in that layout here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any

import torch

from labelzip.archive import ArchiveMetadata, Layout, save_archive
from labelzip.codecs.registry import with_num_images
from labelzip.errors import LabelzipError
from labelzip.io import atomic_path
from labelzip.pipelines.relabel_types import recipe_context
from labelzip.rate import ArchiveTarget, RateGoal, fit_codec, rate_note

# (codec, options, ratios); "steps" style options shorten the learned codecs' fits.
SPECS: list[tuple[str, dict[str, Any], list[float]]] = [
    ("dense", {}, [0.5, 0.75]),
    ("topk", {"decoder": "ms"}, [10, 40, 100, 400]),
    ("topk", {"decoder": "mr"}, [10, 40, 100, 400]),
    ("topk", {"decoder": "mrs"}, [10, 40, 100, 400]),
    ("rskd", {}, [10, 40, 100, 400]),
    ("topk-tail", {}, [10, 40, 100, 400]),
    ("vqae", {"steps": "fit"}, [40, 100, 400]),
    ("vqae-sparse", {"steps": "fit"}, [40, 100]),
    ("vqae-rs", {"steps": "fit"}, [40, 100]),
    ("vqae-ctx", {"prior_steps": "fit"}, [40, 100]),
    ("ctx-transform", {"prior_steps": "fit"}, [40, 100]),
]


def _context_layout(
    recipe: dict[str, Any], logits: torch.Tensor, num_images: int
) -> tuple[Layout, ArchiveMetadata]:
    """[epoch, sample] layout and relabel recipe of the first E * M views."""
    epochs = logits.shape[0] // num_images
    view = {**recipe["view_config"], "mix": "none"}
    relabel = {"view": view, "seed": recipe["seed"], "image_shape": [3, 224, 224]}
    return Layout(("epoch", "sample"), (epochs, num_images)), ArchiveMetadata(
        user={"relabel": relabel}
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labels", help="effnet_views.safetensors (make_label_sets.py)")
    parser.add_argument("--num-labels", type=int, default=10_000)
    parser.add_argument("--fit-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--codecs", nargs="*", help="only these codecs")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from safetensors import safe_open

    with safe_open(args.labels, framework="pt") as handle:
        recipe = json.loads(handle.metadata()["recipe"])
        images = int(handle.get_tensor("image_index").max()) + 1
        logits = handle.get_tensor("logits")[: args.num_labels].float()
    num_labels, num_classes = logits.shape
    rows = [
        "| codec | options | requested | achieved | achieved / target bytes "
        "| within 10% | note | fit + write s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    records = []
    for name, options, ratios in SPECS:
        if args.codecs and name not in args.codecs:
            continue
        opts = {k: args.fit_steps if v == "fit" else v for k, v in options.items()}
        layout, meta = Layout(("sample",), (num_labels,)), ArchiveMetadata()
        context = None
        if name in ("vqae-ctx", "ctx-transform"):
            layout, meta = _context_layout(recipe, logits, images)
            opts = with_num_images(name, opts, images)
            flat = torch.arange(layout.num_labels)
            context = recipe_context(meta.user, layout.dims, layout.shape, flat)
        used = logits[: layout.num_labels]
        for ratio in ratios:
            started = time.perf_counter()
            record: dict[str, Any] = {"codec": name, "options": options, "ratio": ratio}
            try:
                codec = fit_codec(
                    name,
                    lambda used=used: used.split(4096),
                    opts,
                    target=ArchiveTarget(
                        RateGoal(ratio=ratio), layout, num_classes, metadata=meta
                    ),
                    context=context,
                )
                with tempfile.TemporaryDirectory() as tmp:
                    account = save_archive(
                        os.path.join(tmp, "a.lz"),
                        codec,
                        used.reshape(*layout.shape, num_classes),
                        layout=layout,
                        metadata=meta,
                    )
                target = account.reference_bytes / ratio
                note = rate_note(account, codec, RateGoal(ratio=ratio))
                record.update(
                    achieved=account.ratio,
                    fraction=account.total_bytes / target,
                    note=note,
                    config=codec.to_config(),
                )
                cells = [
                    f"{account.ratio:.2f}x",
                    f"{account.total_bytes / target:.3f}",
                    "yes" if note is None else "no",
                    note or "",
                ]
            except LabelzipError as exc:
                record["error"] = str(exc)
                cells = ["error", "", "no", f"error: {exc}"]
            seconds = time.perf_counter() - started
            record["seconds"] = seconds
            records.append(record)
            opt_text = ", ".join(f"{k}={v}" for k, v in options.items()) or "-"
            line = f"| {name} | {opt_text} | {ratio:g}x | " + " | ".join(cells)
            rows.append(f"{line} | {seconds:.0f} |")
            print(rows[-1], flush=True)
    head = [
        "# Rate accuracy: requested vs achieved all-in ratio",
        "",
        f"Command: `python benchmarks/rate_accuracy.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {args.threads} threads  ",
        f"Labels: the first {num_labels} views of {os.path.basename(args.labels)} "
        f"(C={num_classes}, {recipe.get('teacher', '?')}); view-context codecs use "
        "the first whole epochs of views in the relabel [epoch, sample] layout  ",
        "Achieved / target bytes: archive file size over the requested size "
        "(fp16 reference / ratio); a note explains every miss of more than 10%.",
        "",
    ]
    with atomic_path(args.out) as tmp_out:
        tmp_out.write_text("\n".join(head + rows) + "\n", encoding="utf-8")
    json_out = os.path.splitext(args.out)[0] + ".json"
    with atomic_path(json_out) as tmp_json:
        tmp_json.write_text(json.dumps(records, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
