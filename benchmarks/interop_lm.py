"""Bytes per token of DistillKit, Megatron-LM and NeMo-Aligner captures vs labelzip.

On SmolLM2-135M labels of a few thousand Shakespeare tokens: the teacher runs once
over ``--tokens`` tokens (windows of ``--seq-len``); each window's first T - 1
positions are the label set (DistillKit stores no label for the last one). Each
framework's store is written at its usual settings by
:mod:`labelzip.bench.lm_stores` (which follows the frameworks' writers); its
bytes are the files on disk and its KL is KL(teacher || labels as the
framework's reader gives them, missing mass spread uniformly) at T = 1, through
the importers' ``to_dense``. labelzip's codecs are configured by their rate
control for an archive of ``--assume-tokens`` tokens (the model bytes amortised
as in a real capture, not over this small sample), fitted on a seeded sample of
``--fit-positions`` labels and measured on every label; bytes per token =
payload + model bytes / assumed tokens. "At equal KL" interpolates labelzip's
curve (log bytes, linear in KL) at each store's KL. Also: labelzip re-encoding
the stores themselves (``labelzip import --codec``), KL still to the teacher.

Writes a Markdown report (and ``.json`` beside it) with the command and machine.

Usage:
    nice python benchmarks/interop_lm.py --tokens 4096 --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from labelzip.archive import ArchiveReader
from labelzip.bench.lm_stores import (
    MegatronSaver,
    write_distillkit,
    write_megatron,
    write_nemo,
)
from labelzip.codecs.baseline.distillkit import preset_config
from labelzip.errors import LabelzipError
from labelzip.interop.base import ImportedStore, ImportOptions
from labelzip.interop.convert import CodecChoice, export_archive, import_store
from labelzip.interop.formats import get_format
from labelzip.lm.corpus import CorpusConfig, build_corpus
from labelzip.lm.teacher import load_teacher, max_context, teacher_logits
from labelzip.ops.metrics import kl_divergence, top1_agreement
from labelzip.rate import ArchiveTarget, RateGoal, configure_codec

BLOCK = 255  # labels per encoded block: one window's positions


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=4096, help="teacher tokens")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--assume-tokens", type=int, default=1_000_000)
    p.add_argument("--fit-positions", type=int, default=2048)
    p.add_argument("--codecs", nargs="+", default=["topk-tail", "vqae-rs"])
    p.add_argument(
        "--ratios", nargs="+", type=float, default=[100, 200, 400, 800, 1600, 3200]
    )
    p.add_argument("--import-ratios", nargs="+", type=float, default=[400, 1600])
    p.add_argument(
        "--archive-ratio",
        type=float,
        default=400,
        help="ratio of the real `labelzip import` + `export` of the DistillKit store",
    )
    p.add_argument("--work-dir", help="where the stores go (default: a temp folder)")
    p.add_argument("--out", default="benchmarks/results/interop_lm.md")
    p.add_argument(
        "--report-from",
        help="rewrite the report from a previous run's .json (no teacher, no codecs)",
    )
    return p


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def label_bytes(fmt: str, path: Path) -> int:
    """Bytes of the label fields alone (the files also hold tokens and metadata)."""
    if fmt == "distillkit":
        total = 0
        for file in path.glob("*.parquet"):
            meta = pq.ParquetFile(file).metadata
            for g in range(meta.num_row_groups):
                for c in range(meta.num_columns):
                    col = meta.row_group(g).column(c)
                    if col.path_in_schema.split(".")[0] != "input_ids":
                        total += col.total_compressed_size
        return total
    if fmt == "nemo-aligner":
        keys = ("topk_logits", "topk_token_ids", "log_sum_exp_logits")
        total = 0
        for file in path.glob("*.jsonl"):
            for line in file.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                total += len(json.dumps({k: row[k] for k in keys}, ensure_ascii=False))
        return total
    return folder_bytes(path)


def store_labels(store: ImportedStore) -> torch.Tensor:
    """Every label of a store as its reader gives it (dense float32, label order)."""
    return torch.cat([store.to_dense(r) for r in store.records()])


def measure(ref: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    kl, top1 = [], []
    for a, b in zip(ref.split(1024), labels.split(1024), strict=True):
        kl.append(kl_divergence(a, b))
        top1.append(top1_agreement(a, b) * a.shape[0])
    return {
        "kl": float(torch.cat(kl).mean()),
        "top1": float(sum(top1) / ref.shape[0]),
    }


def labelzip_point(
    name: str,
    ratio: float,
    source: torch.Tensor,
    ref: torch.Tensor,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One codec at one rate on ``source`` labels; KL against the teacher ``ref``."""
    vocab = int(ref.shape[1])
    # the codec alone (no archive header): the whole goal is its budget
    target = ArchiveTarget.flat(args.assume_tokens, vocab, ratio=ratio, header_bytes=0)
    codec = configure_codec(name, {}, target)
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(source.shape[0], generator=g)[: args.fit_positions]
    t0 = time.perf_counter()
    codec.fit([source[pick.sort().values]], num_labels=args.assume_tokens)
    fit_s = time.perf_counter() - t0
    blocks = [codec.encode(x) for x in source.split(BLOCK)]
    decoded = torch.cat([codec.decode(b) for b in blocks])
    payload = sum(b.nbytes for b in blocks) / source.shape[0]
    return {
        "codec": name,
        "ratio": ratio,
        "payload_bytes_per_token": payload,
        "model_bytes": codec.model_bytes(),
        "bytes_per_token": payload + codec.model_bytes() / args.assume_tokens,
        "fit_s": round(fit_s, 1),
        **measure(ref, decoded),
    }


def archive_loop(
    work: Path, store: Path, ref: torch.Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    """The real path on the DistillKit store: ``labelzip import --codec topk-tail
    --ratio R``, then ``labelzip export`` back to DistillKit files; bytes all-in
    (this small archive pays its whole model), KL of each to the teacher."""
    archive = work / "distillkit_reencoded.lz"
    t0 = time.perf_counter()
    account = import_store(
        store,
        "distillkit",
        archive,
        codec=CodecChoice(
            name="topk-tail",
            goal=RateGoal(ratio=args.archive_ratio),
            fit_sample=args.fit_positions,
        ),
    )
    import_s = time.perf_counter() - t0
    with ArchiveReader(archive) as reader:
        decoded = torch.cat(list(reader.decode_all()))
    out = work / "distillkit_from_archive"
    export_archive(archive, None, out)
    back = get_format("distillkit").open(out, ImportOptions())
    return {
        "ratio": args.archive_ratio,
        "archive_bytes_per_token": folder_bytes(archive) / ref.shape[0],
        "model_bytes": account.model_bytes,
        "import_seconds": round(import_s, 1),
        "archive": measure(ref, decoded),
        "export_bytes_per_token": folder_bytes(out) / ref.shape[0],
        "export": measure(ref, store_labels(back)),
    }


def at_kl(curve: list[dict[str, Any]], kl: float) -> dict[str, Any] | None:
    """Fewest bytes per token on ``curve`` whose KL is ``kl`` (log-linear between
    two points of one codec); ``bound`` when only a measured point with a lower
    KL is known (the bytes at ``kl`` are then at most that)."""
    pts = sorted((p["codec"], p["bytes_per_token"], p["kl"]) for p in curve)
    best: dict[str, Any] | None = None
    for (c0, b0, k0), (c1, b1, k1) in zip(pts, pts[1:], strict=False):
        if c0 != c1 or not (min(k0, k1) <= kl <= max(k0, k1)) or k0 == k1:
            continue
        t = (kl - k0) / (k1 - k0)
        b = math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0)))
        if best is None or b < best["bytes_per_token"]:
            best = {"codec": c0, "bytes_per_token": b, "bound": False}
    for c, b, k in pts:  # a measured point at or below the KL: an upper bound
        if k <= kl and (best is None or b < best["bytes_per_token"]):
            best = {"codec": c, "bytes_per_token": b, "bound": True}
    return best


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report_from:
        report = json.loads(Path(args.report_from).read_text())
        report["meta"]["report_command"] = "python " + " ".join(
            [sys.argv[0], *(argv or sys.argv[1:])]
        )
        finish(report)
        write(report, Path(args.out))
        return 0
    torch.set_num_threads(args.threads)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="interop_lm."))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model, tokenizer, teacher_id = load_teacher()
    corpus = build_corpus(
        CorpusConfig(
            seq_len=args.seq_len, max_train_windows=args.tokens // args.seq_len
        ),
        tokenizer,
        max_context=max_context(model),
    )
    windows = corpus.train
    t0 = time.perf_counter()
    logits = torch.cat(
        [lg.cpu() for _, lg in teacher_logits(model, windows, batch_size=4)]
    )
    teacher_s = time.perf_counter() - t0
    del model
    n, t, vocab = logits.shape
    per_seq = logits[:, : t - 1].contiguous()  # (N, T - 1, V): DistillKit's positions
    del logits
    ref = per_seq.reshape(-1, vocab)
    print(f"teacher: {n} x {t} tokens, V={vocab}, {teacher_s:.0f} s", file=sys.stderr)

    stores: list[tuple[str, str, str, Path]] = []  # (label, format, settings, path)
    dk = {
        "recommended": preset_config("recommended", vocab),
        "budget": preset_config("budget", vocab),
    }
    for name, cfg in dk.items():
        path = work / f"distillkit_{name}"
        write_distillkit(path, per_seq, cfg, tokens=windows)
        stores.append(
            (
                f"DistillKit {name}",
                "distillkit",
                f"k={cfg.k}, exact_k={cfg.exact_k} {cfg.exact_dtype}, "
                f"terms {cfg.polynomial_terms}",
                path,
            )
        )
    for k, p in ((128, None), (32, None), (128, 0.99)):
        path = work / (f"megatron_k{k}" + ("" if p is None else f"_p{p}"))
        saver = MegatronSaver(
            k=k,
            p=p,
            save_dtype="fp16",
            micro_batch=4,
            microbatches=2,
            iterations_per_tar=4,
        )
        write_megatron(path, per_seq, saver)
        stores.append(
            (
                f"Megatron top-{'p' if p else 'k'}",
                "megatron",
                f"k={k}" + (f", p={p}" if p else "") + ", fp16, zstd 3",
                path,
            )
        )
    nemo = work / "nemo"
    nemo.mkdir(exist_ok=True)
    write_nemo(
        nemo / "train_with_logits_0.jsonl",
        per_seq,
        k=100,
        batch_size=4,
        tokens=windows[:, : t - 1],
    )
    stores.append(
        ("NeMo-Aligner", "nemo-aligner", "top_k=100, bf16 logits, JSONL", nemo)
    )

    rows = []
    for label, fmt, settings, path in stores:
        store = get_format(fmt).open(path, ImportOptions(num_classes=vocab))
        got = measure(ref, store_labels(store))
        rows.append(
            {
                "store": label,
                "format": fmt,
                "settings": settings,
                "bytes_per_token": folder_bytes(path) / ref.shape[0],
                "label_bytes_per_token": label_bytes(fmt, path) / ref.shape[0],
                **got,
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr)

    curve = []
    for name in args.codecs:
        for ratio in args.ratios:
            try:
                curve.append(labelzip_point(name, ratio, ref, ref, args))
            except LabelzipError as exc:  # unreachable target, bad options
                print(f"{name} {ratio}x: {exc}", file=sys.stderr)
                continue
            print(json.dumps(curve[-1]), file=sys.stderr)

    on_top = []
    for label, fmt, _, path in stores:
        if (
            label not in ("DistillKit recommended", "Megatron top-k")
            or "k32" in path.name
        ):
            continue
        store = get_format(fmt).open(path, ImportOptions(num_classes=vocab))
        labels = store_labels(store)
        for ratio in args.import_ratios:
            point = labelzip_point("topk-tail", ratio, labels, ref, args)
            on_top.append({"store": label, **point})
            print(json.dumps(on_top[-1]), file=sys.stderr)
        del labels

    loop = archive_loop(work, stores[0][3], ref, args)
    print(json.dumps(loop), file=sys.stderr)

    meta = {
        "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "machine": machine(),
        "teacher": teacher_id,
        "tokens": n * t,
        "labels": int(ref.shape[0]),
        "vocab": vocab,
        "teacher_seconds": round(teacher_s, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "assume_tokens": args.assume_tokens,
        "fit_positions": args.fit_positions,
    }
    report = {
        "meta": meta,
        "stores": rows,
        "labelzip": curve,
        "on_top": on_top,
        "archive_loop": loop,
    }
    finish(report)
    write(report, Path(args.out))
    return 0


def finish(report: dict[str, Any]) -> None:
    """Each store's labelzip match at its KL, from the labelzip curve."""
    for row in report["stores"]:
        match = at_kl(report["labelzip"], row["kl"])
        row["labelzip"] = match
        row["advantage"] = (
            row["bytes_per_token"] / match["bytes_per_token"] if match else None
        )


def write(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.write_text(markdown(report))
    print(out.read_text())


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    m = meta["machine"]
    lines = [
        "# LM capture formats vs labelzip at equal KL (SmolLM2-135M labels)",
        "",
        f"Command: `{meta['command']}`  ",
        *(
            [f"Tables rewritten from its JSON by: `{meta['report_command']}`  "]
            if meta.get("report_command")
            else []
        ),
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, torch {m['torch']} "
        f"({m['torch_threads']} threads), Python {m['python']}; CPU only  ",
        f"Teacher: {meta['teacher']}; {meta['tokens']} Shakespeare tokens, "
        f"{meta['labels']} labels (the first T - 1 positions of each window), "
        f"V = {meta['vocab']}; run took {meta['total_seconds']:.0f} s",
        "",
        "KL = mean KL(teacher || labels) at T = 1 in nats over every label; the "
        "stores' labels are what each framework's reader gives, with the missing "
        "mass spread uniformly over the other tokens (DistillKit SYMMETRIC_UNIFORM, "
        "Megatron's ghost token, NeMo's exact log-sum-exp). Store bytes are the "
        "files on disk (label bytes: the label columns / fields alone). labelzip's "
        f"bytes: payload + model bytes / {meta['assume_tokens']:,} tokens (its rate "
        f"control sized for an archive that large), fitted on {meta['fit_positions']} "
        "sampled labels.",
        "",
        "| store | settings | B/token (files) | B/token (labels) | KL | top-1 | "
        "labelzip B/token at that KL | store / labelzip |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["stores"]:
        lz = r["labelzip"]
        bound = "<= " if lz and lz["bound"] else ""
        lz_txt = (
            f"{bound}{lz['bytes_per_token']:.1f} ({lz['codec']})"
            if lz
            else "not reached"
        )
        adv = (
            f"{'>= ' if bound else ''}{r['advantage']:.1f}x" if r["advantage"] else "-"
        )
        lines.append(
            f"| {r['store']} | {r['settings']} | {r['bytes_per_token']:.1f} | "
            f"{r['label_bytes_per_token']:.1f} | {r['kl']:.4f} | {r['top1']:.3f} | "
            f"{lz_txt} | {adv} |"
        )
    lines += [
        "",
        "labelzip from the teacher's full distributions:",
        "",
        "| codec | target ratio | B/token | model bytes | KL | top-1 | fit s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in report["labelzip"]:
        lines.append(
            f"| {p['codec']} | {p['ratio']:.0f}x | {p['bytes_per_token']:.1f} | "
            f"{p['model_bytes']} | {p['kl']:.4f} | {p['top1']:.3f} | {p['fit_s']} |"
        )
    if report["on_top"]:
        lines += [
            "",
            "labelzip re-encoding a store (`labelzip import --codec topk-tail`), KL "
            "still to the teacher:",
            "",
            "| store | target ratio | B/token | KL | top-1 |",
            "|---|---:|---:|---:|---:|",
        ]
        for p in report["on_top"]:
            lines.append(
                f"| {p['store']} | {p['ratio']:.0f}x | {p['bytes_per_token']:.1f} | "
                f"{p['kl']:.4f} | {p['top1']:.3f} |"
            )
    lines += [
        "",
        "Reading notes. `<=` marks a store whose KL lies beyond the measured labelzip "
        "curve's cheapest point: labelzip needs at most that many bytes there. "
        "vqae-rs samples the tail (unbiased, but each label holds few tail tokens), "
        "which KL punishes for the tokens a sample leaves out, so its KL is not "
        "comparable with the top-k stores' (docs/lm.md: it trains students as well as "
        "RS-KD); the top-k-like `topk-tail` is the fair match here. DistillKit's "
        "polynomial (powers up to t^4 of the position, fitted in float32) follows a "
        "smooth teacher tail but rings on a tail with a step, such as the top K of a "
        "re-encoded label followed by its modelled tail: the re-quantised export "
        "below loses top-1 because its decoded positions 16+ overshoot the exact ones.",
    ]
    loop = report.get("archive_loop")
    if loop:
        a, e = loop["archive"], loop["export"]
        lines += [
            "",
            f"The real loop on the DistillKit (recommended) store: `labelzip import "
            f"--format distillkit --codec topk-tail --ratio {loop['ratio']:.0f} "
            f"--fit-sample {meta['fit_positions']}` wrote an archive of "
            f"{loop['archive_bytes_per_token']:.1f} B/token all-in (its "
            f"{loop['model_bytes']} model bytes spread over only {meta['labels']} "
            f"labels), KL {a['kl']:.4f}, top-1 {a['top1']:.3f} "
            f"({loop['import_seconds']:.0f} s); `labelzip export` wrote DistillKit files "
            f"again ({loop['export_bytes_per_token']:.1f} B/token, re-quantised with the "
            f"store's config), which DistillKit's reader decodes to KL {e['kl']:.4f}, "
            f"top-1 {e['top1']:.3f}.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
