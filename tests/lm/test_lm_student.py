"""The LLaMA student: config validation, seeded construction, vocabulary checks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from labelzip.errors import ConfigError, InputError
from labelzip.lm.student import (
    StudentConfig,
    build_student,
    build_student_for_teacher,
    check_student_vocab,
    check_vocab_match,
    student_llama_config,
)
from labelzip.lm.teacher import load_teacher

from .conftest import TINY_CONTEXT, make_tokenizer

SMALL = StudentConfig(
    num_layers=2,
    hidden_size=32,
    num_heads=4,
    num_kv_heads=2,
    max_position_embeddings=TINY_CONTEXT,
)


def test_config_validation() -> None:
    assert (
        StudentConfig().resolved_intermediate_size == 384
    )  # 8/3 * 128 -> 341.3 -> 384
    assert StudentConfig(hidden_size=192, num_heads=3).resolved_intermediate_size == 512
    assert StudentConfig(intermediate_size=100).resolved_intermediate_size == 100
    assert StudentConfig(num_heads=4).resolved_kv_heads == 4
    with pytest.raises(
        ValidationError, match="hidden_size 130 is not divisible by num_heads 4"
    ):
        StudentConfig(hidden_size=130)
    with pytest.raises(
        ValidationError, match="num_heads 4 is not a multiple of num_kv_heads 3"
    ):
        StudentConfig(num_kv_heads=3)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        StudentConfig(num_layers=0)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        StudentConfig(num_layer=2)  # type: ignore[call-arg]


def test_llama_config_fields() -> None:
    cfg = student_llama_config(SMALL, vocab_size=300, bos_token_id=1, eos_token_id=2)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers) == (300, 32, 2)
    assert (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.intermediate_size,
    ) == (4, 2, 128)
    assert cfg.tie_word_embeddings and cfg.max_position_embeddings == TINY_CONTEXT
    with pytest.raises(ConfigError, match="vocab_size must be at least 2, got 1"):
        student_llama_config(SMALL, vocab_size=1)


def test_build_student_is_seeded_and_leaves_global_rng_alone() -> None:
    rng_before = torch.get_rng_state()
    a = build_student(SMALL, vocab_size=300)
    assert torch.equal(torch.get_rng_state(), rng_before)
    b = build_student(SMALL, vocab_size=300)
    c = build_student(SMALL.model_copy(update={"seed": 1}), vocab_size=300)
    for (name, pa), pb in zip(
        a.state_dict().items(), b.state_dict().values(), strict=True
    ):
        assert torch.equal(pa, pb), name
    emb = "model.embed_tokens.weight"
    assert not torch.equal(a.state_dict()[emb], c.state_dict()[emb])
    ids = torch.tensor([[1, 5, 7, 299]])
    assert a(ids).logits.shape == (1, 4, 300)
    # tied head: V x hidden counted once
    per_layer = (
        4 * 32 * 8 * 2 + 2 * 32 * 8 * 2 + 3 * 32 * 128 + 2 * 32
    )  # q,o + k,v + mlp + norms
    assert a.num_parameters() == 300 * 32 + 2 * per_layer + 32


def test_student_for_teacher_uses_teacher_vocab(tiny_teacher_dir: Path) -> None:
    teacher, tokenizer, _ = load_teacher(tiny_teacher_dir)
    student = build_student_for_teacher(SMALL, teacher, tokenizer)
    assert student.config.vocab_size == teacher.config.vocab_size
    assert student.config.eos_token_id == tokenizer.eos_token_id
    check_student_vocab(student, teacher)
    too_long = SMALL.model_copy(update={"max_position_embeddings": TINY_CONTEXT * 2})
    with pytest.raises(
        ConfigError,
        match="max_position_embeddings 128 exceeds the teacher's context of 64",
    ):
        build_student_for_teacher(too_long, teacher, tokenizer)
    bigger_tok = make_tokenizer(extra_tokens=("<extra>",))
    with pytest.raises(
        ConfigError,
        match="tokenizer has 263 tokens but the teacher's logits have only 262",
    ):
        build_student_for_teacher(SMALL, teacher, bigger_tok)


def test_student_vocab_width_mismatch(tiny_teacher_dir: Path) -> None:
    teacher, _, _ = load_teacher(tiny_teacher_dir)
    student = build_student(SMALL, vocab_size=100)
    with pytest.raises(
        ConfigError, match="student vocab_size 100 differs from the teacher's 262"
    ):
        check_student_vocab(student, teacher)


def test_vocab_match(tiny_teacher_dir: Path, tiny_tokenizer: Any) -> None:
    _, teacher_tok, _ = load_teacher(tiny_teacher_dir)
    check_vocab_match(tiny_tokenizer, teacher_tok)  # same vocabulary, separate objects
    with pytest.raises(
        ConfigError,
        match=r"262 vs 263 tokens, 1 ids differ, first at id 262 \(None vs '<x>'\)",
    ):
        check_vocab_match(teacher_tok, make_tokenizer(extra_tokens=("<x>",)))


def test_missing_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(InputError, match="pip install transformers=="):
        build_student(SMALL, vocab_size=300)
