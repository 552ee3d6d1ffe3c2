from __future__ import annotations

import torch

from labelzip.codecs.vqae.quantizer import ResidualProductQuantizer, nearest_codewords


def test_nearest_codewords_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(50, 3, 2, generator=g)
    book = torch.randn(3, 7, 2, generator=g)
    brute = torch.cdist(vectors.transpose(0, 1), book).argmin(-1).transpose(0, 1)
    assert torch.equal(nearest_codewords(vectors, book), brute)


def test_eval_pass_equals_lookup_of_its_codes() -> None:
    g = torch.Generator().manual_seed(1)
    quant = ResidualProductQuantizer(4, 3, 16, num_stages=2)
    quant.train()
    quant(torch.randn(64, 4, 3, generator=g), g)  # initializes both stages
    quant.eval()
    before = quant.codebooks.clone()
    latent = torch.randn(20, 4, 3, generator=g)
    out = quant(latent)
    assert torch.equal(quant.codebooks, before)  # eval never updates codebooks
    assert out.codes.shape == (20, 2, 4)
    assert int(out.codes.min()) >= 0 and int(out.codes.max()) < 16
    assert torch.allclose(out.quantized, quant.lookup(out.codes), atol=1e-6)


def test_training_fits_clusters_and_residual_stage_helps() -> None:
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(8, 2, 2, generator=g) * 5

    def batch() -> torch.Tensor:
        pick = torch.randint(0, 8, (256,), generator=g)
        return centres[pick] + 0.3 * torch.randn(256, 2, 2, generator=g)

    errors = []
    for stages in (1, 2):
        quant = ResidualProductQuantizer(2, 2, 16, num_stages=stages, decay=0.9)
        quant.train()
        for _ in range(200):
            quant(batch(), g)
        quant.eval()
        x = batch()
        errors.append(float((quant(x).quantized - x).pow(2).mean()))
    # 16 codewords for 8 clusters: error falls near the cluster noise (0.09).
    assert errors[0] < 0.3
    assert errors[1] < errors[0]


def test_dead_codewords_are_restarted_on_data() -> None:
    g = torch.Generator().manual_seed(3)
    quant = ResidualProductQuantizer(1, 2, 4, decay=0.5, dead_threshold=0.1)
    quant.train()
    quant(torch.randn(32, 1, 2, generator=g), g)
    # Move one codeword far away so it never wins; it must come back near the data.
    quant.codebooks[0, 0, 3] = torch.tensor([1e3, 1e3])
    for _ in range(10):
        quant(torch.randn(32, 1, 2, generator=g), g)
    assert float(quant.codebooks[0, 0].abs().max()) < 10.0


def test_usage_entropy_bits() -> None:
    quant = ResidualProductQuantizer(2, 1, 4)
    codes = torch.tensor([[[0, 0]], [[1, 0]], [[2, 0]], [[3, 0]]])  # (B=4, R=1, M=2)
    ent = quant.usage_entropy_bits(codes)
    assert torch.allclose(ent, torch.tensor([[2.0, 0.0]]))
