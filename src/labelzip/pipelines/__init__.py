"""End-to-end vision pipelines: relabel, replay, student training, quickstart.

Import the submodules directly (``labelzip.pipelines.relabel``, ...); this
package imports nothing heavy on its own.
"""

from __future__ import annotations

__all__: list[str] = []
