"""``labelzip bench``: benchmarks (students trained from compressed labels, label fidelity).

``lm``: LM distillation (teacher labels once, one student per codec and ratio).
``vision``: dataset distillation on Fashion-MNIST (per framework and IPC, one
relabel pass, one student per codec and ratio).
``imagenet``: the vision benchmark's 1000-class track (SRe2L images recovered
from EfficientNet-Lite0, their labels compressed per codec and ratio, label
fidelity and the ImageNet-1K storage table; no students).

The imagenet flags and config (:func:`add_imagenet_flags`, :func:`imagenet_config`,
:func:`run_imagenet_report`) are public: benchmarks/imagenet_track.py reuses them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from labelzip.cli import run_command
from labelzip.cli._common import (
    add_json_option,
    one_line,
    parse_key_values,
    print_json,
    resolve_device,
)
from labelzip.cli.bench_scale import add_scale_parser, run_scale
from labelzip.cli.relabel_lm import quiet_transformers
from labelzip.errors import ConfigError, InputError
from labelzip.io import check_output_path

if TYPE_CHECKING:
    from labelzip.bench.imagenet import ImagenetTrackConfig, ImagenetTrackResult

__all__ = [
    "add_imagenet_flags",
    "add_machine_flags",
    "build_parser",
    "imagenet_config",
    "main",
    "run_imagenet_report",
]

LM_EPILOG = """examples:
  labelzip bench lm                                  # 200k tokens, 6 codecs x 3 ratios
  labelzip bench lm --tokens 20000 --steps 60 --ratios 100 500 --threads 2
  labelzip bench lm --codecs topk-tail topk rskd vqae --device cuda

Labels every training window once (one teacher pass, plus a fitting pass for
learned codecs) into one archive per (codec, ratio), trains a student from each
archive's decoded labels plus a CE-only and an online-KD student (same init, data
order and optimiser), evaluates all on held-out documents and writes
<out-dir>/lm_bench.{json,md,png}. The default codecs are auto (the measured
choice, docs/auto.md), topk-tail, topk, rskd, vqae-sparse and vqae-rs. The default
(200k tokens, 200 steps of 8 x 256 tokens, online KD) takes hours on a CPU: the
teacher runs ~100 tokens/s on 2 cores.
"""


VISION_EPILOG = """examples:
  labelzip bench vision                  # the full spec: hours on a CPU (see below)
  labelzip bench vision --frameworks random sre2l --ipcs 10 --ratios 40 \\
      --codecs vqae topk-ms --threads 1
  labelzip bench vision --ipcs 10 50 --epochs 10:300 50:100 --device cuda
  labelzip bench vision --settings random:10 sre2l:10 random:50 --ratios 40 100

For each framework and IPC: distil the set from Fashion-MNIST (the cached ConvNet
teacher), relabel EPOCHS views per image once into a dense fp16 archive and one
archive per (codec, ratio) at equal all-in bytes (codecs that cannot meet a ratio
with every view keep fewer views per image, LPLD-style; unreachable targets become
skipped rows with the reason), train one student per archive, and report accuracy,
retention (vs the dense-label student), the ratio vs dense fp16 and vs the
framework's shipped labels (LPLD: 40x-pruned), the teacher and a full-data
baseline. Writes <out-dir>/vision_bench.{json,md,png}.

The default (random, sre2l, rded, lpld x IPC 10, 50 x 8 codecs x 10/40/100/300x,
300 views per image; the codecs: auto, vqae, vqae-ctx, ctx-transform, topk-ms,
topk-mrs, lpld, rskd) trains ~260 students: about 9 hours on one CPU thread,
estimated from the per-student times (an IPC 10 student ~30 s, an IPC 50 student
~2.5 min). See docs/bench-vision.md.
"""


IMAGENET_EPILOG = """examples:
  labelzip bench imagenet --threads 1         # 10 classes x IPC 4, 64 px, 40/100/300x
  labelzip bench imagenet --codecs vqae topk-ms --ratios 40 --vqae-steps 1000
  labelzip bench imagenet --device cuda --threads 8 --image-size 224 \\
      --recover-steps 1000 --ipc 10 --classes $(seq 0 99)

Recovers IPC SRe2L images per class from EfficientNet-Lite0 (data-free), relabels
them with EPOCHS seeded views into dense fp32 reference labels (1000 classes),
compresses those into one archive per (codec, ratio) through rate control
(all-in bytes = the file, header included; an unreachable target is reported
with the codec's reason), decodes each and measures KL at T = 1, 4, 20, top-1
agreement and top-5 overlap, then projects the measured bits per label to
ImageNet-1K at --storage-ipc next to the published frameworks' storage. Writes
<out-dir>/imagenet_track.{json,md,png}. No students are trained.

Codec labels: vqae, topk-ms, topk-mrs, rskd (measured sizing), lpld (dense fp16
with LPLD view pruning). CPU cost: the committed result (the defaults with
--vqae-steps 1000, 12,000 labels) took ~11 min (652 s: recover 308 s, relabel
58 s, compress + measure 285 s) on 1 busy thread of a shared 2-core machine; the
default 2000 VQAE steps take longer. See docs/imagenet-track.md.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labelzip bench",
        description="Run a labelzip benchmark: students trained from compressed "
        "labels (lm, vision), label fidelity at 1000 classes (imagenet), or "
        "memory and throughput at millions of labels (scale).",
        epilog="suites: lm (LM distillation), vision (dataset distillation), "
        "imagenet (1000-class label fidelity), scale (millions of labels: memory "
        "and throughput); labelzip bench SUITE --help for each",
    )
    sub = p.add_subparsers(dest="suite", required=True, metavar="SUITE")
    _lm_parser(sub)
    _vision_parser(sub)
    _imagenet_parser(sub)
    add_scale_parser(sub)
    return p


def add_machine_flags(p: argparse.ArgumentParser) -> None:
    """``--threads``, ``--device``, ``--quiet``: how a suite runs, not what."""
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-dir", default="benchmarks/results", help="report folder")
    add_machine_flags(p)
    add_json_option(p)


def _lm_parser(sub: Any) -> None:
    from labelzip.bench.lm import LMBenchConfig
    from labelzip.lm.train import TrainLMConfig

    p = sub.add_parser(
        "lm",
        help="LM distillation",
        description="LM distillation from compressed labels.",
        epilog=LM_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = LMBenchConfig()
    t = TrainLMConfig()
    p.add_argument("--teacher", default=d.teacher, help="teacher name or HF folder")
    p.add_argument(
        "--corpus", nargs="+", default=None, help="'shakespeare', 'kjv' or files"
    )
    p.add_argument("--tokens", type=int, default=d.tokens, help="training tokens")
    p.add_argument("--seq-len", type=int, default=d.corpus.seq_len)
    p.add_argument(
        "--validation-windows",
        type=int,
        default=d.corpus.max_validation_windows,
        help="held-out windows evaluated",
    )
    p.add_argument("--codecs", nargs="+", default=list(d.codecs))
    p.add_argument("--ratios", nargs="+", type=float, default=list(d.ratios))
    p.add_argument("--steps", type=int, default=t.steps)
    p.add_argument("--batch-size", type=int, default=t.batch_size, help="windows")
    p.add_argument("--lr", type=float, default=t.learning_rate)
    p.add_argument("--ce-weight", type=float, default=t.ce_weight)
    p.add_argument("--layers", type=int, default=d.student.num_layers)
    p.add_argument("--hidden", type=int, default=d.student.hidden_size)
    p.add_argument("--heads", type=int, default=d.student.num_heads)
    p.add_argument("--no-online", action="store_true", help="skip online KD")
    p.add_argument(
        "--fit-windows", type=int, default=d.relabel.fit_windows, help="0 = all"
    )
    p.add_argument("--work-dir", help="archive folder (default: <out-dir>/lm_archives)")
    _common_flags(p)


def _vision_parser(sub: Any) -> None:
    from labelzip.bench.vision import VisionBenchConfig
    from labelzip.pipelines.quickstart import ROW_SPECS

    d = VisionBenchConfig()
    p = sub.add_parser(
        "vision",
        help="dataset distillation (Fashion-MNIST)",
        description="Dataset distillation from compressed labels: accuracy and "
        "retention per framework, IPC, codec and all-in ratio.",
        epilog=VISION_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--frameworks",
        nargs="+",
        default=list(d.frameworks),
        help="random, sre2l, cda, lpld, rded",
    )
    p.add_argument("--ipcs", nargs="+", type=int, default=list(d.ipcs))
    p.add_argument(
        "--settings",
        nargs="+",
        metavar="FRAMEWORK:IPC",
        help="run these pairs instead of --frameworks x --ipcs (random:10 random:50)",
    )
    p.add_argument(
        "--codecs",
        nargs="+",
        default=list(d.codecs),
        help=f"from {', '.join(ROW_SPECS)} (dense always runs)",
    )
    p.add_argument("--ratios", nargs="+", type=float, default=list(d.ratios))
    p.add_argument(
        "--epochs",
        nargs="+",
        default=[str(d.epochs)],
        help="views per image: N for every IPC, or IPC:N pairs (10:300 50:100)",
    )
    p.add_argument("--student-epochs", type=int, help="default: the views per image")
    p.add_argument(
        "--student-seeds",
        type=int,
        default=1,
        help="students per archive (seeds --seed, +1, ...); accuracy and "
        "retention are their mean",
    )
    p.add_argument(
        "--archive-seeds",
        type=int,
        default=d.archive_seeds,
        help="archives per compressed row, written with prune seeds 0, 1, ... "
        "(other kept views and fit samples); the report adds their mean and its "
        "standard error across archives (default: %(default)s)",
    )
    p.add_argument("--student-arch", default=d.student.arch, help="convnet, resnet")
    p.add_argument("--teacher-epochs", type=int, default=d.teacher_epochs)
    p.add_argument(
        "--baseline-epochs",
        type=int,
        default=d.baseline_epochs,
        help="full-data baseline epochs (0: skip)",
    )
    p.add_argument(
        "--distill-option",
        action="append",
        metavar="FRAMEWORK:KEY=VALUE",
        help="a distillation option, e.g. sre2l:steps=500 (repeatable)",
    )
    p.add_argument(
        "--image-format",
        default=d.image_format,
        choices=("jpeg", "raw", "png-estimate"),
        help="how the storage columns count distilled images",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--data-dir", help="Fashion-MNIST IDX folder")
    p.add_argument(
        "--work-dir", help="archive folder (default: <out-dir>/vision_archives)"
    )
    _common_flags(p)


def _imagenet_parser(sub: Any) -> None:
    p = sub.add_parser(
        "imagenet",
        help="1000-class track: label fidelity of EfficientNet-Lite0 labels",
        description="The vision benchmark's 1000-class track: KL, top-1 and top-5\n"
        "of compressed EfficientNet-Lite0 labels of SRe2L images per codec and\n"
        "all-in ratio, and the ImageNet-1K storage table.",
        epilog=IMAGENET_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_imagenet_flags(p)
    _common_flags(p)


def add_imagenet_flags(p: argparse.ArgumentParser) -> None:
    """The 1000-class track's config flags; :func:`imagenet_config` reads them."""
    from labelzip.bench.imagenet import DEFAULT_CODECS, ImagenetTrackConfig

    d = ImagenetTrackConfig()
    _add_recovery_flags(p, d)
    _add_label_flags(p, d, [c.label for c in DEFAULT_CODECS])


def _add_recovery_flags(p: argparse.ArgumentParser, d: ImagenetTrackConfig) -> None:
    """Which images the track recovers, and how."""
    p.add_argument(
        "--classes",
        type=int,
        nargs="+",
        default=list(d.classes),
        help="ImageNet-1K class ids, 0..999 (default: %(default)s)",
    )
    p.add_argument(
        "--ipc",
        type=int,
        default=d.ipc,
        help="recovered images per class (default: %(default)s)",
    )
    p.add_argument(
        "--recover-steps",
        type=int,
        default=d.recover_steps,
        help="SRe2L steps (default: %(default)s)",
    )
    p.add_argument(
        "--recover-bn-weight",
        type=float,
        default=d.recover_bn_weight,
        help="BN-statistics loss weight (default: %(default)s); SRe2L: 0.01, needs ~1000 steps",
    )
    p.add_argument(
        "--recover-crop-scale",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=list(d.recover_crop_scale),
        help="crop area range per recovery step (default: %(default)s); SRe2L: 0.08 1",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=d.image_size,
        help="pixels, native 224 (default: %(default)s)",
    )


def _add_label_flags(
    p: argparse.ArgumentParser, d: ImagenetTrackConfig, codecs: list[str]
) -> None:
    """How the track relabels, compresses and projects (defaults from ``d``)."""
    p.add_argument(
        "--epochs",
        type=int,
        default=d.epochs,
        help="relabel views per image (default: %(default)s)",
    )
    p.add_argument(
        "--ratios",
        type=float,
        nargs="+",
        default=list(d.ratios),
        help="all-in targets vs dense fp16 (default: %(default)s)",
    )
    p.add_argument(
        "--codecs",
        nargs="+",
        default=codecs,
        metavar="LABEL",
        help="codec labels (default: %(default)s; also: ctx-transform)",
    )
    p.add_argument(
        "--vqae-steps",
        type=int,
        help="VQAE training steps (default: the codec's, 2000)",
    )
    p.add_argument(
        "--storage-ipc",
        type=int,
        nargs="+",
        default=list(d.storage_ipc),
        help="IPCs of the ImageNet-1K storage table (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seed of everything (default: %(default)s)",
    )


def imagenet_config(args: argparse.Namespace) -> ImagenetTrackConfig:
    """The track's config from :func:`add_imagenet_flags` (plus --device, --threads).

    Raises:
        ConfigError: an unknown codec label or an invalid value, on one line.
    """
    from labelzip.bench.imagenet import (
        DEFAULT_CODECS,
        OPTIONAL_CODECS,
        ImagenetTrackConfig,
    )

    known = {c.label: c for c in (*DEFAULT_CODECS, *OPTIONAL_CODECS)}
    unknown = [c for c in args.codecs if c not in known]
    if unknown:
        raise ConfigError(
            f"unknown codec label(s) {unknown} for --codecs; choose from "
            f"{', '.join(known)}"
        )
    codecs = tuple(known[c] for c in args.codecs)
    if args.vqae_steps is not None:
        codecs = tuple(
            c.model_copy(update={"options": {**c.options, "steps": args.vqae_steps}})
            if c.codec == "vqae"
            else c
            for c in codecs
        )
    try:
        return ImagenetTrackConfig(
            classes=tuple(args.classes),
            ipc=args.ipc,
            recover_steps=args.recover_steps,
            recover_bn_weight=args.recover_bn_weight,
            recover_crop_scale=tuple(args.recover_crop_scale),
            image_size=args.image_size,
            epochs=args.epochs,
            ratios=tuple(args.ratios),
            codecs=codecs,
            storage_ipc=tuple(args.storage_ipc),
            seed=args.seed,
            device=args.device,
            threads=args.threads,
        )
    except ValueError as exc:  # pydantic ValidationError -> one line
        raise ConfigError(f"invalid benchmark options: {one_line(exc)}") from exc


def check_report_paths(out_dir: str, stem: str) -> None:
    """Fail before a long run when ``<out_dir>/<stem>.{json,md,png}`` cannot be
    written (the folder is a file, a report name is a device or folder, ...)."""
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out-dir {out_dir!r} is a file; give a folder")
    if folder.is_dir():  # else the report writer creates it
        for kind in ("json", "md", "png"):
            check_output_path(folder / f"{stem}.{kind}")


def run_imagenet_report(
    args: argparse.Namespace,
    *,
    command: str,
    stem: str = "imagenet_track",
    machine_note: str | None = None,
) -> tuple[ImagenetTrackResult, dict[str, Path]]:
    """Run the track from parsed flags and write ``<args.out_dir>/<stem>.{json,md,png}``.

    Progress goes to stderr (at most every 15 s per stage) unless ``args.quiet``.
    The report's meta holds ``command`` and the machine's load average at start
    and end (plus ``machine_note``): the CPU is usually shared.
    """
    from labelzip.bench.imagenet import run_imagenet_track, write_imagenet_report

    config = imagenet_config(args)
    if config.device != "cpu":
        resolve_device(config.device)  # a one-line error before the teacher loads
    check_report_paths(args.out_dir, stem)
    last = [0.0]

    def progress(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if not args.quiet and (done == total or now - last[0] > 15):
            last[0] = now
            print(f"  {stage}: {done}/{total}", file=sys.stderr, flush=True)

    load_before = os.getloadavg()[0]
    result = run_imagenet_track(config, progress=progress)
    note = (
        f"1-min load average {load_before:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end (shared machine)"
    )
    if machine_note:
        note += f"; {machine_note}"
    meta = {"command": command, "machine_note": note}
    paths = write_imagenet_report(result, args.out_dir, meta=meta, stem=stem)
    return result, paths


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = "labelzip bench " + shlex.join(argv)
    if args.suite == "imagenet":
        return run_command("bench", lambda: _run_imagenet(args, command))
    if args.suite == "scale":
        return run_command("bench", lambda: run_scale(args, command))
    run = _run_vision if args.suite == "vision" else _run
    return run_command("bench", lambda: run(args))


def _config(args: argparse.Namespace) -> object:
    from labelzip.bench.lm import LMBenchConfig
    from labelzip.lm.corpus import CorpusConfig
    from labelzip.lm.relabel import RelabelLMConfig
    from labelzip.lm.student import StudentConfig
    from labelzip.lm.train import TrainLMConfig

    try:
        corpus = CorpusConfig(
            source=(args.corpus[0] if len(args.corpus) == 1 else args.corpus)
            if args.corpus
            else "shakespeare",
            seq_len=args.seq_len,
            max_validation_windows=args.validation_windows,
        )
        return LMBenchConfig(
            teacher=args.teacher,
            tokens=args.tokens,
            corpus=corpus,
            codecs=tuple(args.codecs),
            ratios=tuple(args.ratios),
            student=StudentConfig(
                num_layers=args.layers,
                hidden_size=args.hidden,
                num_heads=args.heads,
                max_position_embeddings=max(args.seq_len, 2),
            ),
            train=TrainLMConfig(
                steps=args.steps,
                batch_size=args.batch_size,
                learning_rate=args.lr,
                ce_weight=args.ce_weight,
            ),
            relabel=RelabelLMConfig(fit_windows=args.fit_windows or None),
            online=not args.no_online,
        )
    except Exception as exc:  # pydantic ValidationError -> one line
        raise ConfigError(f"invalid benchmark options: {one_line(exc)}") from exc


def _run(args: argparse.Namespace) -> int:
    from labelzip.bench.lm import (
        LMBenchConfig,
        markdown_table,
        run_lm_bench,
        write_report,
    )

    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    device = resolve_device(args.device)
    config = _config(args)
    check_report_paths(args.out_dir, "lm_bench")
    assert isinstance(config, LMBenchConfig)
    out = Path(args.out_dir)
    work = Path(args.work_dir) if args.work_dir else out / "lm_archives"
    quiet_transformers()

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr)

    report = run_lm_bench(config, work, device=device, log=log)
    paths = write_report(report, out)
    if args.json:
        print_json({**report, "files": [str(p) for p in paths]})
        return 0
    print(markdown_table(report), end="")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _epochs(values: Sequence[str]) -> tuple[int, dict[int, int]]:
    """``["300"]`` -> (300, {}); ``["10:300", "50:100"]`` -> (300, {10: 300, 50: 100})."""
    default = 300
    per_ipc: dict[int, int] = {}
    for value in values:
        ipc, sep, count = value.partition(":")
        try:
            if sep:
                per_ipc[int(ipc)] = int(count)
            else:
                default = int(ipc)
        except ValueError:
            raise ConfigError(
                f"--epochs expects N or IPC:N (e.g. 300 or 10:300), got {value!r}"
            ) from None
    return default, per_ipc


def _settings(values: Sequence[str] | None) -> tuple[tuple[str, int], ...]:
    out = []
    for value in values or ():
        framework, sep, ipc = value.partition(":")
        if not sep or not framework or not ipc.isdigit():
            raise ConfigError(
                f"--settings expects FRAMEWORK:IPC (e.g. sre2l:10), got {value!r}"
            )
        out.append((framework, int(ipc)))
    return tuple(out)


def _distill_options(values: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for value in values or ():
        framework, sep, pair = value.partition(":")
        if not sep or not framework:
            raise ConfigError(
                f"--distill-option expects FRAMEWORK:KEY=VALUE, got {value!r}"
            )
        out.setdefault(framework, {}).update(
            parse_key_values([pair], "--distill-option")
        )
    return out


def _vision_config(args: argparse.Namespace) -> Any:
    from labelzip.bench.vision import VisionBenchConfig

    default, per_ipc = _epochs(args.epochs)
    try:
        student = VisionBenchConfig().student.model_copy(
            update={
                "epochs": args.student_epochs,
                "arch": args.student_arch,
                "seed": args.seed,
            }
        )
        return VisionBenchConfig.model_validate(
            {
                "frameworks": tuple(args.frameworks),
                "ipcs": tuple(args.ipcs),
                "settings": _settings(args.settings),
                "codecs": tuple(args.codecs),
                "ratios": tuple(args.ratios),
                "epochs": default,
                "epochs_per_ipc": per_ipc,
                "student": student.model_dump(),
                "student_seeds": args.student_seeds,
                "archive_seeds": args.archive_seeds,
                "teacher_epochs": args.teacher_epochs,
                "baseline_epochs": args.baseline_epochs,
                "seed": args.seed,
                "image_format": args.image_format,
                "distill_options": _distill_options(args.distill_option),
            }
        )
    except ValueError as exc:  # pydantic ValidationError -> one line
        raise ConfigError(f"invalid benchmark options: {one_line(exc)}") from exc


def _run_vision(args: argparse.Namespace) -> int:
    from labelzip.bench.vision import markdown_report, run_vision_bench, write_report
    from labelzip.data import load_fashion_mnist

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    config = _vision_config(args)
    device = resolve_device(args.device)
    check_report_paths(args.out_dir, "vision_bench")
    out = Path(args.out_dir)
    work = Path(args.work_dir) if args.work_dir else out / "vision_archives"
    train_set = load_fashion_mnist("train", root=args.data_dir)
    test_set = load_fashion_mnist("test", root=args.data_dir)

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    report = run_vision_bench(
        config,
        train_set=train_set,
        test_set=test_set,
        work_dir=work,
        device=device,
        log=log,
    )
    paths = write_report(report, out)
    if args.json:
        print_json({**report, "files": [str(p) for p in paths]})
        return 0
    print(markdown_report(report), end="")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _run_imagenet(args: argparse.Namespace, command: str) -> int:
    _, paths = run_imagenet_report(args, command=command)
    if args.json:
        saved = json.loads(paths["json"].read_text())
        print_json({**saved, "files": [str(p) for p in paths.values()]})
        return 0
    print(paths["md"].read_text(), end="")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
