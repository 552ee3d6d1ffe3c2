"""``labelzip eval-codec``: fidelity of an archive's labels against the teacher's.

Both sides stream: the archive is decoded batch by batch and the teacher rows of
each batch are read from the logits file (or shard directory) through
:class:`~labelzip.logit_store.LogitStore`, so memory holds one batch of each
whatever the number of labels.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from labelzip.archive import ArchiveReader
from labelzip.cli import run_command
from labelzip.cli._common import (
    add_device_option,
    add_json_option,
    print_json,
    progress,
    resolve_device,
)
from labelzip.distributed import refuse_several_ranks
from labelzip.errors import CodecMismatchError, ConfigError
from labelzip.logit_store import LogitStore, open_logits
from labelzip.ops.metrics import kl_divergence, top1_agreement, topk_overlap

__all__ = ["build_parser", "evaluate", "main"]

EPILOG = """examples:
  labelzip eval-codec logits.safetensors labels.lz
  labelzip eval-codec logits.safetensors labels.lz --temperatures 1 4 20 --json

Reports mean KL(teacher_T || decoded_T) in nats at each KD temperature T (decoded
probabilities floored at 1e-8), top-1 agreement, top-5 overlap and the all-in ratio.
Compare codecs at the temperature your student is trained with.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labelzip eval-codec",
        description="Measure how close an archive's decoded labels are to the teacher.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("logits", help="the teacher logits the archive was made from")
    p.add_argument("archive", help="labelzip archive")
    p.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=[1.0, 4.0, 20.0],
        metavar="T",
        help="KD temperatures to measure KL at (default: 1 4 20)",
    )
    p.add_argument("--key", help="tensor name inside a multi-tensor LOGITS file")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_option(p)
    add_json_option(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("eval-codec", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    refuse_several_ranks("eval-codec")
    if any(t <= 0 for t in args.temperatures):
        raise ConfigError(f"temperatures must be > 0, got {args.temperatures}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    with (
        open_logits(args.logits, key=args.key) as teacher,
        ArchiveReader(args.archive) as reader,
    ):
        result = evaluate(
            reader,
            teacher,
            temperatures=args.temperatures,
            batch_size=args.batch_size,
            device=device,
            show_progress=not args.quiet,
        )
    if args.json:
        print_json(result)
    else:
        _print_text(result)
    return 0


def evaluate(
    reader: ArchiveReader,
    teacher: torch.Tensor | LogitStore,
    *,
    temperatures: Sequence[float] = (1.0, 4.0, 20.0),
    batch_size: int = 4096,
    device: torch.device | str | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Streamed fidelity metrics of every archived label against ``teacher``.

    Args:
        reader: an open archive.
        teacher: (*layout.shape, C) or (num_labels, C) teacher logits, in
            memory or as a store whose rows are read batch by batch.

    Returns:
        ``kl`` (T -> mean nats), ``top1_agreement``, ``top5_overlap`` plus the
        archive's ratio, sizes and bits per label.
    """
    read = _teacher_rows(reader, teacher)
    kl_sums = dict.fromkeys(temperatures, 0.0)
    top1 = top5 = 0.0
    start = 0
    with progress("evaluating", reader.num_labels, enabled=show_progress) as advance:
        for decoded in reader.decode_all(batch_size=batch_size, device=device):
            ref = read(start, start + decoded.shape[0]).to(decoded.device)
            count = decoded.shape[0]
            for t in temperatures:
                kl_sums[t] += float(kl_divergence(ref, decoded, t).double().sum())
            top1 += top1_agreement(ref, decoded) * count
            top5 += topk_overlap(ref, decoded, 5) * count
            start += count
            advance(count)
    n = reader.num_labels
    account = reader.account()
    return {
        "codec": reader.codec_name,
        "num_labels": n,
        "num_classes": reader.num_classes,
        "kl": {f"{t:g}": kl_sums[t] / n for t in temperatures},
        "top1_agreement": top1 / n,
        "top5_overlap": top5 / n,
        "ratio": account.ratio,
        "bits_per_label": account.bits_per_label,
        "total_bytes": account.total_bytes,
        "reference_bytes": account.reference_bytes,
        "pruned": reader.header.prune is not None,
    }


def _teacher_rows(
    reader: ArchiveReader, teacher: torch.Tensor | LogitStore
) -> Callable[[int, int], torch.Tensor]:
    """A reader of float32 teacher label rows ``[start, stop)``, shape checked."""
    shape = tuple(teacher.shape)
    labels, classes = math.prod(shape[:-1]), shape[-1]
    if labels != reader.num_labels or classes != reader.num_classes:
        layout = tuple(reader.layout.shape)
        raise CodecMismatchError(
            f"teacher logits {shape} do not match the archive's "
            f"{layout + (reader.num_classes,)} ({reader.num_labels} labels x "
            f"{reader.num_classes} classes); pass the logits the archive was made from"
        )
    if isinstance(teacher, LogitStore):
        store = teacher
        return lambda start, stop: store.read(start, stop).float()
    rows = teacher.reshape(labels, classes).float()
    return lambda start, stop: rows[start:stop]


def _print_text(result: dict[str, Any]) -> None:
    print(
        f"{result['codec']}: {result['num_labels']} labels, ratio {result['ratio']:.2f}x "
        f"all-in ({result['bits_per_label']:.1f} bits per label)"
    )
    for t, kl in result["kl"].items():
        print(f"  KL(teacher || decoded) at T={t:<4} {kl:.5f} nats")
    print(f"  top-1 agreement      {result['top1_agreement']:.4f}")
    print(f"  top-5 overlap        {result['top5_overlap']:.4f}")
