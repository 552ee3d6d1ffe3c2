"""Archive fuzzing: corrupt small archives of every codec and check each outcome.

A corrupted archive must either be refused with a
:class:`~labelzip.errors.LabelzipError` or decode to exactly the labels the
intact archive decodes to. Anything else (another exception, a hang, different
labels) is a failure. Three families of corruption:

- ``bytes``: bit flips, truncation, appended data, zeroed, swapped and random
  ranges anywhere in the file;
- ``header``: an attacker's edit of the safetensors entries (dtype, shape,
  offsets) or of a field of the labelzip document (counts, layout, chunks,
  prune plan, codec config), after which every digest the format stores is
  recomputed the way the writer computes it (:func:`rebuild`);
- ``sizes``: crafted numbers (huge, negative, ``1e400``, non-integers) and deep
  JSON nesting in either header, digests recomputed as well.

Every corrupted archive must be refused or decode unchanged, with one
exception the threat model forces: an attacker who recomputes the document's
own sha256 can write any valid document, and a valid document that says
something else (another temperature, prune seed or layout order for the same
bytes) is indistinguishable from an archive written that way. Such a
document edit that decodes cleanly to other labels is counted as
``reinterpreted``; it must still not crash or hang. Edits of the tensor
entries (dtype, shape, offsets) and crafted sizes get no such allowance: the
format-3 digests bind the entries to the bytes and the codecs check their
stored tensors, so those must be refused or decode unchanged.

Used by ``tests/fuzz`` (a short seeded run in CI) and ``benchmarks/fuzz.py``
(the long run). Cases are pure functions of ``(seed, index)``.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from labelzip.archive import ArchiveMetadata, ArchiveReader, Layout, save_archive
from labelzip.archive.format import (
    DIGEST_BYTES,
    DIGESTS_NAME,
    METADATA_KEY,
    METADATA_SHA_KEY,
    digest_table,
    entry_descriptor,
    entry_digest,
)
from labelzip.augment import ViewConfig
from labelzip.codecs.base import Codec
from labelzip.codecs.prune import PrunePlan
from labelzip.codecs.registry import CODEC_IDS, create_codec
from labelzip.errors import LabelzipError

__all__ = [
    "FAMILIES",
    "FuzzArchive",
    "FuzzReport",
    "RawArchive",
    "build_archives",
    "check_archive",
    "mutate",
    "rebuild",
    "run_fuzz",
]

FAMILIES = ("bytes", "header", "sizes")

# Small, fast configurations: the fuzz targets the reader, not the codecs' quality.
_FAST: dict[str, dict[str, Any]] = {
    "dense": {},
    "distillkit": {"quant": {"d": 12, "k": 4, "exact_k": 4, "residual_bins": []}},
    "topk": {"k": 3},
    "topk-q": {"k": 3},
    "rskd": {"num_samples": 6},
    "topk-tail": {"k": 3},
    "vqae": {
        "num_ids": 1,
        "value_bits": 3,
        "num_chunks": 3,
        "chunk_dim": 2,
        "codebook_size": 8,
        "hidden_dim": 12,
        "encoder_dim": 24,
        "steps": 30,
        "batch_size": 64,
    },
    "vqae-sparse": {"steps": 40, "hidden": 16, "k": 3},
    "vqae-rs": {"steps": 40, "hidden": 16, "k": 3, "sample_scale": 4.0},
    "vqae-ctx": {"codebook_size": 4, "prior_steps": 20, "rounds": 1, "round_steps": 10},
    "ctx-transform": {"prior_steps": 20, "learning_rate": 0.05, "step": 0.5},
}
_CONTEXT_CODECS = ("vqae-ctx", "ctx-transform")
_CLASSES = 12
_CHUNK = 16
_RAW = "\x00raw\x00"  # marks a string to be written as a raw JSON literal
_DTYPES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "X9")
_HUGE = (2**31, 2**32 + 1, 2**62, 2**63, 2**64 + 3, 2**70, 10**30)


@dataclass(frozen=True)
class FuzzArchive:
    """One intact archive and the labels it decodes to."""

    name: str
    data: bytes
    labels: torch.Tensor


@dataclass
class FuzzReport:
    """Outcome counts of a fuzz run and the first failures."""

    cases: int = 0
    seconds: float = 0.0
    outcomes: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def num_failures(self) -> int:
        return sum(
            n for (_, _, out), n in self.outcomes.items() if out not in _ACCEPTED
        )


_ACCEPTED = ("refused", "identical", "reinterpreted")


# -- archives to corrupt ---------------------------------------------------------------


def _teacher(num_labels: int, seed: int) -> torch.Tensor:
    """(N, C) logits with one dominant class per label and a random tail."""
    g = torch.Generator().manual_seed(seed)
    logits = 1.5 * torch.randn(num_labels, _CLASSES, generator=g)
    top = torch.randint(0, _CLASSES, (num_labels,), generator=g)
    logits[torch.arange(num_labels), top] += 4.0
    return logits


def _context_labels(epochs: int, images: int) -> tuple[torch.Tensor, ArchiveMetadata]:
    """Relabel-style (E * M, C) labels and the metadata holding their view recipe."""
    from labelzip.codecs.context.viewmix import view_mix_prior
    from labelzip.pipelines.relabel_types import recipe_context

    view = ViewConfig(output_size=(8, 8), scale=(0.5, 1.0), mix="cutmix")
    recipe = {"view": view.model_dump(mode="json"), "seed": 1, "image_shape": [1, 8, 8]}
    meta = ArchiveMetadata(user={"relabel": recipe})
    dims, shape = ("epoch", "sample"), (epochs, images)
    ctx = recipe_context(meta.user, dims, shape, torch.arange(epochs * images))
    g = torch.Generator().manual_seed(2)
    prior = view_mix_prior(3 * torch.randn(images, _CLASSES, generator=g), ctx)
    return prior + 0.5 * torch.randn(prior.shape, generator=g), meta


def build_archives(
    workdir: Path, codecs: Sequence[str] | None = None
) -> list[FuzzArchive]:
    """A plain and a pruned small archive of each codec (default: all registered)."""
    out: list[FuzzArchive] = []
    for name in codecs if codecs is not None else sorted(CODEC_IDS):
        for pruned in (False, True):
            path = workdir / f"{name}{'-pruned' if pruned else ''}.lz"
            codec: Codec = create_codec(name, **_FAST[name])
            if name in _CONTEXT_CODECS:
                logits, meta = _context_labels(6, 8)
                layout = Layout(("epoch", "sample"), (6, 8))
            else:
                logits, meta = _teacher(48, 0), ArchiveMetadata()
                layout = Layout(("sample", "view"), (12, 4))
            plan = PrunePlan(layout.dims, layout.shape, 0.5, 3) if pruned else None
            save_archive(
                path,
                codec,
                logits.reshape(*layout.shape, _CLASSES),
                layout=layout,
                prune=plan,
                metadata=meta,
                chunk_size=_CHUNK,
            )
            outcome, labels = _decode(path)
            if outcome != "decoded" or labels is None:
                raise RuntimeError(f"intact {path.name} does not decode: {outcome}")
            out.append(FuzzArchive(path.stem, path.read_bytes(), labels))
    return out


# -- the container, parsed and rebuilt -------------------------------------------------


@dataclass
class RawArchive:
    """An archive taken apart: container metadata, entries, tensor bytes, document.

    ``entries`` keeps each tensor's safetensors entry (``dtype``, ``shape``,
    ``data_offsets``) as parsed, so an edit can change any of them; ``blobs``
    holds each tensor's bytes by name.
    """

    metadata: dict[str, Any]
    entries: dict[str, dict[str, Any]]
    blobs: dict[str, bytes]
    document: Any

    @classmethod
    def parse(cls, data: bytes) -> RawArchive:
        (length,) = struct.unpack("<Q", data[:8])
        doc = json.loads(data[8 : 8 + length])
        start = 8 + length
        metadata = doc.pop("__metadata__")
        blobs = {
            name: data[start + e["data_offsets"][0] : start + e["data_offsets"][1]]
            for name, e in doc.items()
        }
        return cls(metadata, doc, blobs, json.loads(metadata[METADATA_KEY]))


def _dumps(value: Any) -> str:
    """Compact JSON; strings marked with ``_RAW`` are written as raw literals."""
    text = json.dumps(value, separators=(",", ":"))
    marker = json.dumps(_RAW)[:-1]  # '"\u0000raw\u0000' opens a marked string
    while marker in text:  # '"<marker>LITERAL"' -> LITERAL
        head, _, rest = text.partition(marker)
        literal, _, tail = rest.partition('"')
        text = head + literal + tail
    return text


def raw(literal: str) -> str:
    """A value :func:`rebuild` writes as the JSON literal ``literal`` (``1e400``)."""
    return _RAW + literal


def _entry_digest(name: str, entry: Any, blob: bytes) -> str:
    """Format 3 digest of a tensor's entry and bytes (zeros if the entry is not
    even hashable: an attacker who cannot compute it writes anything)."""
    try:
        start, end = entry["data_offsets"]
        descriptor = entry_descriptor(name, entry["dtype"], entry["shape"], start, end)
    except (KeyError, TypeError, ValueError):
        return "0" * 64
    return entry_digest(descriptor, hashlib.sha256(blob).digest())


def rebuild(archive: RawArchive, *, offsets: bool = True) -> bytes:
    """Serialise ``archive`` with every stored digest recomputed, as the writer does.

    Format 3: the digests table gets one row per other tensor (sorted by name),
    the sha256 of its entry (name, dtype, shape, offsets) and bytes; the
    document's ``checksums`` the same digest of the table's own entry; and
    ``labelzip_sha256`` the sha256 of the document. With ``offsets`` the data
    offsets follow the blob sizes (the attacker keeps the file consistent);
    without, entries keep whatever offsets an edit gave them.
    """
    blobs = dict(archive.blobs)
    has_table = DIGESTS_NAME in blobs
    if has_table:  # its size is known before its rows: one row per other tensor
        blobs[DIGESTS_NAME] = bytes(DIGEST_BYTES * (len(archive.entries) - 1))
    entries: dict[str, Any] = {}
    position = 0
    for name, entry in archive.entries.items():
        size = len(blobs.get(name, b""))
        entry = dict(entry)
        if offsets:
            entry["data_offsets"] = [position, position + size]
            if name == DIGESTS_NAME:
                entry["shape"] = [len(archive.entries) - 1, DIGEST_BYTES]
        entries[name] = entry
        position += size
    if has_table:
        table = digest_table(
            {
                name: _entry_digest(name, entries[name], blob)
                for name, blob in blobs.items()
                if name != DIGESTS_NAME
            }
        )
        blobs[DIGESTS_NAME] = table.numpy().tobytes()
        if isinstance(archive.document, dict) and isinstance(
            archive.document.get("checksums"), dict
        ):
            own = _entry_digest(
                DIGESTS_NAME, entries[DIGESTS_NAME], blobs[DIGESTS_NAME]
            )
            archive.document["checksums"] = {DIGESTS_NAME: own}
    document = _dumps(archive.document)
    metadata = {
        **archive.metadata,
        METADATA_KEY: document,
        METADATA_SHA_KEY: hashlib.sha256(document.encode("utf-8")).hexdigest(),
    }
    header = _dumps({"__metadata__": metadata, **entries}).encode("utf-8")
    header += b" " * (-len(header) % 8)
    body = b"".join(blobs.get(name, b"") for name in archive.entries)
    return struct.pack("<Q", len(header)) + header + body


# -- mutations -------------------------------------------------------------------------


def _bytes_case(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    buf = bytearray(data)
    n = len(buf)
    kind = rng.choice(
        [
            "flip",
            "flip-header",
            "truncate",
            "append",
            "zero",
            "swap",
            "random",
            "length",
        ]
    )
    if kind in ("flip", "flip-header"):
        (length,) = struct.unpack("<Q", data[:8])
        top = min(n, 8 + length) if kind == "flip-header" else n
        for _ in range(rng.choice([1, 1, 2, 8])):
            i = rng.randrange(top)
            buf[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del buf[rng.randrange(n) :]
    elif kind == "append":
        buf += bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, 64])))
    elif kind in ("zero", "random"):
        i = rng.randrange(n)
        j = min(n, i + rng.choice([1, 4, 32, 512]))
        fill = bytes(rng.randrange(256) for _ in range(j - i))
        buf[i:j] = bytes(j - i) if kind == "zero" else fill
    elif kind == "swap":
        size = rng.choice([1, 2, 8, 64])
        i, j = rng.randrange(max(1, n - size)), rng.randrange(max(1, n - size))
        a, b = bytes(buf[i : i + size]), bytes(buf[j : j + size])
        buf[i : i + size], buf[j : j + size] = b, a
    else:  # the 8-byte header length
        buf[:8] = struct.pack("<Q", rng.choice([0, 1, 7, n, n - 8, 2**40, 2**64 - 1]))
    return kind, bytes(buf)


def _number(rng: random.Random, value: Any) -> Any:
    """A plausible or hostile replacement for a number."""
    base = value if isinstance(value, int) and not isinstance(value, bool) else 1
    return rng.choice(
        [
            base + 1,
            base - 1,
            base * 2,
            base // 2,
            0,
            -1,
            -base,
            rng.choice(_HUGE),
            -rng.choice(_HUGE),
            base + 0.5,
            float(base),
            raw("1e400"),
            raw("-1e400"),
            raw("1" + "0" * 400),
            None,
            str(base),
            True,
            [base],
        ]
    )


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a leaf (and to each container) of a JSON value."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value[:64]):
            yield from _paths(item, (*prefix, i))


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


def _set(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    _get(value, path[:-1])[path[-1]] = new
    return value


def _edit_document(rng: random.Random, doc: Any) -> tuple[str, Any]:
    """Replace one field (or one element) of the labelzip document."""
    paths = [p for p in _paths(doc) if p and p[0] != "checksums"]
    path = rng.choice(paths)
    old = _get(doc, path)
    if isinstance(old, bool):
        new: Any = rng.choice([not old, None, 0])
    elif isinstance(old, int | float):
        new = _number(rng, old)
    elif isinstance(old, str):
        new = rng.choice(["", old + "x", old.upper(), "topk", "F16", "sample", "ms"])
    elif isinstance(old, list):
        new = rng.choice([[], old[:-1], [*old, *old[-1:]], old[::-1], None])
    elif isinstance(old, dict):
        new = rng.choice([{}, None, [], dict(list(old.items())[:-1])])
    else:  # None
        new = rng.choice([0, 1.5, "x", [], {}, {"keep": 0.5}])
    return "doc:" + str(path[0]), _set(doc, path, new)


def _edit_entry(rng: random.Random, archive: RawArchive) -> tuple[str, bool]:
    """Edit one tensor entry; returns (kind, keep consistent offsets)."""
    name = rng.choice(sorted(archive.entries))
    entry = archive.entries[name]
    kind = rng.choice(["dtype", "shape", "offsets"])
    if kind == "dtype":
        entry["dtype"] = rng.choice(_DTYPES)
    elif kind == "shape":
        shape = list(entry["shape"])
        choice = rng.randrange(5)
        if choice == 0 and len(shape) > 1:
            shape = shape[::-1]
        elif choice == 1 and shape:
            shape[rng.randrange(len(shape))] = _number(rng, shape[0])
        elif choice == 2:
            shape = [*shape, 1] if rng.random() < 0.5 else shape[:-1]
        elif choice == 3 and shape:
            shape = [shape[0] * 2, *[s // 2 if s > 1 else s for s in shape[1:]]]
        else:
            shape = [int(torch.tensor(shape).prod())] if shape else [1]
        entry["shape"] = shape
    else:
        start, end = entry["data_offsets"]
        entry["data_offsets"] = rng.choice(
            [
                [start + 1, end],
                [start, end - 1],
                [end, start],
                [start, 2**70],
                [-8, end],
            ]
        )
        return "entry:offsets", False
    return f"entry:{kind}", True


def _deep(depth: int) -> str:
    return raw("[" * depth + "]" * depth)


def _sizes_case(rng: random.Random, archive: RawArchive) -> str:
    doc = archive.document
    kind = rng.choice(
        ["count", "chunk", "shape", "layout", "nest-doc", "nest-container"]
    )
    if kind == "count":
        key = rng.choice(["num_labels", "num_classes", "num_stored", "chunk_size"])
        doc[key] = rng.choice([*_HUGE, -1, 0, raw("1e400"), raw("2e9"), 10**9])
    elif kind == "chunk" and doc.get("chunk_labels"):
        i = rng.randrange(len(doc["chunk_labels"]))
        doc["chunk_labels"][i] = rng.choice([*_HUGE, -1, 0, raw("1e400")])
    elif kind == "shape":
        name = rng.choice(sorted(archive.entries))
        entry = archive.entries[name]
        dims = len(entry["shape"]) or 1
        entry["shape"] = [rng.choice([*_HUGE, -1, raw("1e400")]) for _ in range(dims)]
    elif kind == "layout" and isinstance(doc.get("layout"), dict):
        big = rng.choice([10**5, 10**6, 10**9, 2**40, 2**70])
        doc["layout"]["shape"] = [big, *doc["layout"]["shape"][1:]]
        doc["num_labels"] = big * int(
            torch.tensor(doc["layout"]["shape"][1:] or [1]).prod()
        )
    elif kind == "nest-doc":
        key = rng.choice(["user", "prune", "class_names", "codec", "layout"])
        doc[key] = _deep(rng.choice([100, 5000, 100_000]))
    else:  # deep nesting in the safetensors header itself
        archive.metadata = {**archive.metadata, "x": _deep(100)}
        archive.entries[rng.choice(sorted(archive.entries))]["shape"] = _deep(
            rng.choice([1000, 100_000])
        )
    return "sizes:" + kind


def mutate(rng: random.Random, data: bytes, family: str) -> tuple[str, bytes]:
    """One corruption of ``data`` from ``family`` (see :data:`FAMILIES`)."""
    if family == "bytes":
        return _bytes_case(rng, data)
    archive = RawArchive.parse(data)
    if family == "header":
        if rng.random() < 0.5:
            kind, archive.document = _edit_document(rng, archive.document)
            return kind, rebuild(archive)
        kind, consistent = _edit_entry(rng, archive)
        return kind, rebuild(archive, offsets=consistent)
    kind = _sizes_case(rng, archive)
    return kind, rebuild(archive)


# -- running cases ---------------------------------------------------------------------


class _Timeout(Exception):
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Timeout


def _decode(path: Path) -> tuple[str, torch.Tensor | None]:
    """Open, verify and decode ``path``: ("decoded", labels), ("refused", None) or
    ("crash: ...", None)."""
    try:
        with ArchiveReader(path) as reader:
            reader.info()
            reader.verify()
            parts = list(reader.decode_all())
            shape = (*reader.layout.shape, reader.num_classes)
        labels = torch.cat(parts) if parts else torch.zeros(0)
        return "decoded", labels.reshape(shape)
    except LabelzipError:
        return "refused", None
    except _Timeout:
        raise
    except Exception as exc:  # noqa: BLE001 - any other exception is the finding
        return f"crash: {type(exc).__name__}: {str(exc)[:200]}", None


def check_archive(path: Path, expected: torch.Tensor, timeout_s: float) -> str:
    """``refused``, ``identical``, ``wrong``, ``hang`` or ``crash: ...`` for one file."""
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        outcome, labels = _decode(path)
    except _Timeout:
        return "hang"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if outcome != "decoded":
        return outcome
    assert labels is not None
    same = labels.shape == expected.shape and torch.equal(labels, expected)
    return "identical" if same else "wrong"


def run_fuzz(
    archives: Sequence[FuzzArchive],
    cases: int,
    *,
    seed: int = 0,
    families: Sequence[str] = FAMILIES,
    timeout_s: float = 10.0,
    progress: Callable[[int, FuzzReport], None] | None = None,
) -> FuzzReport:
    """``cases`` seeded corruptions, spread round-robin over archives and families.

    Case ``i`` uses ``random.Random(f"{seed}:{i}")``, so any case reruns alone.
    """
    report = FuzzReport()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="labelzip-fuzz-") as tmp:
        path = Path(tmp) / "case.lz"
        for i in range(cases):
            rng = random.Random(f"{seed}:{i}")
            archive = archives[i % len(archives)]
            family = families[(i // len(archives)) % len(families)]
            kind, data = mutate(rng, archive.data, family)
            path.write_bytes(data)
            outcome = check_archive(path, archive.labels, timeout_s)
            if outcome == "wrong" and kind.startswith("doc:"):
                outcome = "reinterpreted"  # a valid document that says otherwise
            label = outcome if outcome in _ACCEPTED else outcome.split(":")[0]
            report.outcomes[(archive.name, family, label)] += 1
            if outcome not in _ACCEPTED and len(report.failures) < 50:
                report.failures.append(
                    f"case {seed}:{i} {archive.name} {family}/{kind}: {outcome}"
                )
            report.cases += 1
            if progress is not None:
                progress(i, report)
    report.seconds = time.perf_counter() - started
    return report
