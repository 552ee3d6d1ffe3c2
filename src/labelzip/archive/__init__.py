"""labelzip archives: one safetensors file holding a compressed, self-describing label set.

See docs/format.md for the specification and :mod:`labelzip.archive.format` for
the constants and schema.
"""

from labelzip.archive.dataset import ArchiveLabels
from labelzip.archive.format import (
    DEFAULT_CHUNK_SIZE,
    FORMAT_VERSION,
    ArchiveHeader,
    ArchiveMetadata,
    Layout,
)
from labelzip.archive.rate import (
    codec_for_target,
    configure_codec,
    estimate_header_bytes,
    fit_codec,
    fit_for_target,
    rate_note,
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
    "codec_for_target",
    "configure_codec",
    "estimate_header_bytes",
    "fit_codec",
    "fit_for_target",
    "load_archive",
    "open_archive",
    "rate_note",
    "save_archive",
]
