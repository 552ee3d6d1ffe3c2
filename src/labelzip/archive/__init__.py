"""labelzip archives: one safetensors file holding a compressed, self-describing label set.

See docs/format.md for the specification and :mod:`labelzip.archive.format` for
the constants and schema.
"""

from labelzip.archive.dataset import ArchiveLabels, WindowShuffleSampler
from labelzip.archive.format import (
    DEFAULT_CHUNK_SIZE,
    FORMAT_VERSION,
    ArchiveHeader,
    ArchiveMetadata,
    Layout,
)
from labelzip.archive.reader import ArchiveReader, load_archive, open_archive
from labelzip.archive.writer import ArchiveWriter, save_archive

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "ArchiveHeader",
    "ArchiveLabels",
    "ArchiveMetadata",
    "ArchiveReader",
    "ArchiveWriter",
    "Layout",
    "load_archive",
    "open_archive",
    "save_archive",
    "WindowShuffleSampler",
]
