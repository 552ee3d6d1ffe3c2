"""benchmarks/make_lm_label_set.py end to end on the tiny teacher and a tiny corpus."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from labelzip.lm.teacher import load_teacher

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "make_lm_label_set.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_lm_label_set", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_label_set_files_and_readme(
    tiny_teacher_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "text"
    text.mkdir()
    for i in range(6):
        (text / f"{i}.txt").write_text(f"Document {i} says the same thing again. " * 6)
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("# dev sets\n\nsection written by someone else\n")
    argv = [
        "--teacher", str(tiny_teacher_dir), "--corpus", str(text), "--seq-len", "8",
        "--batch-size", "2", "--train-tokens", "40", "--test-tokens", "16",
        "--validation-fraction", "0.34", "--out-dir", str(out), "--prefix", "lm_tiny",
    ]  # fmt: skip
    script = _script()
    assert script.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train"]["tokens"] == 40 and summary["test"]["tokens"] == 16

    model, tokenizer, teacher_id = load_teacher(tiny_teacher_dir)
    train = load_file(str(out / "lm_tiny.safetensors"))
    test = load_file(str(out / "lm_tiny_test.safetensors"))
    assert (
        train["logits"].shape == (40, len(tokenizer))
        and train["logits"].dtype == torch.float16
    )
    assert test["logits"].shape == (16, len(tokenizer)) and test["token_ids"].shape == (
        16,
    )
    windows = train["token_ids"].view(5, 8)
    expected = model(windows).logits.reshape(40, -1).half()
    torch.testing.assert_close(train["logits"], expected, rtol=1e-3, atol=1e-3)
    logp = train["logits"].float().log_softmax(-1).view(5, 8, -1)[:, :-1]
    nll = -logp.gather(2, windows[:, 1:, None]).mean()  # rows that have a target
    assert summary["train"]["perplexity"] == pytest.approx(float(nll.exp()), abs=0.01)
    top1 = (logp.argmax(-1) == windows[:, 1:]).float().mean()
    assert summary["train"]["next_token_top1"] == pytest.approx(float(top1), abs=1e-3)

    metas = {}
    for split, name in (("train", "lm_tiny"), ("test", "lm_tiny_test")):
        with safe_open(str(out / f"{name}.safetensors"), "pt") as f:
            metas[split] = f.metadata()
        assert metas[split]["teacher_id"] == teacher_id
        assert metas[split]["split"] == split
    train_docs = set(json.loads(metas["train"]["documents"]))
    test_docs = set(json.loads(metas["test"]["documents"]))
    assert len(train_docs) == 4 and len(test_docs) == 2 and not train_docs & test_docs

    # A second run replaces its own README section and keeps the others.
    assert script.main(argv) == 0
    readme = (out / "README.md").read_text()
    assert readme.startswith("# dev sets\n\nsection written by someone else\n")
    assert readme.count("## lm_tiny*: real LM teacher logits") == 1
    assert "`lm_tiny_test.safetensors`" in readme
