"""Distilled image sets: every framework's images in one format (:class:`DistilledSet`).

Methods (all via :func:`distill`): ``random`` (class-balanced real subset),
``sre2l`` / ``cda`` / ``lpld`` (data-free recovery from a teacher's BatchNorm
statistics), ``rded`` (stitched realistic crops) and ``import`` (a folder of
images a user already has). See docs/distill.md.
"""

from __future__ import annotations

from labelzip.distill.api import METHOD_CONFIGS, METHODS, distill, method_config
from labelzip.distill.base import (
    FORMAT_NAME,
    FORMAT_VERSION,
    METADATA_KEY,
    DistilledSet,
    ProgressCallback,
    RunOptions,
    check_ipc,
)
from labelzip.distill.bnstats import BNMatcher, class_bn_statistics, running_statistics
from labelzip.distill.imported import ImportConfig, import_folder
from labelzip.distill.rded import RDEDConfig, patch_boxes, rded, stitch
from labelzip.distill.recover import (
    CDAConfig,
    LPLDConfig,
    RecoverConfig,
    RecoveryResult,
    recover,
    recover_batch,
)
from labelzip.distill.subset import RandomConfig, random_subset

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "METHODS",
    "METHOD_CONFIGS",
    "BNMatcher",
    "CDAConfig",
    "DistilledSet",
    "ImportConfig",
    "LPLDConfig",
    "ProgressCallback",
    "RDEDConfig",
    "RandomConfig",
    "RecoverConfig",
    "RecoveryResult",
    "RunOptions",
    "check_ipc",
    "class_bn_statistics",
    "distill",
    "import_folder",
    "method_config",
    "patch_boxes",
    "random_subset",
    "recover",
    "recover_batch",
    "running_statistics",
    "rded",
    "stitch",
]
