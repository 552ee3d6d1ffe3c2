"""Storage analysis: what a distilled dataset or LM label set costs to ship.

Byte formulas for distilled images, label payloads, augmentation side
information, codec/teacher models and container headers, per framework
(SRe2L, CDA, RDED, LPLD, LPQLD, FKD, labelzip). docs/storage.md derives every
constant and reproduces the published SRe2L/CDA ImageNet-1K label sizes.
"""

from __future__ import annotations

from labelzip.storage.analysis import (
    UNITS,
    StorageRow,
    format_bytes,
    lm_storage_table,
    make_options,
    storage_table,
)
from labelzip.storage.datasets import (
    DATASETS,
    IMAGE_FORMATS,
    DatasetSpec,
    custom_dataset,
    get_dataset,
    image_bytes_per_image,
)
from labelzip.storage.frameworks import FRAMEWORKS, frameworks_for_mode
from labelzip.storage.options import StorageOptions

__all__ = [
    "DATASETS",
    "FRAMEWORKS",
    "IMAGE_FORMATS",
    "UNITS",
    "DatasetSpec",
    "StorageOptions",
    "StorageRow",
    "custom_dataset",
    "format_bytes",
    "frameworks_for_mode",
    "get_dataset",
    "image_bytes_per_image",
    "lm_storage_table",
    "make_options",
    "storage_table",
]
