"""Shared, seeded fixtures: synthetic teacher logits shaped like a real classifier's.

``make_teacher_logits`` builds logits with the structure codecs care about: one
dominant class per label with a varying margin (some labels confident, some
ambiguous), a few related classes that carry real secondary mass, and a Gaussian
tail. For C=1000 the mean max probability is about 0.83 and logits span about
-7..16, close to an ImageNet teacher's.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import labelzip
from labelzip.faults import FAULT_ENV

__all__ = ["ArchiveForge", "make_teacher_logits", "write_image_folder"]

# Test tensors are small: one intra-op thread is as fast, and avoids the 10x
# slowdowns of oversubscribed thread pools on a shared machine. Override with
# LABELZIP_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("LABELZIP_TEST_THREADS", "1")))


def make_teacher_logits(
    num_labels: int,
    num_classes: int,
    seed: int = 0,
    *,
    tail_std: float = 1.5,
    margin_mean: float = 2.5,
    margin_std: float = 2.0,
) -> torch.Tensor:
    """(N, C) float32 logits of a peaked, class-structured synthetic teacher.

    Args:
        num_labels: N.
        num_classes: C.
        seed: generator seed; equal arguments give equal tensors.
        tail_std: standard deviation of the non-target logits.
        margin_mean, margin_std: the target logit sits this far (in nats, normal
            distributed) above the log-sum-exp of all other logits.
    """
    g = torch.Generator().manual_seed(seed)
    dim = 16
    emb = torch.nn.functional.normalize(
        torch.randn(num_classes, dim, generator=g), dim=1
    )
    target = torch.randint(0, num_classes, (num_labels,), generator=g)
    # Classes similar to the target get extra logit, by a per-label amount.
    sim = (emb[target] @ emb.T).clamp_min(0) ** 2  # (N, C)
    strength = 8.0 * torch.rand(num_labels, 1, generator=g)
    logits = strength * sim + tail_std * torch.randn(
        num_labels, num_classes, generator=g
    )
    others = logits.scatter(1, target[:, None], float("-inf")).logsumexp(dim=1)
    margin = margin_mean + margin_std * torch.randn(num_labels, generator=g)
    logits[torch.arange(num_labels), target] = others + margin
    return logits.float()


_CACHE: dict[tuple[int, int, int], torch.Tensor] = {}


def _cached(num_labels: int, num_classes: int, seed: int) -> torch.Tensor:
    key = (num_labels, num_classes, seed)
    if key not in _CACHE:
        _CACHE[key] = make_teacher_logits(num_labels, num_classes, seed)
    return _CACHE[key].clone()  # tests may modify their copy


@pytest.fixture
def teacher_logits() -> torch.Tensor:
    """(512, 1000) realistic peaked logits (ImageNet-sized), seed 0."""
    return _cached(512, 1000, 0)


@pytest.fixture
def teacher_logits_c10() -> torch.Tensor:
    """(256, 10) peaked logits with 10 classes (CIFAR / Fashion-MNIST sized), seed 1."""
    return _cached(256, 10, 1)


@pytest.fixture
def make_logits() -> Callable[..., torch.Tensor]:
    """The generator itself, for tests that need other shapes or seeds."""
    return make_teacher_logits


# -- the chunked compress runs (one process and torchrun) -------------------------

# case name -> `labelzip compress` codec arguments: the codecs and the rate/prune
# paths whose archives must be the same bytes however the encode is split.
COMPRESS_CASES = {
    "dense": ["--codec", "dense"],
    "topk": ["--codec", "topk", "--k", "5"],
    "topk-ratio-prune": ["--codec", "topk", "--ratio", "8", "--prune-keep", "0.5"],
    "vqae": ["--codec", "vqae", "--opt", "steps=50"],
    "rskd": ["--codec", "rskd", "--opt", "num_samples=8"],
    "auto": ["--ratio", "8", "--auto-steps", "20", "--auto-confirm-steps", "40"],
}


@pytest.fixture
def compress_cases() -> dict[str, list[str]]:
    """:data:`COMPRESS_CASES` (fixtures reach every test folder; imports do not)."""
    return {name: list(argv) for name, argv in COMPRESS_CASES.items()}


@pytest.fixture
def chunk_views(tmp_path: Path) -> Path:
    """(300, 4, 40) fp16 views: 1200 labels, 12 chunks of 100 (6 kept at keep 0.5)."""
    path = tmp_path / "views.safetensors"
    logits = _cached(1200, 40, 3).reshape(300, 4, 40).half()
    save_file({"logits": logits}, str(path))
    return path


# -- forging archives: header edits with every checksum recomputed ------------------


class ArchiveForge:
    """Edit an archive's headers and recompute its checksums as an attacker would.

    Tests of the integrity rules (and the fuzz suite) use it: an edit made with
    ``reseal`` passes every digest of the chosen scheme, so only the reader's
    own checks stand between it and a wrong decode.
    """

    @staticmethod
    def read(path: Path) -> tuple[dict[str, Any], bytes]:
        """(safetensors header as a dict, tensor data bytes)."""
        raw = path.read_bytes()
        (length,) = struct.unpack("<Q", raw[:8])
        return json.loads(raw[8 : 8 + length]), raw[8 + length :]

    @staticmethod
    def write(path: Path, outer: dict[str, Any], data: bytes) -> None:
        head = json.dumps(outer, separators=(",", ":")).encode()
        head += b" " * (-len(head) % 8)
        path.write_bytes(struct.pack("<Q", len(head)) + head + data)

    @classmethod
    def edit(cls, path: Path, change: Callable[[dict[str, Any]], None]) -> None:
        """Change the safetensors header (tensor entries, metadata) in place."""
        outer, data = cls.read(path)
        change(outer)
        cls.write(path, outer, data)

    @classmethod
    def edit_document(
        cls, path: Path, change: Callable[[dict[str, Any]], None]
    ) -> None:
        """Change the labelzip document and store it with a matching sha256."""
        outer, data = cls.read(path)
        doc = json.loads(outer["__metadata__"]["labelzip"])
        change(doc)
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        outer["__metadata__"] = {
            "labelzip": text,
            "labelzip_sha256": hashlib.sha256(text.encode()).hexdigest(),
        }
        cls.write(path, outer, data)

    @classmethod
    def reseal(cls, path: Path, scheme: str) -> None:
        """Recompute the ``digests`` table, the document's checksum of it and the
        document's sha256 of a format 2/3 archive.

        ``scheme``: ``"named"`` hashes each tensor's name and bytes (format 2's
        rule, which a format 3 reader must refuse); ``"entry"`` hashes each
        tensor's header entry and bytes (format 3's own rule).
        """
        outer, data = cls.read(path)
        entries = {k: v for k, v in outer.items() if k != "__metadata__"}

        def digest(name: str, payload: bytes) -> bytes:
            if scheme == "named":
                return hashlib.sha256(name.encode() + b"\x00" + payload).digest()
            entry = entries[name]
            text = json.dumps(
                {
                    "data_offsets": entry["data_offsets"],
                    "dtype": entry["dtype"],
                    "name": name,
                    "shape": entry["shape"],
                },
                sort_keys=True,
                separators=(",", ":"),
            )
            inner = hashlib.sha256(payload).digest()
            return hashlib.sha256(text.encode() + b"\n" + inner).digest()

        def payload(name: str) -> bytes:
            start, end = entries[name]["data_offsets"]
            return data[start:end]

        table = b"".join(
            digest(n, payload(n)) for n in sorted(entries) if n != "digests"
        )
        start, end = entries["digests"]["data_offsets"]
        if end - start != len(table):
            raise ValueError("the digests table changed size; cannot reseal")
        data = data[:start] + table + data[end:]
        own = (
            hashlib.sha256(table).hexdigest()
            if scheme == "named"
            else digest("digests", table).hex()
        )
        cls.write(path, outer, data)
        cls.edit_document(path, lambda doc: doc.update(checksums={"digests": own}))


@pytest.fixture
def forge() -> type[ArchiveForge]:
    """:class:`ArchiveForge`: header edits with checksums recomputed."""
    return ArchiveForge


def write_image_folder(
    root: Path,
    *,
    channels: int,
    per_class: int = 4,
    num_classes: int = 10,
    size: int | tuple[int, int] = 28,
    seed: int = 0,
) -> Path:
    """A class-per-subfolder tree of PNGs (``root/class<k>/<n>.png``), as a user's.

    Class k has its own brightness (per channel in RGB, so also its own colour)
    and a bright row at a class-specific height on noise: both survive crops and
    flips, so a small teacher learns the classes in a few steps. ``size`` is one
    side, one (H, W), or a list of them that the images cycle through.
    """
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    sides = size if isinstance(size, list) else [size]
    count = 0
    for k in range(num_classes):
        folder = root / f"class{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            side = sides[count % len(sides)]
            count += 1
            h, w = (side, side) if isinstance(side, int) else side
            levels = torch.tensor([20 + 22 * ((k + 3 * c) % 10) for c in range(3)])
            pixels = torch.randint(0, 40, (h, w, channels), generator=g)
            pixels += levels[:channels]
            row = (k * h) // num_classes
            pixels[row : row + max(1, h // 10)] += 60
            array = pixels.clamp(0, 255).to(torch.uint8).numpy()
            mode = "L" if channels == 1 else "RGB"
            Image.fromarray(array[..., 0] if channels == 1 else array, mode).save(
                folder / f"{n:03d}.png"
            )
    return root


class _CreatesFile:
    """Unpickling this calls ``open(path, "w")``: the file appears on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


@pytest.fixture
def evil_pickle(tmp_path: Path) -> tuple[Path, Path]:
    """(a ``torch.save`` file whose unpickling creates a file, that file's path)."""
    marker = tmp_path / "unpickled-marker"
    path = tmp_path / "evil.pt"
    torch.save(_CreatesFile(marker), path)
    assert not marker.exists()
    return path, marker


@pytest.fixture
def image_folder() -> Callable[..., Path]:
    """:func:`write_image_folder`, for tests that build a user's image folder."""
    return write_image_folder


# -- torchrun: several gloo ranks on CPU ----------------------------------------------

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def run_torchrun(
    ranks: int,
    argv: list[str],
    fault: str | None = None,
    *,
    python: bool = True,
    monitor_s: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``labelzip ARGV`` (or, without ``python``, ARGV itself) under torchrun
    with ``ranks`` processes of this checkout's labelzip; ``fault`` sets the test
    fault hook (:mod:`labelzip.faults`). ``monitor_s`` slows torchrun's check of
    its workers, so that after a rank is killed the others report before
    torchrun stops them (a race a loaded machine otherwise loses)."""
    source = str(Path(labelzip.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": source, "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_ENV, None)
    if fault is not None:
        env[FAULT_ENV] = fault
    head = [*TORCHRUN, "--nproc_per_node", str(ranks)]
    if monitor_s is not None:
        head += ["--monitor-interval", str(monitor_s)]
    command = [*head, "-m", "labelzip", *argv] if python else [*head, *argv]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture
def torchrun() -> Callable[..., subprocess.CompletedProcess[str]]:
    """:func:`run_torchrun` (fixtures reach every test folder; imports do not)."""
    return run_torchrun


# -- golden values across machines ---------------------------------------------------
#
# Some tests compare against values a machine wrote once: committed archives'
# decoded labels, archive bytes from a fit, trained weights. Those hold bit for
# bit only where float arithmetic (libm's exp and log, the BLAS) rounds as it
# did on that machine; on another CPU (seen: an AMD EPYC wrote them, an Intel
# Xeon with AVX-512 FP16 / AMX differs in the last bit of exp/log and matmul)
# they hold to float rounding. The probe below decodes two committed archives
# whose decoded labels are stored too: one top-k archive (exp, log) and one
# VQAE archive (matmul, the decoder MLP).

_GOLDEN_DATA = Path(__file__).parent / "archive" / "data"


def _float_arithmetic_matches_the_goldens() -> bool:
    from safetensors.torch import load_file

    from labelzip.archive import load_archive

    for name, stored, key in (
        ("v1_topk_pruned.lz", "v1_decoded.safetensors", "topk"),
        ("v2_vqae.lz", "v2_decoded.safetensors", "vqae"),
    ):
        want = load_file(str(_GOLDEN_DATA / stored))[key]
        if not torch.equal(load_archive(_GOLDEN_DATA / name), want):
            return False
    return True


@pytest.fixture(scope="session")
def reference_floats() -> bool:
    """Whether float arithmetic here rounds as on the machine that wrote the goldens.

    Tests of bit-exact golden values use it to tell a real change (which
    fails) from another CPU's rounding (which skips the exact check, after
    checking what still holds to float rounding).
    """
    return _float_arithmetic_matches_the_goldens()


@pytest.fixture
def skip_if_other_floats(reference_floats: bool) -> Callable[[bool, str], None]:
    """``check(ok, what)``: skip the rest of the test when a bit-exact golden
    ``what`` does not hold (``ok`` False) on a CPU that rounds differently.

    Where floats round as on the golden machine it returns, and the test's
    own exact assertion then fails on any change.
    """

    def check(ok: bool, what: str) -> None:
        if not ok and not reference_floats:
            pytest.skip(
                f"{what}: not the golden value, but float arithmetic on this CPU "
                "rounds differently from the machine that wrote the golden values "
                "(tests/conftest.py, reference_floats)"
            )

    return check
