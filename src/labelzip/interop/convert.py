"""The two streaming drivers: a label store into an archive, an archive into a store.

``import_store`` opens a store through its :class:`StoreFormat` and writes its
records in the files' own order. With no codec it is lossless: dense stores go
to the ``dense`` codec in the stored dtype, top-k stores to ``topk`` fed the
stored (values, ids) directly. A re-encoding codec (``--codec vqae --ratio 40``)
sees the format's dense logits; when it must be fitted, a first pass keeps a
seeded reservoir sample, a second pass encodes. The top-k codecs (``topk-q``,
``topk``) keep a top-k store's K unless told otherwise, so they re-encode the
store's own support (``topk`` with ``decoder=mr`` keeps MR's zeros too). Side information goes through
``ArchiveWriter.append_side``, so memory holds one file at a time.

``export_archive`` builds the store in a temporary sibling folder and renames it
into place only once complete.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from labelzip.accounting import StorageAccount
from labelzip.archive.format import DEFAULT_CHUNK_SIZE, ArchiveMetadata
from labelzip.archive.reader import ArchiveReader
from labelzip.archive.writer import ArchiveWriter
from labelzip.codecs.base import Codec
from labelzip.codecs.registry import codec_class, create_codec
from labelzip.errors import ConfigError, InputError
from labelzip.interop.archive_source import ArchiveLabelSource, interop_document
from labelzip.interop.base import (
    INTEROP_KEY,
    ExportOptions,
    ImportedStore,
    ImportOptions,
    StoreRecord,
)
from labelzip.interop.formats import get_format, resolve_format_name
from labelzip.interop.label_range import (
    TopkBlocks,
    named,
    record_rows,
    record_side,
    sparse_import,
)
from labelzip.ops.reservoir import Reservoir
from labelzip.outputs import atomic_folder
from labelzip.rate import ArchiveTarget, RateGoal, fit_codec
from labelzip.selection.auto import (
    AUTO,
    AutoChoice,
    AutoConfig,
    Target,
    choose_from_rows,
    resolve_codec_name,
    run_options,
    with_auto_record,
)

__all__ = [
    "CodecChoice",
    "ImportPlan",
    "export_archive",
    "fit_rows",
    "import_codec",
    "import_store",
    "lossless_codec",
    "open_import",
]

logger = logging.getLogger(__name__)

# Labels a re-encoding codec is fitted on at most (the reservoir of pass 1; at
# C = 1000 this is 200 MB of float32).
DEFAULT_FIT_SAMPLE = 50_000
# ... and the reservoir's memory at most: an LM label is V float32 values (SmolLM2:
# 192 KiB), so 50k of them would need 9.4 GiB; 2 GiB keeps 10,922.
FIT_SAMPLE_BYTES = 2 << 30

# Codecs whose fit reads only C from the data: no first pass without a rate target.
_SHAPE_ONLY_FIT = ("dense", "topk")

# Codecs that store a top-k itself: on a top-k store they keep its K by default.
_TOPK_CODECS = ("topk", "topk-q")

_STORED_DENSE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_STORED_TOPK = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass
class CodecChoice:
    """How ``import`` encodes: lossless (``name`` None) or a named codec.

    Attributes:
        name: registry name, ``"auto"`` (measured choice, the default with a
            target), or None for the lossless default.
        options: codec options (``--opt``).
        goal: an all-in rate target (its ratio stated against the archive's
            reference), or None.
        seed: seed of the fit sample and of the codec's own fit.
        fit_sample: labels the codec is fitted on at most.
        auto: how ``"auto"`` measures its candidates (defaults when None).
    """

    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    goal: RateGoal | None = None
    seed: int = 0
    fit_sample: int = DEFAULT_FIT_SAMPLE
    auto: AutoConfig | None = None


def lossless_codec(store: ImportedStore) -> Codec:
    """The fitted codec that stores exactly what the files hold.

    Raises:
        ConfigError: a value dtype no lossless codec stores (use --codec).
    """
    own = store.lossless_codec()
    if own is not None:
        return own
    dtype = store.value_dtype
    if store.kind == "dense":
        if dtype not in _STORED_DENSE:
            raise ConfigError(
                f"{store.format} stores {dtype} values, which no lossless codec keeps; "
                "choose a codec with --codec"
            )
        codec = create_codec("dense", dtype=_STORED_DENSE[dtype])
    else:
        if dtype not in _STORED_TOPK or store.k is None:
            raise ConfigError(
                f"{store.format} stores top-k values of {dtype}, which the topk codec "
                "does not keep exactly; choose a codec with --codec"
            )
        codec = create_codec(
            "topk",
            k=store.k,
            decoder="mr",
            relative=False,
            value_dtype=_STORED_TOPK[dtype],
        )
    return codec.fit([torch.zeros(1, store.num_classes)])


@dataclass
class ImportPlan:
    """An opened store and how it is encoded (what :func:`open_import` checked).

    Attributes:
        store: the opened store.
        choice: the codec choice (a target without a codec means ``auto``).
        metadata: the archive metadata, the import's interop record included.
    """

    store: ImportedStore
    choice: CodecChoice
    metadata: ArchiveMetadata

    @property
    def lossless(self) -> bool:
        return self.choice.name is None


def open_import(
    path: str | os.PathLike[str],
    format_name: str,
    *,
    options: ImportOptions | None = None,
    codec: CodecChoice | None = None,
    metadata: ArchiveMetadata | None = None,
) -> ImportPlan:
    """Check the codec choice and open the store (see :func:`import_store`).

    Raises:
        InputError: a missing or malformed store (naming the file).
        ConfigError: a choice that contradicts itself.
    """
    source = Path(path)
    if not source.exists():
        raise InputError(f"label store {str(source)!r} does not exist")
    choice = codec or CodecChoice()
    # a target re-encodes: auto by default; no codec and no target: lossless
    name = resolve_codec_name(
        choice.name, choice.options, has_target=choice.goal is not None, default=None
    )
    choice = dataclasses.replace(choice, name=name)
    fmt = get_format(format_name)
    store = fmt.open(source, options or ImportOptions())
    doc = {**store.describe(), "lossless": choice.name is None}
    base = metadata or ArchiveMetadata()
    meta = ArchiveMetadata(
        class_names=base.class_names,
        dataset_fingerprint=base.dataset_fingerprint,
        teacher=base.teacher,
        user={**dict(base.user), INTEROP_KEY: doc},
    )
    return ImportPlan(store, choice, meta)


def import_codec(
    plan: ImportPlan, chunk_size: int, reference: str
) -> tuple[Codec, ArchiveMetadata]:
    """The fitted codec (pass 1 when it learns from the labels) and the archive
    metadata, which records the choice when ``auto`` chose."""
    if plan.choice.name is None:
        return lossless_codec(plan.store), plan.metadata
    return _fit(plan.store, plan.choice, plan.metadata, chunk_size, reference)


def import_store(
    path: str | os.PathLike[str],
    format_name: str,
    output: str | os.PathLike[str],
    *,
    options: ImportOptions | None = None,
    codec: CodecChoice | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    metadata: ArchiveMetadata | None = None,
    reference: str = "fp16",
    on_progress: Callable[[int], None] | None = None,
) -> StorageAccount:
    """Import a label store into an archive (see the module docstring).

    Args:
        path: the store's folder.
        format_name: a registry name or alias (``sre2l``, ``cda``, ``lpqld`` ...).
        output: the archive to write (atomically).
        options: what the files cannot say (sampler seed, batch size, C ...).
        codec: lossless by default; else a codec, its options and rate target.
        metadata: class names, teacher, fingerprint, user keys to record too.
        on_progress: called with the labels of each record encoded.

    Returns:
        The archive's storage account (side bytes included).
    """
    plan = open_import(
        path, format_name, options=options, codec=codec, metadata=metadata
    )
    fitted, meta = import_codec(plan, chunk_size, reference)
    return _write(plan.store, fitted, output, chunk_size, meta, reference, on_progress)


def _fit(
    store: ImportedStore,
    choice: CodecChoice,
    metadata: ArchiveMetadata,
    chunk_size: int,
    reference: str,
) -> tuple[Codec, ArchiveMetadata]:
    """Pass 1: a seeded reservoir sample of the dense logits, then the fit.

    With ``auto`` the candidates are measured on part of the reservoir first;
    the metadata returned then carries the choice.
    """
    assert choice.name is not None
    goal = _goal(choice, reference)
    target = goal is not None
    options: dict[str, Any] = {}
    if choice.name != AUTO:
        options = _fixed_options(store, choice, target)
        if choice.name in _SHAPE_ONLY_FIT and not target:
            probe = [torch.zeros(1, store.num_classes)]
            return create_codec(choice.name, **options).fit(probe), metadata
    capacity = min(choice.fit_sample, store.num_labels, fit_rows(store.num_classes))
    if capacity < choice.fit_sample < store.num_labels:
        logger.info(
            "fit sample capped at %d labels (%d classes: %.1f GiB of float32)",
            capacity,
            store.num_classes,
            FIT_SAMPLE_BYTES / 2**30,
        )
    reservoir = Reservoir(capacity, store.num_classes, seed=choice.seed)
    side_bytes = 0
    for record in store.records():
        reservoir.add(store.to_dense(record))
        side_bytes += sum(_nbytes(t) for t in record.side.values())
        side_bytes += sum(_nbytes(t) for t in record.file_side.values())
        side_bytes += sum(_nbytes(t) for t in record.blobs.values())
    name = choice.name
    if name == AUTO:
        assert goal is not None  # resolve_codec_name: auto needs a target
        auto = _choose(store, choice, reservoir, metadata, chunk_size, side_bytes, goal)
        name, metadata = auto.winner.codec, with_auto_record(metadata, auto)
        options = run_options(name, auto.winner.options, auto.config)

    def sample() -> Iterator[torch.Tensor]:
        return reservoir.batches()

    archive = ArchiveTarget.of(
        goal,
        store.layout,
        store.num_classes,
        chunk_size,
        metadata=metadata,
        side_bytes=side_bytes,
    )
    fitted = fit_codec(
        name, sample, options, num_labels=store.num_labels, target=archive
    )
    return fitted, metadata


def _goal(choice: CodecChoice, reference: str) -> RateGoal | None:
    """The choice's goal, its ratio stated against the archive's ``reference``."""
    if choice.goal is None:
        return None
    return RateGoal.of(choice.goal.ratio, choice.goal.bits_per_label, reference)


def _fixed_options(
    store: ImportedStore, choice: CodecChoice, target: bool
) -> dict[str, Any]:
    """A named codec's options: refuse view-recipe codecs, default the seed and,
    on a top-k store, the store's K."""
    assert choice.name is not None
    if create_codec(choice.name, **choice.options).needs_context:
        raise ConfigError(
            f"codec {choice.name} encodes labels with labelzip's own view recipe, "
            "which imported stores do not have; choose another codec"
        )
    options = dict(choice.options)
    if "seed" in codec_class(choice.name).config_class.model_fields:
        options.setdefault("seed", choice.seed)
    if store.kind == "topk" and store.k is not None and choice.name in _TOPK_CODECS:
        # the store's K; topk's rate control chooses K itself, topk-q its value bits
        if choice.name == "topk-q" or not target:
            options.setdefault("k", min(store.k, store.num_classes))
    return options


def _choose(
    store: ImportedStore,
    choice: CodecChoice,
    reservoir: Reservoir,
    metadata: ArchiveMetadata,
    chunk_size: int,
    side_bytes: int,
    goal: RateGoal,
) -> AutoChoice:
    """``auto``: candidates measured on a seeded part of the reservoir sample.

    Imported stores are not pruned, so the only view budget is 1.
    """
    config = choice.auto or AutoConfig(seed=choice.seed)
    target = Target(
        goal,
        store.layout,
        store.num_classes,
        chunk_size=chunk_size,
        metadata=metadata,
        side_bytes=side_bytes,
    )
    return choose_from_rows(reservoir.rows(), target, config)


def fit_rows(num_classes: int) -> int:
    """Labels of ``num_classes`` float32 values that fit in :data:`FIT_SAMPLE_BYTES`."""
    return max(1, FIT_SAMPLE_BYTES // (4 * num_classes))


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _write(
    store: ImportedStore,
    codec: Codec,
    output: str | os.PathLike[str],
    chunk_size: int,
    metadata: ArchiveMetadata,
    reference: str,
    on_progress: Callable[[int], None] | None,
) -> StorageAccount:
    """Pass 2 (or the only pass): every record into the archive, in order."""
    lossless = bool(metadata.user[INTEROP_KEY]["lossless"])
    sparse = sparse_import(codec, store, lossless)
    blocks = TopkBlocks(codec, chunk_size) if sparse else None
    with ArchiveWriter(
        output,
        codec,
        layout=store.layout,
        chunk_size=chunk_size,
        metadata=metadata,
        reference=reference,
    ) as writer:
        for record in store.records():
            try:
                _write_record(writer, store, record, blocks, lossless)
            except InputError as exc:  # the writer's checks, with the file named
                raise named(record, exc) from exc
            if on_progress is not None:
                on_progress(record.rows)
        if blocks is not None:
            for block in blocks.finish():
                writer.write_block(block)
    assert writer.account is not None
    return writer.account


def _write_record(
    writer: ArchiveWriter,
    store: ImportedStore,
    record: StoreRecord,
    blocks: TopkBlocks | None,
    lossless: bool,
) -> None:
    """One record's labels and side rows into the writer."""
    if blocks is not None:
        assert record.topk_values is not None and record.topk_ids is not None
        for block in blocks.add(record.topk_values, record.topk_ids):
            writer.write_block(block)
    else:
        writer.write(record_rows(store, record, lossless))
    for name, rows in record_side(record):
        writer.append_side(name, rows)


def export_archive(
    archive: str | os.PathLike[str],
    format_name: str | None,
    dest: str | os.PathLike[str],
    *,
    options: ExportOptions | None = None,
    force: bool = False,
) -> Path:
    """Write an imported archive back as the framework's own folder at ``dest``.

    The folder is built beside ``dest`` under a recognisable temporary name
    (:func:`labelzip.outputs.atomic_folder`) and renamed into place when complete. An existing ``dest`` is refused unless it is an empty
    folder, or ``force`` is given and it is a folder (then it is replaced only
    after the new one is complete). ``dest`` may not be or hold the archive.

    Returns:
        ``dest``.
    """
    src = Path(archive)
    out = Path(dest)
    with ArchiveReader(src) as reader:
        doc = interop_document(reader)
        stored = str(doc["format"])
        name = resolve_format_name(format_name) if format_name else stored
        if name != stored:
            raise InputError(
                f"archive {str(src)!r} holds labels imported from {stored}; export "
                f"them with --format {stored}"
            )
        _check_destination(src, out, force)
        fmt = get_format(name)
        with atomic_folder(out) as tmp, ArchiveLabelSource(reader) as source:
            fmt.export(source, tmp, options or ExportOptions())
    return out


def _check_destination(src: Path, out: Path, force: bool) -> None:
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(
            f"output folder {str(parent)!r} does not exist; create it first"
        )
    if out.exists() and not out.is_dir():
        raise InputError(f"output {str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(
            f"output folder {str(out)!r} is not empty; choose a new one or pass "
            "--force to replace it"
        )
    archive = src.resolve()
    target = out.resolve()
    if target == archive or target in archive.parents:
        raise InputError(
            f"output {str(out)!r} holds the archive {str(src)!r}; choose another"
        )
