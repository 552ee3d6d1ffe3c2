"""Residual product vector quantizer with EMA codebooks and dead-code restarts.

A latent of shape (B, M, D) (M chunks of D dims) is quantized chunk by chunk:
each chunk is replaced by its nearest codeword in that chunk's codebook of
``codebook_size`` entries. With ``num_stages`` > 1 the quantization error of a
stage is quantized again by the next stage (residual VQ), so R stages of k
codewords reach k**R levels per chunk at R codebooks' cost.

Codebooks learn by exponential moving averages of the vectors assigned to them
(k-means in the limit, no codebook gradient), which is more stable than the
codebook loss of the original VQ-VAE; codewords that stop being used are
restarted on random latents of the current batch. The encoder learns through a
straight-through estimator plus a commitment loss.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "QuantizerOutput",
    "ResidualProductQuantizer",
    "nearest_codewords",
    "quantize_residual",
]


def nearest_codewords(residual: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    """Nearest codeword per chunk: (B, M, D) vectors, (M, k, D) books -> (B, M) ids.

    ||r - c||^2 = ||r||^2 - 2 r.c + ||c||^2 and ||r||^2 does not change the
    argmin, so one fused batched matmul per chunk gives the distances.
    Ties go to the lower codeword id.
    """
    norms = (book * book).sum(-1).unsqueeze(1)  # (M, 1, k)
    dist = torch.baddbmm(
        norms, residual.transpose(0, 1), book.transpose(1, 2), alpha=-2.0
    )
    return dist.argmin(dim=-1).transpose(0, 1)  # (B, M)


def quantize_residual(latent: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
    """Residual nearest-codeword search: (B, M, D) latents, (R, M, k, D) -> (B, R, M).

    Stage r quantizes what stages before it left over, as in training.
    """
    chunk = torch.arange(latent.shape[1], device=latent.device)
    residual = latent
    codes = []
    for stage in range(books.shape[0]):
        book = books[stage]  # (M, k, D)
        idx = nearest_codewords(residual, book)
        if stage + 1 < books.shape[0]:
            residual = residual - book[chunk, idx]
        codes.append(idx)
    return torch.stack(codes, dim=1)


class QuantizerOutput:
    """What one quantizer pass returns.

    Attributes:
        quantized: (B, M, D) straight-through quantized latent (gradients flow to the input).
        codes: (B, R, M) int64 codeword ids per stage and chunk.
        commit_loss: scalar mean squared distance between latent and its quantization.
    """

    __slots__ = ("codes", "commit_loss", "quantized")

    def __init__(
        self, quantized: torch.Tensor, codes: torch.Tensor, commit_loss: torch.Tensor
    ) -> None:
        self.quantized = quantized
        self.codes = codes
        self.commit_loss = commit_loss


class ResidualProductQuantizer(nn.Module):
    """R residual stages of M per-chunk codebooks of k codewords of D dims.

    Args:
        num_chunks: M, chunks per latent.
        chunk_dim: D, dims per chunk.
        codebook_size: k, codewords per codebook.
        num_stages: R, residual stages.
        decay: EMA decay of the codebook statistics.
        dead_threshold: a codeword whose EMA usage count falls below this is restarted.
    """

    def __init__(
        self,
        num_chunks: int,
        chunk_dim: int,
        codebook_size: int,
        num_stages: int = 1,
        decay: float = 0.99,
        dead_threshold: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_chunks = num_chunks
        self.chunk_dim = chunk_dim
        self.codebook_size = codebook_size
        self.num_stages = num_stages
        self.decay = decay
        self.dead_threshold = dead_threshold
        shape = (num_stages, num_chunks, codebook_size, chunk_dim)
        self.register_buffer("codebooks", torch.zeros(shape))
        self.register_buffer("ema_count", torch.ones(shape[:3]))
        self.register_buffer("ema_sum", torch.zeros(shape))
        self.register_buffer("initialized", torch.zeros(num_stages, dtype=torch.bool))
        self.codebooks: torch.Tensor
        self.ema_count: torch.Tensor
        self.ema_sum: torch.Tensor
        self.initialized: torch.Tensor

    def nearest(self, residual: torch.Tensor, stage: int) -> torch.Tensor:
        """Codeword ids (B, M) nearest to ``residual`` (B, M, D) in ``stage``."""
        return nearest_codewords(residual, self.codebooks[stage])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Dequantize (B, R, M) codes into the (B, M, D) sum of their codewords."""
        out = None
        chunk = torch.arange(self.num_chunks, device=codes.device)
        for stage in range(codes.shape[1]):
            vec = self.codebooks[stage][chunk, codes[:, stage]]  # (B, M, D)
            out = vec if out is None else out + vec
        assert out is not None
        return out

    def forward(
        self, latent: torch.Tensor, generator: torch.Generator | None = None
    ) -> QuantizerOutput:
        """Quantize (B, M, D) latents; in training mode also update the codebooks."""
        residual = latent
        total = torch.zeros_like(latent)
        codes = []
        for stage in range(self.num_stages):
            target = residual.detach()
            if self.training and not bool(self.initialized[stage]):
                self._init_stage(stage, target, generator)
            idx = self.nearest(target, stage)
            if self.training:
                self._ema_update(stage, target, idx, generator)
            chunk = torch.arange(self.num_chunks, device=latent.device)
            quant = self.codebooks[stage][chunk, idx]  # (B, M, D)
            codes.append(idx)
            total = total + quant
            residual = residual - quant
        commit = (latent - total.detach()).pow(2).mean()
        quantized = latent + (total - latent).detach()
        return QuantizerOutput(quantized, torch.stack(codes, dim=1), commit)

    @torch.no_grad()
    def _init_stage(
        self, stage: int, target: torch.Tensor, generator: torch.Generator | None
    ) -> None:
        # Start from random latents of the first batch (k-means style init).
        batch = target.shape[0]
        pick = torch.randint(
            0, batch, (self.num_chunks, self.codebook_size), generator=generator
        ).to(target.device)
        chunk = torch.arange(self.num_chunks, device=target.device).unsqueeze(1)
        init = target[pick, chunk]  # (M, k, D)
        init = init + 1e-3 * init.std() * torch.randn(
            init.shape, generator=generator
        ).to(init.device)
        self.codebooks[stage].copy_(init)
        self.ema_sum[stage].copy_(init)
        self.ema_count[stage].fill_(1.0)
        self.initialized[stage] = True

    @torch.no_grad()
    def _ema_update(
        self,
        stage: int,
        target: torch.Tensor,
        idx: torch.Tensor,
        generator: torch.Generator | None,
    ) -> None:
        batch, chunks, dim = target.shape
        k = self.codebook_size
        flat = (idx + k * torch.arange(chunks, device=idx.device)).reshape(-1)
        counts = torch.zeros(chunks * k, device=target.device)
        counts.index_add_(0, flat, torch.ones_like(flat, dtype=counts.dtype))
        sums = torch.zeros(chunks * k, dim, device=target.device)
        sums.index_add_(0, flat, target.reshape(-1, dim))
        counts = counts.view(chunks, k)
        sums = sums.view(chunks, k, dim)
        d = self.decay
        self.ema_count[stage].mul_(d).add_(counts, alpha=1 - d)
        self.ema_sum[stage].mul_(d).add_(sums, alpha=1 - d)
        # Laplace smoothing keeps rarely used codewords from dividing by ~0.
        n = self.ema_count[stage].sum(dim=1, keepdim=True)
        smoothed = (self.ema_count[stage] + 1e-5) / (n + k * 1e-5) * n
        self.codebooks[stage].copy_(self.ema_sum[stage] / smoothed.unsqueeze(-1))
        self._restart_dead(stage, target, generator)

    @torch.no_grad()
    def _restart_dead(
        self, stage: int, target: torch.Tensor, generator: torch.Generator | None
    ) -> None:
        dead = self.ema_count[stage] < self.dead_threshold  # (M, k)
        num_dead = int(dead.sum())
        if num_dead == 0:
            return
        chunk_of_dead, code_of_dead = dead.nonzero(as_tuple=True)
        rows = torch.randint(0, target.shape[0], (num_dead,), generator=generator)
        fresh = target[rows.to(target.device), chunk_of_dead]  # (num_dead, D)
        self.codebooks[stage][chunk_of_dead, code_of_dead] = fresh
        self.ema_sum[stage][chunk_of_dead, code_of_dead] = fresh
        self.ema_count[stage][chunk_of_dead, code_of_dead] = 1.0

    @torch.no_grad()
    def usage_entropy_bits(self, codes: torch.Tensor) -> torch.Tensor:
        """Empirical entropy (bits) of each (stage, chunk) column of (B, R, M) codes."""
        batch, stages, chunks = codes.shape
        k = self.codebook_size
        flat = codes + k * torch.arange(stages * chunks, device=codes.device).view(
            1, stages, chunks
        )
        hist = torch.bincount(flat.reshape(-1), minlength=stages * chunks * k)
        p = hist.view(stages, chunks, k).float() / max(batch, 1)
        return -(p * torch.log2(p.clamp(min=1e-12))).sum(-1)
