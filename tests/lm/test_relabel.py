"""relabel_lm: streaming teacher -> codec -> archive, two-pass fitting, fingerprints."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from labelzip.archive import ArchiveReader, save_archive
from labelzip.codecs.registry import create_codec
from labelzip.errors import CodecMismatchError, ConfigError, InputError
from labelzip.lm.corpus import CorpusConfig, build_corpus, corpus_fingerprint
from labelzip.lm.provenance import (
    LAYOUT_DIMS,
    check_lm_archive,
    corpus_config_of,
    corpus_record,
    lm_archive_record,
)
from labelzip.lm.relabel import (
    LMOutput,
    RelabelLMConfig,
    check_windows,
    needs_fit_sample,
    relabel_lm,
    relabel_lm_many,
)
from labelzip.lm.reservoir import PositionReservoir
from labelzip.lm.teacher import (
    load_teacher,
    require_transformers,
    teacher_fingerprint,
    tokenizer_fingerprint,
)

from .conftest import make_tokenizer

WORDS = (
    "the king and queen of the land sat at a long table while their court spoke "
    "of war and peace and the price of bread in the town below the hill"
).split()


def write_documents(folder: Path, count: int = 5, words: int = 160) -> Path:
    """``count`` seeded pseudo-English .txt documents in ``folder``."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        (folder / f"doc{i}.txt").write_text(text + ".\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir: Path) -> tuple[Any, Any, str]:
    return load_teacher(tiny_teacher_dir)


@pytest.fixture(scope="module")
def corpus_setup(
    tmp_path_factory: pytest.TempPathFactory, teacher: tuple[Any, Any, str]
) -> tuple[CorpusConfig, Any]:
    docs = write_documents(tmp_path_factory.mktemp("docs") / "text")
    cfg = CorpusConfig(source=str(docs), seq_len=16, validation_fraction=0.2)
    return cfg, build_corpus(cfg, teacher[1], max_context=64)


def _run(
    teacher: tuple[Any, Any, str],
    corpus_setup: tuple[CorpusConfig, Any],
    path: Path,
    codec: str,
    config: RelabelLMConfig | None = None,
    **kwargs: Any,
) -> Any:
    model, tokenizer, teacher_id = teacher
    cfg, corpus = corpus_setup
    return relabel_lm(
        model,
        tokenizer,
        corpus.train,
        LMOutput(path=path, codec=codec, **kwargs),
        config or RelabelLMConfig(batch_size=3, fit_windows=4, fit_positions=40),
        teacher_id=teacher_id,
        corpus=corpus_record(cfg, corpus),
    )


def test_one_pass_stores_every_position_with_provenance(
    tmp_path: Path, teacher: tuple[Any, Any, str], corpus_setup: Any
) -> None:
    model, tokenizer, teacher_id = teacher
    cfg, corpus = corpus_setup
    n, t = corpus.train.shape
    options = {"k": 6, "decoder": "mr"}
    result = _run(teacher, corpus_setup, tmp_path / "a.lz", "topk", options=options)
    assert not result.two_pass and result.teacher_positions == n * t
    assert result.num_tokens == n * t and result.fit_positions == 0
    with ArchiveReader(tmp_path / "a.lz") as reader:
        assert reader.layout.dims == LAYOUT_DIMS and reader.layout.shape == (n, t)
        assert reader.num_chunks == n  # one window per chunk
        # the stored bytes are the codec applied to the teacher's own logits
        logits = model(input_ids=corpus.train[2:4]).logits.reshape(-1, len(tokenizer))
        codec = create_codec("topk", **options).fit([logits])
        flat = reader.layout.ravel(torch.tensor([[2], [3]]), torch.arange(t)[None])
        assert torch.equal(
            reader.decode(flat.reshape(-1)), codec.decode(codec.encode(logits))
        )
        record = lm_archive_record(reader)
        tok_fp = tokenizer_fingerprint(tokenizer)
        assert reader.metadata.teacher == teacher_id == record.teacher
        assert reader.metadata.dataset_fingerprint == corpus_fingerprint(
            corpus.train, tok_fp
        )
        assert record.tokenizer_fingerprint == tok_fp
        assert record.teacher_fingerprint == teacher_fingerprint(model, tokenizer)
        assert (record.num_sequences, record.seq_len, record.vocab_size) == (n, t, 262)
        assert corpus_config_of(record) == cfg
        assert (
            check_lm_archive(
                reader, tokenizer=tokenizer, windows=corpus.train, vocab_size=262
            )
            == record
        )
        assert reader.account().total_bytes == (tmp_path / "a.lz").stat().st_size


def test_two_pass_fits_on_a_reservoir_sample(
    tmp_path: Path, teacher: tuple[Any, Any, str], corpus_setup: Any
) -> None:
    _, corpus = corpus_setup
    n, t = corpus.train.shape
    result = _run(
        teacher, corpus_setup, tmp_path / "t.lz", "topk-tail", options={"k": 5}
    )
    assert result.two_pass and result.fit_windows == 4
    assert result.fit_positions == 40 and result.reservoir_bytes == 40 * 262 * 2
    assert result.teacher_positions == n * t + 4 * t  # the fitting pass's extra cost
    assert {"fit_teacher", "fit_codec", "encode_teacher", "encode_codec"} <= set(
        result.seconds
    )
    with ArchiveReader(tmp_path / "t.lz") as reader:
        assert reader.codec_name == "topk-tail"
        assert reader.header.user["lm"]["fit"] == {
            "two_pass": True,
            "fit_windows": 4,
            "fit_positions": 40,
            "seed": 0,
        }
        decoded = reader.decode(slice(0, t))
    assert bool(torch.isfinite(decoded).all())


def test_one_teacher_pass_feeds_several_archives(
    tmp_path: Path, teacher: tuple[Any, Any, str], corpus_setup: Any
) -> None:
    model, tokenizer, _ = teacher
    _, corpus = corpus_setup
    n, t = corpus.train.shape
    outputs = [
        LMOutput(path=tmp_path / "k.lz", codec="topk", options={"k": 4}),
        LMOutput(path=tmp_path / "t.lz", codec="topk-tail", options={"k": 5}),
    ]
    config = RelabelLMConfig(batch_size=3, fit_windows=4, fit_positions=40)
    many = relabel_lm_many(model, tokenizer, corpus.train, outputs, config)
    assert [r.teacher_positions for r in many] == [n * t + 4 * t] * 2
    assert all(r.two_pass for r in many)
    single = _run(
        teacher, corpus_setup, tmp_path / "t1.lz", "topk-tail", options={"k": 5}
    )
    assert single.codec_config == many[1].codec_config
    with ArchiveReader(tmp_path / "t.lz") as a, ArchiveReader(tmp_path / "t1.lz") as b:
        assert torch.equal(a.decode(slice(0, 3 * t)), b.decode(slice(0, 3 * t)))
    with pytest.raises(ConfigError, match="distinct paths"):
        relabel_lm_many(model, tokenizer, corpus.train, [outputs[0]] * 2, config)


def test_same_inputs_give_the_same_file(
    tmp_path: Path, teacher: tuple[Any, Any, str], corpus_setup: Any
) -> None:
    for name in ("a.lz", "b.lz"):
        _run(teacher, corpus_setup, tmp_path / name, "rskd", options={"num_samples": 8})
    assert (tmp_path / "a.lz").read_bytes() == (tmp_path / "b.lz").read_bytes()


def test_rate_target_counts_every_byte(
    tmp_path: Path, teacher: tuple[Any, Any, str], corpus_setup: Any
) -> None:
    result = _run(teacher, corpus_setup, tmp_path / "r.lz", "topk-tail", ratio=20)
    assert result.account.ratio >= 20
    assert result.account.total_bytes == (tmp_path / "r.lz").stat().st_size


def test_reservoir_is_uniform_seeded_and_batch_independent() -> None:
    rows = torch.arange(200, dtype=torch.float32)[:, None]

    def sample(seed: int, step: int) -> set[int]:
        res = PositionReservoir(20, 1, seed)
        for start in range(0, 200, step):
            res.add(rows[start : start + step])
        assert res.seen == 200 and res.rows().shape == (20, 1)
        return {int(v) for v in res.rows()[:, 0]}

    assert sample(3, 7) == sample(3, 200) == sample(3, 1)  # batching does not matter
    assert len(sample(3, 7)) == 20  # distinct rows
    hits = torch.zeros(200)
    for seed in range(150):
        hits[list(sample(seed, 50))] += 1
    # each row is kept with probability 20/200: ~15 of 150 seeds, early or late
    assert (
        abs(float(hits[:100].mean()) - 15) < 2
        and abs(float(hits[100:].mean()) - 15) < 2
    )
    with pytest.raises(ConfigError, match="capacity must be >= 1"):
        PositionReservoir(0, 5)


def test_which_codecs_need_a_sample() -> None:
    assert not needs_fit_sample(create_codec("dense"))
    assert not needs_fit_sample(create_codec("topk", k=3))
    assert not needs_fit_sample(create_codec("rskd", num_samples=4))
    measured = create_codec("rskd", num_samples=None, target_bits_per_label=64)
    assert needs_fit_sample(measured)
    assert needs_fit_sample(create_codec("topk-tail"))


@pytest.mark.parametrize(
    ("codec", "options", "bytes_per_token"),
    [
        ("dense", {}, 2 * 49152),
        ("topk", {"k": 16, "decoder": "mr"}, 15 * 2 + 16 * 2),  # 16-bit ids
        ("rskd", {"num_samples": 1}, 2),  # S = 1: just one 16-bit id
        ("topk-tail", {"k": 4, "decay_bits": 8}, 4 * 2 + 4 * 2 + 1),
    ],
)
def test_codecs_at_vocabulary_scale(
    tmp_path: Path,
    codec: str,
    options: dict[str, Any],
    bytes_per_token: int,
) -> None:
    """V = 49,152 (SmolLM2): ids take 16 bits; the pipeline streams (B*T, V) batches."""
    transformers = require_transformers()
    tokenizer = make_tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=49152,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config).eval()
    windows = torch.randint(0, 262, (3, 8), generator=torch.Generator().manual_seed(0))
    result = relabel_lm(
        model,
        tokenizer,
        windows,
        LMOutput(path=tmp_path / "v.lz", codec=codec, options=options),
        RelabelLMConfig(batch_size=2, fit_positions=16),
    )
    assert result.account.payload_bytes == 3 * 8 * bytes_per_token
    with ArchiveReader(tmp_path / "v.lz") as reader:
        decoded = reader.decode(slice(8, 16))
    with torch.no_grad():
        logits = model(input_ids=windows[1:2]).logits[0]
    assert decoded.shape == (8, 49152)
    if codec == "rskd":  # one sampled id per position
        assert bool(torch.isfinite(decoded).sum(dim=1).eq(1).all())
    else:
        assert torch.equal(decoded.argmax(dim=1), logits.argmax(dim=1))


def test_bad_windows_and_context(teacher: tuple[Any, Any, str], tmp_path: Path) -> None:
    model, tokenizer, _ = teacher
    ok = torch.zeros(2, 8, dtype=torch.long)
    assert check_windows(ok, model) == (2, 8)
    with pytest.raises(
        ConfigError, match="exceeds the teacher's maximum context of 64"
    ):
        check_windows(torch.zeros(1, 65, dtype=torch.long), model)
    with pytest.raises(InputError, match="outside|vocabulary has 262"):
        check_windows(torch.full((1, 4), 300), model)
    with pytest.raises(InputError, match="int64"):
        check_windows(ok.int(), model)
    with pytest.raises(InputError, match="at least one window"):
        check_windows(torch.zeros(0, 8, dtype=torch.long), model)
    docs = write_documents(tmp_path / "d", count=2)
    cfg = CorpusConfig(source=str(docs), seq_len=128, validation_fraction=0.0)
    with pytest.raises(ConfigError, match="seq_len 128 exceeds the teacher's"):
        build_corpus(cfg, tokenizer, max_context=64)


def test_bad_text_is_refused(tmp_path: Path, teacher: tuple[Any, Any, str]) -> None:
    tokenizer = teacher[1]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("   \n", encoding="utf-8")
    cfg = CorpusConfig(source=str(tmp_path / "empty"), seq_len=8, validation_fraction=0)
    with pytest.raises(InputError, match="is empty"):
        build_corpus(cfg, tokenizer)
    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "a.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    cfg = cfg.model_copy(update={"source": str(tmp_path / "latin")})
    with pytest.raises(InputError, match="not UTF-8"):
        build_corpus(cfg, tokenizer)


def test_archive_from_another_tokenizer_or_corpus_is_refused(
    tmp_path: Path, teacher: tuple[Any, Any, str], corpus_setup: Any
) -> None:
    _, tokenizer, _ = teacher
    _, corpus = corpus_setup
    _run(teacher, corpus_setup, tmp_path / "a.lz", "topk", options={"k": 4})
    with ArchiveReader(tmp_path / "a.lz") as reader:
        other = make_tokenizer(extra_tokens=("zebra",))
        with pytest.raises(CodecMismatchError, match="another tokenizer"):
            check_lm_archive(
                reader, tokenizer=other, windows=corpus.train, vocab_size=262
            )
        shifted = corpus.train.roll(1, dims=1)
        with pytest.raises(CodecMismatchError, match="another corpus"):
            check_lm_archive(
                reader, tokenizer=tokenizer, windows=shifted, vocab_size=262
            )
        with pytest.raises(CodecMismatchError, match="labels .* windows of 16 tokens"):
            check_lm_archive(
                reader, tokenizer=tokenizer, windows=corpus.train[:3], vocab_size=262
            )
        with pytest.raises(CodecMismatchError, match="student's vocabulary has 300"):
            check_lm_archive(
                reader, tokenizer=tokenizer, windows=corpus.train, vocab_size=300
            )
    save_archive(tmp_path / "img.lz", create_codec("dense"), torch.randn(4, 262))
    with (
        ArchiveReader(tmp_path / "img.lz") as reader,
        pytest.raises(CodecMismatchError, match="no LM label metadata"),
    ):
        lm_archive_record(reader)


@pytest.mark.slow
def test_real_smollm2_relabel_and_train(tmp_path: Path) -> None:
    """The real SmolLM2-135M: 2 Shakespeare windows of 64 tokens -> archive -> student."""
    from labelzip.lm.evaluate import evaluate_students
    from labelzip.lm.student import StudentConfig, build_student_for_teacher
    from labelzip.lm.train import ArchiveLabels, TrainLMConfig, train_student

    torch.set_num_threads(1)
    model, tokenizer, teacher_id = load_teacher("smollm2-135m")
    cfg = CorpusConfig(seq_len=64, max_train_windows=2, max_validation_windows=1)
    corpus = build_corpus(cfg, tokenizer, max_context=2048)
    result = relabel_lm(
        model,
        tokenizer,
        corpus.train,
        LMOutput(path=tmp_path / "s.lz", codec="topk-tail", options={"k": 16}),
        RelabelLMConfig(batch_size=2),
        teacher_id=teacher_id,
        corpus=corpus_record(cfg, corpus),
    )
    account = result.account
    assert result.two_pass and account.num_classes == 49152
    assert account.payload_bytes == 2 * (64 * 16 * 4 + 32)  # 2 chunks of 64 tokens
    student = build_student_for_teacher(
        StudentConfig(num_layers=1, hidden_size=32, num_heads=2), model, tokenizer
    )
    with ArchiveReader(tmp_path / "s.lz") as reader:
        check_lm_archive(
            reader, tokenizer=tokenizer, windows=corpus.train, vocab_size=49152
        )
        decoded = reader.decode(slice(0, 64))
        config = TrainLMConfig(steps=2, batch_size=2, warmup_steps=1)
        history = train_student(student, corpus.train, ArchiveLabels(reader), config)
    with torch.no_grad():
        logits = model(input_ids=corpus.train[:1]).logits[0]
    assert torch.equal(decoded.argmax(1), logits.argmax(1))
    assert history.history[-1]["kd"] > 0
    scores = evaluate_students({"s": student}, corpus.validation, teacher=model)["s"]
    assert scores.kl_to_teacher is not None and scores.kl_to_teacher > 0
