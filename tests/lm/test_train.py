"""train_student / evaluate_students: KD from archives, online KD, CE, DDP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from labelzip.archive import ArchiveReader
from labelzip.errors import ConfigError, InputError
from labelzip.lm.corpus import CorpusConfig, build_corpus
from labelzip.lm.evaluate import distribution_kl, evaluate_students, next_token_nll
from labelzip.lm.provenance import check_lm_archive
from labelzip.lm.relabel import LMOutput, RelabelLMConfig, relabel_lm
from labelzip.lm.student import StudentConfig, build_student, build_student_for_teacher
from labelzip.lm.teacher import load_teacher
from labelzip.lm.train import (
    ArchiveLabels,
    TeacherLabels,
    TrainLMConfig,
    batch_order,
    kd_loss,
    learning_rate_at,
    train_student,
)

from .test_relabel import write_documents

STUDENT = StudentConfig(
    num_layers=1, hidden_size=32, num_heads=2, max_position_embeddings=64
)
TRAIN = TrainLMConfig(steps=30, batch_size=6, learning_rate=1e-2, warmup_steps=3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_teacher_dir: Path) -> Any:
    """A tiny teacher trained with CE on the corpus (so its labels carry signal)."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("train")
    model, tokenizer, teacher_id = load_teacher(tiny_teacher_dir)
    cfg = CorpusConfig(
        source=str(write_documents(folder / "docs", count=6)),
        seq_len=16,
        validation_fraction=0.2,
    )
    corpus = build_corpus(cfg, tokenizer, max_context=64)
    model.requires_grad_(True)
    train_student(model, corpus.train, None, TrainLMConfig(steps=60, batch_size=8))
    model.requires_grad_(False).eval()
    archives = {}
    for name, codec, options in (
        ("dense", "dense", {}),
        ("tail", "topk-tail", {"k": 8}),
        ("rs", "vqae-rs", {"k": 8, "sample_scale": 32.0, "steps": 100, "hidden": 16}),
    ):
        path = folder / f"{name}.lz"
        relabel_lm(
            model,
            tokenizer,
            corpus.train,
            LMOutput(path=path, codec=codec, options=options),
            RelabelLMConfig(batch_size=8, fit_windows=8),
            teacher_id=teacher_id,
        )
        archives[name] = path
    return model, tokenizer, corpus, archives


def _student(setup: Any) -> Any:
    model, tokenizer, _, _ = setup
    return build_student_for_teacher(STUDENT, model, tokenizer)


def test_batch_order_is_seeded_and_never_repeats_within_a_batch() -> None:
    a = list(batch_order(10, 4, 7, seed=1))
    assert [b.tolist() for b in a] == [b.tolist() for b in batch_order(10, 4, 7, 1)]
    assert len(a) == 7 and all(len(set(b.tolist())) == 4 for b in a)
    # two batches per epoch of 10 windows (2 left over), then a new permutation
    assert len(set(a[0].tolist()) | set(a[1].tolist())) == 8
    with pytest.raises(ConfigError, match="batch_size 12 exceeds the 10 training"):
        next(batch_order(10, 12, 1, 0))


def test_learning_rate_warms_up_then_decays() -> None:
    cfg = TrainLMConfig(steps=100, learning_rate=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate_at(0, cfg) == pytest.approx(0.1)
    assert learning_rate_at(9, cfg) == pytest.approx(1.0)
    assert learning_rate_at(10, cfg) == pytest.approx(1.0)
    assert learning_rate_at(100, cfg) == pytest.approx(0.1)
    lrs = [learning_rate_at(s, cfg) for s in range(10, 100)]
    assert all(b <= a for a, b in zip(lrs, lrs[1:], strict=False))


def test_kd_loss_is_kl_and_ignores_tokens_without_mass() -> None:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 7, generator=g, requires_grad=True)
    target = torch.randn(2, 3, 7, generator=g)
    p = torch.softmax(target / 2, -1)
    ref = (p * (p.log() - torch.log_softmax(student / 2, -1))).sum(-1).mean() * 4
    torch.testing.assert_close(kd_loss(student, target, 2.0), ref)
    assert float(kd_loss(target, target, 1.0)) == pytest.approx(0.0, abs=1e-6)
    sparse = target.clone()
    sparse[..., 4:] = float("-inf")  # e.g. top-K renormalised labels
    loss = kd_loss(student, sparse, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(student.grad).all())
    kept = torch.softmax(target[..., :4], -1)
    ref = (kept * (kept.log() - torch.log_softmax(student, -1)[..., :4])).sum(-1)
    torch.testing.assert_close(loss, ref.mean().detach())


def test_dense_labels_train_like_online_kd(setup: Any) -> None:
    model, _, corpus, archives = setup
    config = TRAIN.model_copy(update={"steps": 12})
    with ArchiveReader(archives["dense"]) as reader:
        a = train_student(_student(setup), corpus.train, ArchiveLabels(reader), config)
    b = train_student(_student(setup), corpus.train, TeacherLabels(model), config)
    assert [h["step"] for h in a.history] == [10.0, 12.0]
    for x, y in zip(a.history, b.history, strict=True):  # fp16 labels: tiny gap
        assert x["kd"] == pytest.approx(y["kd"], rel=1e-2, abs=1e-4)


def test_relabel_archive_train_path(setup: Any) -> None:
    model, tokenizer, corpus, archives = setup
    students = {}
    with ArchiveReader(archives["tail"]) as reader:
        check_lm_archive(
            reader, tokenizer=tokenizer, windows=corpus.train, vocab_size=262
        )
        labels = ArchiveLabels(reader)
        students["labels"] = _student(setup)
        first = train_student(students["labels"], corpus.train, labels, TRAIN)
        again = train_student(_student(setup), corpus.train, labels, TRAIN)
    assert first.history == again.history  # same seeds, same run
    assert first.mode == "archivelabels" and first.tokens_seen == 30 * 6 * 16
    students["online"] = _student(setup)
    train_student(students["online"], corpus.train, TeacherLabels(model), TRAIN)
    students["ce"] = _student(setup)
    train_student(students["ce"], corpus.train, None, TRAIN, mode="ce")
    scores = evaluate_students(students, corpus.validation, teacher=model)
    kl = {name: s.kl_to_teacher for name, s in scores.items()}
    # measured: labels (top-8 of 262 + tail) 0.089, online 0.0012, ce 0.55 nats
    assert kl["labels"] < 0.3 * kl["ce"] and kl["online"] < 0.05 * kl["ce"]
    for s in scores.values():
        assert s.perplexity == pytest.approx(float(torch.tensor(s.nll).exp()))
        assert s.tokens == corpus.validation.shape[0] * 15


def test_sampled_tail_labels_train_a_student(setup: Any) -> None:
    """vqae-rs labels (-inf off the sampled support) train like the other KD labels."""
    model, _, corpus, archives = setup
    students = {"labels": _student(setup), "ce": _student(setup)}
    with ArchiveReader(archives["rs"]) as reader:
        decoded = reader.decode(slice(0, 16))
        assert bool(torch.isinf(decoded).any())  # sparse sampled tails
        result = train_student(
            students["labels"], corpus.train, ArchiveLabels(reader), TRAIN
        )
    assert result.history[-1]["kd"] < result.history[0]["kd"]
    train_student(students["ce"], corpus.train, None, TRAIN, mode="ce")
    scores = evaluate_students(students, corpus.validation, teacher=model)
    # measured: 0.0053 vs 0.546 nats (topk-tail at k = 8 above: 0.089)
    assert scores["labels"].kl_to_teacher < 0.05 * scores["ce"].kl_to_teacher


def test_ce_weight_mixes_the_losses(setup: Any) -> None:
    model, _, corpus, _ = setup
    config = TRAIN.model_copy(update={"steps": 2, "log_every": 1, "ce_weight": 0.25})
    result = train_student(_student(setup), corpus.train, TeacherLabels(model), config)
    for h in result.history:
        assert h["loss"] == pytest.approx(0.75 * h["kd"] + 0.25 * h["ce"], rel=1e-5)


def test_evaluate_scores_the_teacher_against_itself(setup: Any) -> None:
    model, _, corpus, _ = setup
    scores = evaluate_students({"t": model}, corpus.validation, teacher=model)["t"]
    assert scores.kl_to_teacher == pytest.approx(0.0, abs=1e-5)
    assert scores.top1_agreement == 1.0
    ids = corpus.validation
    with torch.no_grad():
        nll = next_token_nll(model(input_ids=ids).logits, ids)
    assert scores.nll == pytest.approx(float(nll.mean()), rel=1e-5)
    assert float(distribution_kl(torch.zeros(3), torch.zeros(3))) == 0.0
    with pytest.raises(InputError, match="validation needs"):
        evaluate_students({"t": model}, ids[:0], teacher=model)


def test_vocabulary_mismatch_is_refused(setup: Any) -> None:
    model, _, corpus, archives = setup
    wide = build_student(STUDENT, vocab_size=300)
    with (
        ArchiveReader(archives["tail"]) as reader,
        pytest.raises(
            InputError, match="KD targets have shape .* but the student outputs"
        ),
    ):
        train_student(wide, corpus.train, ArchiveLabels(reader), TRAIN)
    with pytest.raises(InputError, match="must share the vocabulary"):
        evaluate_students({"wide": wide}, corpus.validation, teacher=model)


_DDP_SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
from labelzip.lm.student import StudentConfig, build_student
from labelzip.lm.train import TrainLMConfig, init_distributed, train_student
init_distributed(torch.device("cpu"))
cfg = json.loads(sys.argv[1])
windows = torch.load(sys.argv[2])
student = build_student(StudentConfig(**cfg["student"]), vocab_size=262)
train_student(student, windows, None, TrainLMConfig(**cfg["train"]))
if torch.distributed.get_rank() == 0:
    torch.save(student.state_dict(), sys.argv[3])
torch.distributed.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow  # two fresh Python processes importing transformers: ~30 s
def test_two_gloo_ranks_train_like_one_process(tmp_path: Path) -> None:
    windows = torch.randint(0, 262, (8, 12), generator=torch.Generator().manual_seed(0))
    torch.save(windows, tmp_path / "w.pt")
    config = TrainLMConfig(steps=3, batch_size=4, warmup_steps=1)
    cfg = {"student": STUDENT.model_dump(), "train": config.model_dump()}
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    env = {
        **os.environ,
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                json.dumps(cfg),
                str(tmp_path / "w.pt"),
                str(tmp_path / "ddp.pt"),
            ],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stderr=subprocess.PIPE,
        )
        for rank in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    single = build_student(STUDENT, vocab_size=262)
    train_student(single, windows, None, config)
    ddp = torch.load(tmp_path / "ddp.pt")
    for name, value in single.state_dict().items():
        torch.testing.assert_close(ddp[name], value, rtol=1e-4, atol=1e-5)
