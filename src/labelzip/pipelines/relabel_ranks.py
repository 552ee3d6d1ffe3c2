"""``labelzip relabel`` split across torchrun ranks: the teacher work shared, one archive.

The expensive part of a relabel run is the teacher's forward pass over every
view (epoch e, image i). Views are a pure function of (seed, e, i)
(:mod:`labelzip.augment`), so any rank can render any view. Under torchrun
the run is a :class:`~labelzip.pipelines.chunked.ChunkJob`:

- with codec ``auto`` rank 0 measures the candidates on the single process's
  sample of views and sends the choice (codec, options, view budget) to the
  others;
- rank 0 labels the fit sample (the same views, in the same teacher batches,
  as a single process) and fits the codec, which it sends to the others;
- the archive's chunks (``chunk_size`` stored views each, in flat order
  ``e * M + i``; with pruning the kept ones) are split into contiguous
  ranges, one per rank. Each rank runs the teacher on the single process's
  teacher batches (:func:`~labelzip.pipelines.relabel.view_batches`) that
  hold its views (a batch that straddles two ranges is run by both, so no
  view is labelled in a batch the single process did not use) and encodes
  its chunks into its partial file;
- rank 0 joins the chunks into one archive, byte-identical to the
  single-process relabel with the same seed.

Every rank loads the same image set and the same teacher; their
fingerprints (set, teacher weights) must agree. One output archive per run.
One process with ``--resume`` runs the same path (a world of one), so a killed
relabel continues from its last complete chunk.
"""

from __future__ import annotations

import dataclasses
import struct
import time

import torch
from torch import nn

from labelzip.archive import ArchiveMetadata, ArchiveWriter, Layout
from labelzip.archive.chunks import ChunkCutter, ChunkEncoder
from labelzip.codecs.base import Codec
from labelzip.distributed import Ranks, all_gather_bytes, run_on_main
from labelzip.pipelines.chunked import (
    ChunkSink,
    Report,
    json_digest,
    run_chunked,
)
from labelzip.pipelines.imageset import ImageSet, check_image_tensor, model_id
from labelzip.pipelines.relabel import (
    ProgressFn,
    RelabelConfig,
    RelabelOutput,
    RelabelResult,
    ViewLabeller,
    explicit_records,
    fit_output,
    plan_output,
    relabel_metadata,
    relabel_result,
    view_batches,
)
from labelzip.pipelines.relabel_auto import choose_relabel_codec
from labelzip.pipelines.relabel_types import LAYOUT_DIMS, default_view_config
from labelzip.selection.auto import AUTO
from labelzip.selection.record import AutoChoice

__all__ = ["relabel_chunked"]


class _RelabelJob:
    """One relabel output on its way to disk (the :class:`ChunkJob` of ``relabel``)."""

    def __init__(
        self,
        image_set: ImageSet,
        teacher: nn.Module,
        output: RelabelOutput,
        config: RelabelConfig,
        teacher_id: str,
        device: torch.device,
        ranks: Ranks,
        progress: ProgressFn | None,
    ) -> None:
        images = check_image_tensor(image_set.images, "distilled images")
        num_classes = len(image_set.class_names)
        view = config.view or default_view_config(*images.shape[-2:])
        self.config = config
        self.layout = Layout(LAYOUT_DIMS, (config.epochs, len(images)))
        metadata = relabel_metadata(image_set, images, config, view, teacher_id)
        records = (
            explicit_records(images, config, view) if config.store_augmentations else {}
        )
        self.labeller = ViewLabeller(images, teacher, view, config, num_classes, device)
        self.auto: AutoChoice | None = None
        if output.codec == AUTO:  # rank 0 measures, every rank plans the choice

            def choose() -> tuple[RelabelOutput, ArchiveMetadata, AutoChoice]:
                return choose_relabel_codec(
                    output,
                    self.labeller.rows,
                    self.layout,
                    num_classes,
                    metadata,
                    config,
                )

            output, metadata, self.auto = run_on_main(
                ranks, choose, "choosing the codec (auto)"
            )
        self.metadata: ArchiveMetadata = metadata
        self.job = plan_output(
            output, self.layout, num_classes, self.metadata, records, config
        )
        self.job.auto = self.auto
        self.out = output.path
        self.chunk_size = config.chunk_size
        plan = self.job.plan
        self.stored = (
            plan.kept_indices()
            if plan is not None
            else torch.arange(self.layout.num_labels, dtype=torch.int64)
        )
        self.num_stored = len(self.stored)
        self.fingerprint = json_digest(
            {
                "set": image_set.fingerprint,
                "images": list(images.shape),
                "teacher": model_id(teacher),
            }
        )
        # What else decides the bytes: the codec, its options and target (after
        # auto: the choice, remade alike on a resume), the view recipe, seeds,
        # chunk and batch sizes, the teacher and the device type it runs on.
        # Not the output path: the partial files are found beside it.
        self.settings_digest = json_digest(
            {
                "output": output.model_dump(mode="json", exclude={"path"}),
                "config": config.model_dump(mode="json"),
                "metadata": self.metadata.user,
                "teacher": teacher_id,
                "device": device.type,
            }
        )
        self.progress = progress
        self.done = 0
        self.seconds: dict[str, float] = {}
        self._cache: torch.Tensor | None = None  # the fit sample's rows, when complete

    def fit(self) -> Codec:
        """Rank 0: label the fit sample in the single process's batches, fit."""
        fit_flat = self.job.fit_flat
        pairs = list(self.labeller.blocks(fit_flat, lambda n: None))
        rows = torch.cat([r for _, r in pairs])
        started = time.perf_counter()
        codec = fit_output(
            self.job,
            rows,
            self.layout,
            self.labeller.num_classes,
            self.metadata,
            self.config,
        )
        self.seconds["fit"] = time.perf_counter() - started
        if len(fit_flat) == self.num_stored:  # every stored view: encode from here
            self._cache = rows
        return codec

    def encode(self, codec: Codec, chunks: range, sink: ChunkSink) -> None:
        """Label the views of ``chunks`` (whole teacher batches) and encode them."""
        lo = chunks.start * self.chunk_size
        hi = min(chunks.stop * self.chunk_size, self.num_stored) if chunks else lo
        encoder = ChunkEncoder(codec, layout=self.layout, metadata=self.metadata)
        cutter = ChunkCutter(encoder, self.chunk_size, sink)
        if self._cache is not None:  # rank 0 labelled every view for the fit
            cutter.add(self._cache[lo:hi], self.stored[lo:hi])
            cutter.finish()
            return
        m = self.labeller.num_images
        for epoch, part in view_batches(self.stored, m, self.config):
            if part.stop <= lo or part.start >= hi:
                continue
            flat = self.stored[part]
            logits = self.labeller.label(epoch, flat - epoch * m)
            a, b = max(lo, part.start) - part.start, min(hi, part.stop) - part.start
            cutter.add(logits[a:b], flat[a:b])
            self.done += b - a
            if self.progress is not None:
                self.progress(self.done, hi - lo)
        cutter.finish()

    def writer(self, codec: Codec) -> ArchiveWriter:
        return ArchiveWriter(
            self.out,
            codec,
            layout=self.layout,
            chunk_size=self.chunk_size,
            prune=self.job.plan,
            metadata=self.metadata,
            side_tensors=self.job.side,
        )

    def release(self) -> None:
        self._cache = None


def relabel_chunked(
    image_set: ImageSet,
    teacher: nn.Module,
    output: RelabelOutput,
    config: RelabelConfig,
    *,
    teacher_id: str,
    device: torch.device,
    ranks: Ranks,
    resume: bool = False,
    progress: ProgressFn | None = None,
    report: Report | None = None,
) -> RelabelResult | None:
    """Relabel ``image_set`` into ``output`` with every rank's share of the views.

    Args:
        image_set, teacher, output, config, teacher_id, device: as for
            :func:`~labelzip.pipelines.relabel.relabel` (one output; the teacher
            on this rank's device).
        ranks: this process's rank (one process: a resumable run).
        resume: continue from the partial files of a killed run (as for
            :func:`~labelzip.pipelines.chunked.run_chunked`); the fit sample is
            labelled again, the views of the kept chunks are not.
        progress: ``progress(done, total)`` of this rank's share of the views.
        report: as for :func:`~labelzip.pipelines.chunked.run_chunked`.

    Returns:
        On rank 0 the result (its teacher views count every rank's); None on
        the other ranks.

    Raises:
        ConfigError: a bad configuration or unreachable target (on every rank,
            or from rank 0's fit).
        DistributedError: ranks that disagree on the set or teacher, or a rank
            that failed, died or hung.
    """
    start = time.perf_counter()
    teacher.eval()
    job = _RelabelJob(
        image_set, teacher, output, config, teacher_id, device, ranks, progress
    )
    codec, account = run_chunked(job, ranks=ranks, resume=resume, report=report)
    labeller = job.labeller
    counts = all_gather_bytes(
        ranks, struct.pack("<Q", labeller.count), 8, "counting the teacher's views"
    )
    if account is None:
        return None
    job.job.codec = codec
    seconds = {
        **job.seconds,
        **labeller.seconds,
        "total": time.perf_counter() - start,
    }
    result = relabel_result(
        [job.job], [account], labeller, job.layout, config, False, seconds
    )
    views = sum(struct.unpack("<Q", raw[:8])[0] for raw in counts)
    return dataclasses.replace(result, teacher_views=views)
