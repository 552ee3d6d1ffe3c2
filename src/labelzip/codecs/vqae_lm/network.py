"""The small autoencoder of vqae-sparse: (K + 1) head profile -> VQ codes -> back.

The encoder maps a label's K sorted head log-probabilities and its log tail
mass to M chunks of a residual product VQ; the decoder maps the codewords back
to K + 1 log-probabilities. Only the decoder and codebooks are stored.
"""

from __future__ import annotations

import torch
from torch import nn

from labelzip.codecs.vqae.quantizer import nearest_codewords
from labelzip.codecs.vqae_lm.sparse_config import VQAESparseConfig

__all__ = [
    "FEATURE_SCALE",
    "TAIL_FLOOR",
    "HeadDecoder",
    "SparseAutoencoder",
    "head_features",
    "quantize_codes",
]

FEATURE_SCALE = 8.0  # encoder input = log-probs / this
TAIL_FLOOR = 1e-12


class SparseAutoencoder(nn.Module):
    """(n, K + 1) profile -> (n, M, D) latent -> (n, K + 1) group logits."""

    def __init__(self, k: int, cfg: VQAESparseConfig) -> None:
        super().__init__()
        latent = cfg.num_chunks * cfg.chunk_dim
        self.encoder = nn.Sequential(
            nn.Linear(k + 1, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, latent)
        )
        self.decoder = HeadDecoder(latent, cfg.hidden, k + 1, cfg.monotone)


class HeadDecoder(nn.Module):
    """(n, M D) latent -> (n, K + 1) log-probs of the K kept slots and the tail.

    With ``monotone`` the K head logits are ``a - cumsum(softplus(d))``: slot j
    never decodes above slot j - 1, so the stored id order (the teacher's) is the
    decoded order and top-1 agreement is exact.
    """

    def __init__(self, latent: int, hidden: int, out: int, monotone: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(latent, hidden)
        self.fc2 = nn.Linear(hidden, out)
        self.monotone = monotone

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        raw = self.fc2(nn.functional.gelu(self.fc1(z)))
        if self.monotone:
            steps = nn.functional.softplus(raw[:, 1:-1]).cumsum(dim=1)
            head = torch.cat([raw[:, :1], raw[:, :1] - steps], dim=1)
            raw = torch.cat([head, raw[:, -1:]], dim=1)
        return torch.log_softmax(raw, dim=-1)


def head_features(top: torch.Tensor) -> torch.Tensor:
    """(n, K) sorted head log-probs -> (n, K + 1) encoder input (with log tail mass)."""
    tail = (1.0 - top.double().exp().sum(dim=1)).clamp_min(TAIL_FLOOR).log()
    return torch.cat([top, tail.float()[:, None]], dim=1) / FEATURE_SCALE


def quantize_codes(z: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
    """(n, M, D) latents -> (n, R, M) codes of the residual product VQ."""
    residual = z
    codes = []
    chunk = torch.arange(z.shape[1])
    for stage in range(books.shape[0]):
        idx = nearest_codewords(residual, books[stage])
        codes.append(idx)
        residual = residual - books[stage][chunk, idx]
    return torch.stack(codes, dim=1)
