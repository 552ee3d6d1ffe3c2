"""Oracle study: what do SRe2L students lose to a context codec's error, and to fewer views?

The exploratory script behind docs/vqae-design.md, "Transform-coded residual"
(the oracle table), as it ran except that its two scalar-quantiser variants
now share ``sq_labels`` (rerun after that: the same bits and students). Inputs: the archives of a bench run
(``labelzip bench vision --settings sre2l:10 --codecs vqae-ctx-third vqae-ctx
topk-ms --ratios 40 100 --baseline-epochs 0 --student-epochs 1 --threads 2
--work-dir WORK``: the dense archive and the vqae-ctx-third archives are read),
for ``WORK`` and an output folder in the environment (``ORACLE_WORK``,
``ORACLE_OUT``). The set is re-distilled with 2 torch threads, as that run did,
so archive fingerprints match. Variants (comma list): dense (every view), dense3
(dense logits of the third the archive keeps), ctx (the archive), fix (its argmax
swapped to the teacher's), sqS (the archive's prior + scalar quantiser of step S
on the residual's principal axes, on the kept third), dense@K / sqS@K (K kept
views per image), tc40 / tc100 / ctx100 / topk40 / topk100 (archives of other
runs, paths below). Prints the bits, KL(T=4) on stored labels, and one RESULT
line per student seed.

    ORACLE_WORK=WORK ORACLE_OUT=OUT python benchmarks/studies/ctx_oracle_study.py \
        sre2l 40 0,1,2 dense,dense3,fix,ctx,sq1.0,sq2.0,sq3.0,dense@60,dense@30,sq1.0@60,sq0.7@30
"""

import os
import sys
import time
from pathlib import Path

import torch

from labelzip.archive.reader import open_archive
from labelzip.archive.writer import ArchiveWriter
from labelzip.bench.vision import VisionBenchConfig, setting_quickstart_config
from labelzip.codecs.prune import PrunePlan
from labelzip.codecs.registry import create_codec
from labelzip.data.fashion_mnist import load_fashion_mnist
from labelzip.pipelines.quickstart import (
    build_distilled_set,
    prepare_teacher,
    with_input_stats,
)
from labelzip.pipelines.relabel_types import recipe_context
from labelzip.pipelines.replay import ReplayDataset, ViewCache
from labelzip.pipelines.train_student import train_student

torch.set_num_threads(1)

fw = sys.argv[1]
ratio = sys.argv[2]
seeds = [int(s) for s in sys.argv[3].split(",")]
variants = sys.argv[4].split(",")
W = Path(os.environ["ORACLE_WORK"])
OUT = Path(os.environ["ORACLE_OUT"])
OUT.mkdir(exist_ok=True)
train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
cfg = VisionBenchConfig(
    settings=((fw, 10),), codecs=("vqae-ctx-third",), ratios=(40.0,), baseline_epochs=0
)
q = setting_quickstart_config(cfg, fw, 10)
dev = torch.device("cpu")
model, tid, tacc, _ = prepare_teacher(q, train, test, dev, None)
torch.set_num_threads(2)
imgs = build_distilled_set(q, train, model, tid, dev, lambda *a: None)
torch.set_num_threads(1)
dense = open_archive(W / f"{fw}_ipc10_dense.lz")
D = torch.cat(list(dense.decode_all()))
src = open_archive(W / f"{fw}_ipc10_vqae-ctx-third_{ratio}x.lz")
plan = src.prune
kept = plan.kept_indices()
dec = torch.cat(list(src._stored_chunks(dev)))
T = D[kept]


def write(name, rows, pl=None):
    codec = create_codec("dense").fit([rows[:10]])
    p = OUT / f"{name}.lz"
    with ArchiveWriter(
        p, codec, layout=src.layout, prune=pl or plan, metadata=src.metadata
    ) as w:
        w.write_kept(rows)
    return p


TC = Path(os.environ.get("ORACLE_TC_WORK", W))  # a ctx-transform run's work dir
paths = {
    "tc40": TC / f"{fw}_ipc10_ctx-transform_40x.lz",
    "tc100": TC / f"{fw}_ipc10_ctx-transform_100x.lz",
    "ctx100": W / f"{fw}_ipc10_vqae-ctx-third_100x.lz",
    "topk40": W / f"{fw}_ipc10_topk-ms_40x.lz",
    "topk100": W / f"{fw}_ipc10_topk-ms_100x.lz",
    "ctx": W / f"{fw}_ipc10_vqae-ctx-third_{ratio}x.lz",
    "dense": W / f"{fw}_ipc10_dense.lz",
}
if "dense3" in variants:
    paths["dense3"] = write("dense3", T)
if "fix" in variants:
    fixed = dec.clone()
    t1 = T.argmax(1)
    d1 = dec.argmax(1)
    bad = (t1 != d1).nonzero().reshape(-1)
    a = fixed[bad, t1[bad]].clone()
    fixed[bad, t1[bad]] = fixed[bad, d1[bad]]
    fixed[bad, d1[bad]] = a
    print("fixed", len(bad), "of", len(dec))
    paths["fix"] = write("fix", fixed)
if "raise" in variants:  # raise the true argmax just above the decoded max
    fixed = dec.clone()
    t1 = T.argmax(1)
    m = dec.max(1).values
    fixed[torch.arange(len(dec)), t1] = torch.maximum(
        fixed[torch.arange(len(dec)), t1], m + 0.05
    )
    paths["raise"] = write("raise", fixed)


def sq_labels(teacher, ctx, step):
    """The archive's prior + a step-s scalar quantiser on the residual's principal
    axes: (labels, summed empirical entropy of the integers per axis, in bits)."""
    protos, _ = src.codec._float_state(dev)
    prior = src.codec._prior(protos, ctx)
    R = teacher - teacher.mean(1, keepdim=True) - prior
    mu = R.mean(0)
    _, _, V = torch.linalg.svd(R - mu, full_matrices=False)
    Q = torch.round(((R - mu) @ V.T) / step)
    ent = 0.0
    for j in range(Q.shape[1]):
        _, c = torch.unique(Q[:, j], return_counts=True)
        pp = c.double() / c.sum()
        ent += float(-(pp * pp.log2()).sum())
    return prior + mu + (Q * step) @ V, ent


for v in variants:
    if "@" in v:
        kind, keep = v.split("@")
        keep = int(keep)
        pl = PrunePlan(src.layout.dims, src.layout.shape, keep / 300, 0)
        kk = pl.kept_indices()
        Tk = D[kk]
        if kind == "dense":
            paths[v] = write(v.replace("@", "_"), Tk, pl)
        else:
            step = float(kind[2:])
            ctx = recipe_context(src.header.user, src.layout.dims, src.layout.shape, kk)
            labels, ent = sq_labels(Tk, ctx, step)
            print(
                v,
                "bits",
                round(ent, 2),
                "kept",
                len(kk),
                "KB",
                round(ent * len(kk) / 8 / 1024, 2),
            )
            paths[v] = write(v.replace("@", "_"), labels, pl)
        continue
    if v.startswith("sq"):
        step = float(v[2:])
        ctx = src.stored_context(torch.arange(len(kept)))
        labels, ent = sq_labels(T, ctx, step)
        print(v, "bits", round(ent, 2))
        paths[v] = write(v, labels)


def kl(t, d, T=4.0):
    pt = torch.log_softmax(t / T, -1)
    pd = torch.log_softmax(d / T, -1)
    return float((pt.exp() * (pt - pd)).sum(-1).mean())


student0 = with_input_stats(cfg.student, train)
cache = ViewCache()
for v in variants:
    p = paths[v]
    if v in ("dense3", "fix", "raise", "ctx") or v.startswith("sq") and "@" not in v:
        r = open_archive(p)
        dd = torch.cat(list(r._stored_chunks(dev)))
        print(
            v,
            "KL4 stored",
            round(kl(T, dd), 4),
            "top1",
            round(float((dd.argmax(1) == T.argmax(1)).float().mean()), 3),
            flush=True,
        )
    for s in seeds:
        t0 = time.time()
        rep = ReplayDataset(imgs, p, device=dev, view_cache=cache)
        st = train_student(rep, student0.model_copy(update={"seed": s}), test_set=test)
        rep.close()
        print(
            f"RESULT {fw} {ratio} {v} seed {s} acc {st.accuracy:.4f} ({time.time() - t0:.0f}s)",
            flush=True,
        )
