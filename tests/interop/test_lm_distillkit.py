"""DistillKit captures: the quantiser, lossless import, export round trip, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from labelzip.archive import ArchiveReader
from labelzip.bench.lm_stores import lm_logits, write_distillkit
from labelzip.cli import main as cli_main
from labelzip.codecs.baseline.distillkit import DistillKitCodec, preset_config
from labelzip.codecs.baseline.distillkit_quant import (
    DistillKitLegacyConfig,
    DistillKitQuantConfig,
    QuantBin,
    compress_logprobs,
    decompress_logprobs,
    pack_msb,
    unpack_msb,
)
from labelzip.errors import ConfigError, InputError
from labelzip.interop.base import ImportOptions
from labelzip.interop.convert import CodecChoice, export_archive, import_store
from labelzip.interop.formats import get_format

V = 300
# Delta encoding with error diffusion, two residual bins (one of 1 bit): the
# paths of DistillKit's quantiser the README presets do not take.
ODD = DistillKitQuantConfig(
    d=V,
    k=24,
    exact_k=3,
    exact_dtype="float16",
    polynomial_terms=[0, 1, "sqrt"],
    residual_bins=[
        QuantBin(scale_dtype="float16", element_bits=4, num_elements=12),
        QuantBin(scale_dtype="bfloat16", element_bits=1, num_elements=6),
    ],
    delta_encoding=True,
    error_diffusion=True,
)
LEGACY = DistillKitLegacyConfig(
    k=20, exact_k=4, polynomial_degree=3, vocab_size=V, with_sqrt_term=True
)
LENGTHS = [17, 5, 17, 9, 17, 3, 17]


def make_store(root: Path, config=ODD, **kwargs) -> Path:
    store = root / "store"
    write_distillkit(
        store,
        lm_logits(7, 16, V),
        config,
        lengths=LENGTHS,
        write_batch_size=3,
        file_max_rows=2,
        **kwargs,
    )
    return store


def test_msb_packing_order() -> None:
    # DistillKit packs the most significant bit first and pads with zeros.
    packed = pack_msb(torch.tensor([[1, 6]]), 3)
    assert packed.tolist() == [[0b00111000]]
    assert unpack_msb(packed, 3, 2).tolist() == [[1, 6]]


def test_exact_only_rows_are_the_raw_floats() -> None:
    cfg = DistillKitQuantConfig(
        d=V, k=4, exact_k=4, residual_bins=[], delta_encoding=False
    )
    values = torch.tensor([[-0.5, -1.25, -2.0, -7.75]])
    rows = compress_logprobs(values, cfg)
    assert rows.shape == (1, 16) and cfg.row_bytes() == 16
    assert torch.equal(rows.view(torch.float32), values)
    assert torch.equal(decompress_logprobs(rows, cfg), values)


def test_residual_bin_quantises_to_offset_integers() -> None:
    cfg = DistillKitQuantConfig(
        d=V,
        k=4,
        exact_k=0,
        residual_bins=[QuantBin(scale_dtype="float32", element_bits=3, num_elements=4)],
        delta_encoding=False,
    )
    values = torch.tensor([[-1.0, -2.0, -3.0, -4.0]])
    rows = compress_logprobs(values, cfg)
    # scale = max|v| / 2^(3-1) = 1; integers round(v / 1) + 4 = 3, 2, 1, 0
    assert torch.equal(rows[0, :4].clone().view(torch.float32), torch.tensor([1.0]))
    assert unpack_msb(rows[:, 4:], 3, 4).tolist() == [[3, 2, 1, 0]]
    assert torch.equal(decompress_logprobs(rows, cfg), values)


def test_decode_then_encode_is_not_the_identity() -> None:
    # Why a lossless import keeps DistillKit's bytes: refitting the polynomial to
    # its own float32 decode moves the coefficients.
    cfg = preset_config("recommended", V)
    logprobs = torch.log_softmax(lm_logits(1, 64, V)[0], dim=-1)
    rows = compress_logprobs(logprobs.topk(cfg.k, dim=-1).values, cfg)
    again = compress_logprobs(decompress_logprobs(rows, cfg), cfg)
    assert not torch.equal(rows, again)


@pytest.mark.parametrize("config", [ODD, LEGACY], ids=["quantized", "legacy"])
def test_lossless_import_and_export_round_trip(tmp_path: Path, config) -> None:
    store = make_store(tmp_path, config)
    account = import_store(store, "distillkit", tmp_path / "a.lz")
    assert account.codec == "distillkit"
    assert account.num_labels == sum(n - 1 for n in LENGTHS)
    with ArchiveReader(tmp_path / "a.lz") as reader:
        doc = reader.header.user["interop"]
        assert doc["variant"] == ("legacy" if config is LEGACY else "quantized")
        assert reader.header.layout.dims == ["token"]
        codec = reader.codec
        assert isinstance(codec, DistillKitCodec)
        # The archive decodes to what DistillKit's reader gets for row 0.
        table = pq.read_table(store / "data_0.parquet")
        rows, ids = codec.decode_topk(reader.read_chunk(0))
        n = LENGTHS[0] - 1
        if config is ODD:
            stored = torch.tensor(
                table.column("compressed_logprobs")[0].as_py(), dtype=torch.uint8
            )
            assert torch.equal(rows[:n], stored)
            expected = decompress_logprobs(stored, config).float()
        else:
            expected = torch.cat(
                [
                    torch.tensor(table.column("exact_values")[0].as_py()),
                    codec.values(rows[:n])[:, config.exact_k :],
                ],
                dim=1,
            )
        dense = reader.decode(slice(0, n))
        assert torch.equal(dense.gather(1, ids[:n]), expected)
    out = tmp_path / "out"
    export_archive(tmp_path / "a.lz", None, out)
    names = sorted(p.name for p in store.iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for name in names:
        if name.endswith(".parquet"):
            a, b = pq.ParquetFile(store / name), pq.ParquetFile(out / name)
            assert a.schema_arrow.equals(b.schema_arrow)
            assert a.num_row_groups == b.num_row_groups
            assert a.read().equals(b.read())
        else:
            assert (store / name).read_bytes() == (out / name).read_bytes()


def test_lossy_import_exports_requantised_rows(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    import_store(
        store,
        "distillkit",
        tmp_path / "b.lz",
        codec=CodecChoice(name="topk", options={"k": 8, "decoder": "mr"}),
    )
    export_archive(tmp_path / "b.lz", "distillkit", tmp_path / "out")
    table = pq.read_table(tmp_path / "out" / "data_0.parquet")
    original = pq.read_table(store / "data_0.parquet")
    assert table.column("input_ids").equals(original.column("input_ids"))
    row = torch.tensor(
        table.column("compressed_logprobs")[0].as_py(), dtype=torch.uint8
    )
    assert row.shape == (LENGTHS[0] - 1, ODD.row_bytes())
    assert bool(torch.isfinite(decompress_logprobs(row, ODD)).all())
    ids = torch.tensor(table.column("bytepacked_indices")[0].as_py(), dtype=torch.uint8)
    with ArchiveReader(tmp_path / "b.lz") as reader:
        best = reader.decode(slice(0, LENGTHS[0] - 1)).argmax(dim=1)
    assert torch.equal(unpack_msb(ids, ODD.index_bits(), ODD.k)[:, 0], best)


def test_legacy_store_needs_a_lossless_import_to_export(tmp_path: Path) -> None:
    store = make_store(tmp_path, LEGACY)
    import_store(
        store,
        "distillkit",
        tmp_path / "b.lz",
        codec=CodecChoice(name="topk", options={"k": 8}),
    )
    with pytest.raises(ConfigError, match="legacy"):
        export_archive(tmp_path / "b.lz", None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_and_mixed_variants_name_the_file(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    other = make_store(tmp_path / "legacy", LEGACY)
    shutil.copy(other / "data_1.parquet", store / "data_1.parquet")
    with pytest.raises(InputError, match="data_1.parquet holds legacy rows"):
        get_format("distillkit").open(store, ImportOptions())
    table = pq.read_table(other / "data_0.parquet").drop_columns(["coeffs"])
    pq.write_table(table, store / "data_1.parquet")
    with pytest.raises(InputError, match="data_1.parquet: unknown DistillKit variant"):
        get_format("distillkit").open(store, ImportOptions())


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_parquet_names_the_file(tmp_path: Path, damage: str) -> None:
    store = make_store(tmp_path)
    target = store / "data_2.parquet"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"x" * 64)
    with pytest.raises(InputError, match="data_2.parquet"):
        import_store(store, "distillkit", tmp_path / "a.lz")
    assert not (tmp_path / "a.lz").exists()


def test_missing_file_or_config_is_named(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    (store / "data_1.parquet").unlink()
    with pytest.raises(InputError, match="data_1.parquet is missing"):
        get_format("distillkit").open(store, ImportOptions())
    store = make_store(tmp_path / "b")
    (store / "compression_config.yaml").unlink()
    with pytest.raises(InputError, match="compression_config.yaml is missing"):
        get_format("distillkit").open(store, ImportOptions())


def test_vocabulary_that_differs_across_files_is_named(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    wide = make_store(tmp_path / "wide", ODD.model_copy(update={"d": 5000}))
    shutil.copy(wide / "data_2.parquet", store / "data_2.parquet")
    with pytest.raises(InputError, match="data_2.parquet.*bytepacked_indices"):
        import_store(store, "distillkit", tmp_path / "a.lz")


def test_cli_import_export_and_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = make_store(tmp_path)
    archive = tmp_path / "a.lz"
    assert (
        cli_main(
            [
                "import",
                "--format",
                "distillkit",
                str(store),
                "-o",
                str(archive),
                "--quiet",
            ]
        )
        == 0
    )
    assert cli_main(["export", str(archive), "-o", str(tmp_path / "out")]) == 0
    assert pq.read_table(tmp_path / "out" / "data_1.parquet").equals(
        pq.read_table(store / "data_1.parquet")
    )
    capsys.readouterr()
    (store / "compression_config.yaml").write_text("d: [1, 2\n", encoding="utf-8")
    assert (
        cli_main(
            [
                "import",
                "--format",
                "distillkit",
                str(store),
                "-o",
                str(tmp_path / "c.lz"),
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "compression_config.yaml" in err and len(err.splitlines()) == 1


def test_long_sequences_stream_in_bounded_records(tmp_path: Path) -> None:
    store = tmp_path / "long"
    write_distillkit(store, lm_logits(2, 1100, V), ODD, lengths=[1101, 40])
    opened = get_format("distillkit").open(store, ImportOptions())
    sizes, firsts = [], []
    for record in opened.records():
        sizes.append(record.rows)
        firsts.append("sequence" in record.blobs)
    assert sizes == [512, 512, 76, 39] and firsts == [True, False, False, True]
    assert opened.layout.dims == ("token",) and opened.num_labels == 1100 + 39
