"""The VQ autoencoder: encoder (not shipped), quantizer and small decoder.

Per label the codec stores ``num_ids`` explicit class ids (the teacher's top
classes, in order) plus R x M codeword ids. The decoder rebuilds (C,) logits::

    u   = concat over chunks of (sum over stages of the chosen codewords)  (M*D,)
    h   = act(W_in u + b_in + sum_i s_i * W_out[id_i])                    (H,)
    z   = W_out h + b_out                                                   (C,)
    z[id_i] += v_i(h)          (a learned value for each explicit id)

``W_out`` (C, H) doubles as the class embedding of the explicit ids (tied, as
in language models), so conditioning on the ids costs only K vectors ``s_i``.
The explicit ids carry what a low-rank output layer cannot: a spike on one of
C classes. The VQ codes carry the shape: confidence, and which other classes
are raised. Everything in :meth:`VQAutoencoder.decoder_state` is what ships.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from labelzip.codecs.vqae.quantizer import QuantizerOutput, ResidualProductQuantizer

__all__ = [
    "DECODER_KEYS",
    "VQAutoencoder",
    "decode_with",
    "enforce_argmax",
    "id_table",
    "normalize_logits",
]

# The tensors a decoder needs, in the order they are stored.
DECODER_KEYS = (
    "codebooks",
    "in_weight",
    "in_bias",
    "id_scale",
    "out_weight",
    "out_bias",
    "value_weight",
    "value_bias",
)

# Up to this many classes the PCA init diagonalises the (C, C) covariance exactly.
EXACT_PCA_MAX_CLASSES = 4096

# Margin (in logits) by which a decoded label's stored argmax id is kept on top.
ARGMAX_MARGIN = 1e-3


def normalize_logits(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Encoder input: row-centred logits over a global scale, (N, C) -> (N, C).

    Centring removes the constant softmax ignores; the scale keeps the input
    near unit variance whatever the teacher's logit range.
    """
    centred = logits - logits.mean(dim=1, keepdim=True)
    return centred.div_(scale)  # in place on the fresh difference: the same values


class VQAutoencoder(nn.Module):
    """Encoder, residual product quantizer and decoder for (N, C) logits.

    Args:
        num_classes: C.
        num_ids: K explicit top class ids per label (0 to disable).
        num_chunks, chunk_dim, codebook_size, num_stages: the quantizer (M, D, k, R).
        hidden_dim: H, decoder width.
        encoder_dim: width of the (unshipped) encoder's hidden layers.
        encoder_layers: number of hidden layers of the encoder.
        value_head: learn a value per explicit id (off when values are stored).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        num_ids: int,
        num_chunks: int,
        chunk_dim: int,
        codebook_size: int,
        num_stages: int,
        hidden_dim: int,
        encoder_dim: int,
        encoder_layers: int = 1,
        value_head: bool = True,
        decay: float = 0.99,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_ids = num_ids
        latent = num_chunks * chunk_dim
        layers: list[nn.Module] = []
        width = num_classes
        for _ in range(encoder_layers):
            layers += [nn.Linear(width, encoder_dim), nn.GELU()]
            width = encoder_dim
        layers.append(nn.Linear(width, latent))
        self.encoder = nn.Sequential(*layers)
        self.quantizer = ResidualProductQuantizer(
            num_chunks, chunk_dim, codebook_size, num_stages, decay=decay
        )
        self.in_proj = nn.Linear(latent, hidden_dim)
        self.out_proj = nn.Linear(hidden_dim, num_classes)
        self.id_scale = nn.Parameter(torch.zeros(num_ids, hidden_dim))
        # Learned values of the explicit ids, unless their values are stored
        # (then the decoder's guess is overwritten and the head is left out).
        # Zero-initialized: the ids start as plain low-rank logits.
        heads = num_ids if value_head else 0
        self.value_weight = nn.Parameter(torch.zeros(heads, hidden_dim))
        self.value_bias = nn.Parameter(torch.zeros(heads))

    @property
    def num_chunks(self) -> int:
        return self.quantizer.num_chunks

    @property
    def chunk_dim(self) -> int:
        return self.quantizer.chunk_dim

    @torch.no_grad()
    def init_output_from_data(self, logits: torch.Tensor, max_rows: int = 8192) -> None:
        """Start the output layer at the data's principal subspace (PCA).

        ``out_bias`` becomes the mean centred logit vector and ``out_weight`` the
        top-H principal directions scaled by their standard deviations, so the
        decoder starts where a rank-H linear code would end and training needs
        fewer steps (docs/vqae-design.md, section 2). (N, C) logits; uses the
        first ``max_rows`` rows.
        """
        rows = logits[:max_rows].to(torch.float64)
        centred = rows - rows.mean(dim=1, keepdim=True)
        mean = centred.mean(dim=0)
        dev = centred - mean
        hidden = self.out_proj.weight.shape[1]
        take = min(hidden, dev.shape[1], dev.shape[0])
        if dev.shape[1] <= EXACT_PCA_MAX_CLASSES:
            cov = dev.T @ dev / max(rows.shape[0] - 1, 1)
            eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
            top = torch.arange(eigvecs.shape[1] - 1, eigvecs.shape[1] - 1 - take, -1)
            basis = eigvecs[:, top] * eigvals[top].clamp(min=0).sqrt()
        else:  # large vocabularies: randomized SVD (uses the seeded global RNG)
            _, sing, vecs = torch.svd_lowrank(dev, q=take, niter=2)
            basis = vecs * (sing / max(rows.shape[0] - 1, 1) ** 0.5)
        weight = torch.zeros_like(self.out_proj.weight, dtype=torch.float64)
        weight[:, :take] = basis[:, :take]
        self.out_proj.weight.copy_(weight.to(self.out_proj.weight.dtype))
        self.out_proj.bias.copy_(mean.to(self.out_proj.bias.dtype))

    def encode_latent(self, inputs: torch.Tensor) -> torch.Tensor:
        """Normalized (B, C) inputs -> (B, M, D) continuous latents."""
        latent = self.encoder(inputs)
        return latent.view(-1, self.num_chunks, self.chunk_dim)

    def forward(
        self,
        inputs: torch.Tensor,
        ids: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, QuantizerOutput]:
        """Training pass: (B, C) normalized inputs and (B, K) ids -> (B, C) logits."""
        q = self.quantizer(self.encode_latent(inputs), generator)
        return self.decode_latent(q.quantized, ids), q

    def decode_latent(self, quantized: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, M, D) dequantized latents and (B, K) ids -> (B, C) logits."""
        return decode_with(self.decoder_state(), quantized, ids)

    def decoder_state(self) -> dict[str, torch.Tensor]:
        """The shipped tensors (live parameters: differentiable)."""
        return {
            "codebooks": self.quantizer.codebooks,
            "in_weight": self.in_proj.weight,
            "in_bias": self.in_proj.bias,
            "id_scale": self.id_scale,
            "out_weight": self.out_proj.weight,
            "out_bias": self.out_proj.bias,
            "value_weight": self.value_weight,
            "value_bias": self.value_bias,
        }


def decode_with(
    state: dict[str, torch.Tensor], quantized: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """The decoder as a pure function of its tensors (shared by training and codec).

    Args:
        state: tensors named as in :data:`DECODER_KEYS` (float, same device),
            optionally with ``id_table`` from :func:`id_table` for fast inference.
        quantized: (B, M, D) sum of codewords per chunk.
        ids: (B, K) int64 explicit class ids.

    Returns:
        (B, C) float logits.
    """
    u = quantized.reshape(quantized.shape[0], -1)
    pre = F.linear(u, state["in_weight"], state["in_bias"])
    num_ids = ids.shape[1]
    out_weight = state["out_weight"]
    if num_ids and "id_table" in state:
        # Inference: one fused lookup-and-sum in the precomputed per-slot tables.
        offsets = torch.arange(num_ids, device=ids.device) * out_weight.shape[0]
        pre = pre + F.embedding_bag(ids + offsets, state["id_table"], mode="sum")
    elif num_ids:
        # Tied class embedding: the output row of each explicit id, scaled per slot.
        emb = out_weight[ids]  # (B, K, H)
        pre = pre + (emb * state["id_scale"].unsqueeze(0)).sum(dim=1)
    hidden = F.gelu(pre)
    logits = F.linear(hidden, out_weight, state["out_bias"])
    if num_ids and state["value_weight"].shape[0]:
        values = F.linear(hidden, state["value_weight"], state["value_bias"])
        logits = logits.scatter_add(1, ids, values)
    return logits


def id_table(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """(K*C, H) per-slot scaled class embeddings: row k*C + c = s_k * W_out[c]."""
    weight, scale = state["out_weight"], state["id_scale"]
    return (scale.unsqueeze(1) * weight.unsqueeze(0)).reshape(-1, weight.shape[1])


def enforce_argmax(logits: torch.Tensor, top_id: torch.Tensor) -> torch.Tensor:
    """Raise each row's stored argmax id just above the row's other logits.

    Rows where the id already leads are unchanged, so top-1 agreement with the
    teacher is exact whenever the argmax id is stored. (B, C), (B,) -> (B, C);
    modifies and returns ``logits`` itself (no autograd).
    """
    best, arg = logits.max(dim=1)
    wrong = arg != top_id  # there, the largest other logit is ``best``
    if bool(wrong.any()):
        rows = wrong.nonzero().squeeze(1)
        logits.index_put_((rows, top_id[rows]), best[rows] + ARGMAX_MARGIN)
    return logits
