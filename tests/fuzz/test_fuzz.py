"""Seeded archive fuzzing in CI: every corruption is refused or decodes unchanged.

Small archives of every registered codec (plain, LPLD-pruned, and context codecs
through their relabel view recipe) get 3,000 corruptions: random bytes, header
edits with every digest recomputed as the writer would, and crafted sizes
(:mod:`labelzip.bench.fuzz`). A case passes when reading ends in a
``LabelzipError`` or in labels ``torch.equal`` to the intact archive's.
``benchmarks/fuzz.py`` runs the same cases at length.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from labelzip.bench.fuzz import (
    FAMILIES,
    FuzzArchive,
    RawArchive,
    build_archives,
    check_archive,
    mutate,
    rebuild,
    run_fuzz,
)
from labelzip.codecs.registry import available_codecs

torch.set_num_threads(1)

CASES = 3000


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> list[FuzzArchive]:
    return build_archives(tmp_path_factory.mktemp("fuzz"))


def test_every_codec_plain_and_pruned(archives: list[FuzzArchive]) -> None:
    names = {a.name for a in archives}
    for codec in available_codecs():
        assert {codec, f"{codec}-pruned"} <= names


def test_rebuild_without_edits_keeps_the_archive_readable(
    tmp_path: Path, archives: list[FuzzArchive]
) -> None:
    """The attacker's re-serialisation is faithful: an unedited rebuild decodes."""
    for archive in archives:
        path = tmp_path / "same.lz"
        path.write_bytes(rebuild(RawArchive.parse(archive.data)))
        assert check_archive(path, archive.labels, 30.0) == "identical", archive.name


def test_cases_are_reproducible(archives: list[FuzzArchive]) -> None:
    for family in FAMILIES:
        a = mutate(random.Random("7:1"), archives[0].data, family)
        b = mutate(random.Random("7:1"), archives[0].data, family)
        assert a == b and a[1] != archives[0].data


def test_fuzz_corruptions_are_refused_or_harmless(
    archives: list[FuzzArchive],
) -> None:
    report = run_fuzz(archives, CASES, seed=2026, timeout_s=10.0)
    assert report.cases == CASES
    families = {family for _, family, _ in report.outcomes}
    assert families == set(FAMILIES)
    refused = sum(n for (_, _, out), n in report.outcomes.items() if out == "refused")
    assert refused > CASES // 2  # the corruptions reach the checks
    assert report.num_failures == 0, "\n".join(report.failures)
