"""A small LLaMA-architecture student that shares its teacher's tokenizer.

Logit distillation compares teacher and student distributions id by id, so the
student must use exactly the teacher's vocabulary: its embedding and output widths
are the teacher's ``vocab_size`` (V), and :func:`check_vocab_match` rejects a
tokenizer whose id -> token map differs. Everything else (depth, width, heads) comes
from a validated :class:`StudentConfig`; initialisation is seeded and leaves the
global torch RNG untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from labelzip.errors import ConfigError
from labelzip.lm.teacher import max_context, require_transformers, tokenizer_fingerprint

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

__all__ = [
    "StudentConfig",
    "build_student",
    "build_student_for_teacher",
    "check_student_vocab",
    "check_vocab_match",
    "student_llama_config",
]


class StudentConfig(BaseModel):
    """Shape of the student transformer; the vocabulary comes from the teacher."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_layers: int = Field(default=2, ge=1, le=64, description="decoder layers")
    hidden_size: int = Field(default=128, ge=16, le=8192, description="model width")
    num_heads: int = Field(default=4, ge=1, le=128, description="attention heads")
    num_kv_heads: int | None = Field(
        default=None,
        ge=1,
        le=128,
        description="key/value heads (GQA); None = num_heads",
    )
    intermediate_size: int | None = Field(
        default=None,
        ge=16,
        le=65536,
        description="MLP width; None = 8/3 x hidden_size rounded up to a multiple of 64",
    )
    max_position_embeddings: int = Field(
        default=2048, ge=2, le=1 << 20, description="longest sequence (tokens)"
    )
    rope_theta: float = Field(default=10000.0, gt=0.0, description="RoPE base")
    rms_norm_eps: float = Field(
        default=1e-5, gt=0.0, le=0.1, description="RMSNorm epsilon"
    )
    tie_word_embeddings: bool = Field(
        default=True,
        description="share input embedding and output head (saves V x hidden)",
    )
    seed: int = Field(default=0, ge=0, description="weight initialisation seed")

    @model_validator(mode="after")
    def _check_heads(self) -> StudentConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads "
                f"{self.num_heads}"
            )
        if self.num_heads % self.resolved_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads "
                f"{self.resolved_kv_heads}"
            )
        return self

    @property
    def resolved_kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def resolved_intermediate_size(self) -> int:
        if self.intermediate_size is not None:
            return self.intermediate_size
        return -(-8 * self.hidden_size // (3 * 64)) * 64


def student_llama_config(
    config: StudentConfig,
    *,
    vocab_size: int,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> LlamaConfig:
    """The transformers ``LlamaConfig`` for ``config`` with vocabulary size V."""
    if vocab_size < 2:
        raise ConfigError(f"vocab_size must be at least 2, got {vocab_size}")
    transformers = require_transformers()
    llama_config: LlamaConfig = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.resolved_intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.resolved_kv_heads,
        max_position_embeddings=config.max_position_embeddings,
        rope_theta=config.rope_theta,
        rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
    return llama_config


def build_student(
    config: StudentConfig,
    *,
    vocab_size: int,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> LlamaForCausalLM:
    """A freshly initialised student; same config and seed give identical weights.

    ``model(input_ids (B, T)).logits`` is (B, T, V) float32.
    """
    transformers = require_transformers()
    llama_config = student_llama_config(
        config,
        vocab_size=vocab_size,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
    # fork_rng: seed the initialisation without moving the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        student: LlamaForCausalLM = transformers.LlamaForCausalLM(llama_config)
    return student


def build_student_for_teacher(
    config: StudentConfig,
    teacher: Any,
    tokenizer: PreTrainedTokenizerBase,
) -> LlamaForCausalLM:
    """A student with the teacher's vocabulary width and special-token ids.

    Raises:
        ConfigError: ``config.max_position_embeddings`` exceeds the teacher's
            context (the student could not be taught positions the teacher lacks),
            or the tokenizer is larger than the teacher's logit width.
    """
    teacher_context = max_context(teacher)
    if config.max_position_embeddings > teacher_context:
        raise ConfigError(
            f"student max_position_embeddings {config.max_position_embeddings} exceeds "
            f"the teacher's context of {teacher_context}; use at most {teacher_context}"
        )
    vocab_size = int(teacher.config.vocab_size)
    if len(tokenizer) > vocab_size:
        raise ConfigError(
            f"tokenizer has {len(tokenizer)} tokens but the teacher's logits have only "
            f"{vocab_size} columns; pass the teacher's own tokenizer"
        )
    return build_student(
        config,
        vocab_size=vocab_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def check_student_vocab(student: Any, teacher: Any) -> None:
    """Raise ConfigError unless student and teacher logits have the same width V."""
    student_v = int(student.config.vocab_size)
    teacher_v = int(teacher.config.vocab_size)
    if student_v != teacher_v:
        raise ConfigError(
            f"student vocab_size {student_v} differs from the teacher's {teacher_v}; "
            "logit distillation needs equal widths: build the student with "
            "build_student_for_teacher"
        )


def check_vocab_match(
    student_tokenizer: PreTrainedTokenizerBase,
    teacher_tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Raise ConfigError unless both tokenizers map every id to the same token.

    The message gives both vocabulary sizes and the first id where they differ.
    """
    if tokenizer_fingerprint(student_tokenizer) == tokenizer_fingerprint(
        teacher_tokenizer
    ):
        return
    student_vocab = {i: t for t, i in student_tokenizer.get_vocab().items()}
    teacher_vocab = {i: t for t, i in teacher_tokenizer.get_vocab().items()}
    differing = sorted(
        i
        for i in set(student_vocab) | set(teacher_vocab)
        if student_vocab.get(i) != teacher_vocab.get(i)
    )
    first = differing[0]
    raise ConfigError(
        f"student tokenizer does not match the teacher's: {len(student_vocab)} vs "
        f"{len(teacher_vocab)} tokens, {len(differing)} ids differ, first at id {first} "
        f"({student_vocab.get(first)!r} vs {teacher_vocab.get(first)!r}); logit "
        "distillation compares ids one by one, so use the teacher's tokenizer"
    )
