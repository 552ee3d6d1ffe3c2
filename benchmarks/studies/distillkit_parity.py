"""Check labelzip's DistillKit quantiser against DistillKit's own, bit for bit.

labelzip reimplements DistillKit's log-probability compression from its
specification (``labelzip.codecs.baseline.distillkit_quant``). This script imports
DistillKit's ``distillkit.compression`` from a checkout you point it at (its code
is not part of labelzip) and compares, on seeded LM-shaped log-probabilities:
the compressed rows and packed ids DistillKit writes, and the values and ids its
``LogprobCompressor.decompress_to_sparse`` gives a trainer, for five configs
(the README's recommended and budget settings, delta encoding with error
diffusion, residual bins of 1 to 7 bits, float16 / bfloat16 / float64 terms) and
the legacy scheme. Prints one line per config; exit status 1 on any mismatch.

Usage:
    git clone https://github.com/arcee-ai/DistillKit && git -C DistillKit checkout a61c2e7
    python benchmarks/studies/distillkit_parity.py --distillkit DistillKit
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from labelzip.codecs.baseline.distillkit_quant import (
    DistillKitLegacyConfig,
    DistillKitQuantConfig,
    compress_logprobs,
    decompress_logprobs,
    legacy_decompress,
    legacy_pack_ids,
    legacy_unpack_ids,
    pack_msb,
    unpack_msb,
)

V = 1000


def configs() -> list[dict[str, Any]]:
    def bins(*spec: tuple[str, int, int]) -> list[dict[str, Any]]:
        return [
            {"scale_dtype": d, "element_bits": b, "num_elements": n} for d, b, n in spec
        ]

    plain = {"delta_encoding": False, "error_diffusion": False}
    return [
        {"k": 128, "exact_k": 16, "exact_dtype": "bfloat16",
         "polynomial_terms": [0, 1, 2, 3, 4, "sqrt"], "residual_bins": [], **plain},
        {"k": 50, "exact_k": 1, "exact_dtype": "bfloat16",
         "polynomial_terms": [0, 1, "sqrt"], "residual_bins": [], **plain},
        {"k": 32, "exact_k": 4, "exact_dtype": "float16", "polynomial_terms": [0, 1, "exp"],
         "term_dtype": "bfloat16", "normalize_t": True,
         "residual_bins": bins(("float16", 4, 12), ("float32", 1, 10)),
         "delta_encoding": True, "error_diffusion": True},
        {"k": 24, "exact_k": 0, "residual_bins": bins(("bfloat16", 7, 24)),
         "delta_encoding": True},
        {"k": 20, "exact_k": 3, "polynomial_terms": [0, 2], "term_dtype": "float64",
         "residual_bins": bins(("float64", 3, 5)), "error_diffusion": True,
         "delta_encoding": False},
    ]  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--distillkit", required=True, help="a DistillKit checkout")
    args = p.parse_args()
    sys.path.insert(0, args.distillkit)
    from distillkit.compression import (  # type: ignore[import-not-found]
        DistributionQuantizationConfig,
        LegacyLogitCompressionConfig,
        LogprobCompressor,
    )
    from distillkit.compression.legacy import (  # type: ignore[import-not-found]
        LogitCompressor,
    )

    g = torch.Generator().manual_seed(0)
    ranks = torch.arange(1, V + 1).float()
    logits = -1.1 * ranks.log()[None] + 0.5 * torch.randn(40, V, generator=g)
    logprobs = torch.log_softmax(logits, 1)
    ok = True
    for raw in configs():
        c = {"d": V, **raw}
        theirs = LogprobCompressor(
            config=DistributionQuantizationConfig.model_validate(c)
        )
        mine = DistillKitQuantConfig.model_validate(c)
        values, ids = logprobs.topk(c["k"], 1)
        out = theirs.compress_from_sparse(ids.unsqueeze(0), values.unsqueeze(0))
        rows = out["compressed_logprobs"][0]
        got_ids, got = theirs.decompress_to_sparse(
            {
                "compressed_logprobs": rows[None],
                "bytepacked_indices": out["bytepacked_indices"],
            }
        )
        mine_values = decompress_logprobs(rows, mine)
        checks = {
            "rows": torch.equal(rows, compress_logprobs(values, mine)),
            "ids": torch.equal(
                out["bytepacked_indices"][0], pack_msb(ids, mine.index_bits())
            ),
            "decoded": got.dtype == mine_values.dtype
            and torch.equal(got[0], mine_values),
            "decoded ids": torch.equal(
                got_ids[0],
                unpack_msb(out["bytepacked_indices"][0], mine.index_bits(), c["k"]),
            ),
        }
        ok &= all(checks.values())
        print(f"k={c['k']} exact_k={c['exact_k']}: {checks}")
    legacy = {"k": 64, "exact_k": 8, "polynomial_degree": 5, "vocab_size": V,
              "invert_polynomial": True, "with_sqrt_term": True}  # fmt: skip
    lc = LogitCompressor(LegacyLogitCompressionConfig(**legacy))
    values, ids = logprobs.topk(64, 1)
    packed, exact, coeffs = lc.compress_from_sparse(ids[None], values[None])
    got_ids, got = lc.decompress_to_sparse(packed, exact.float(), coeffs.float())
    mine_legacy = DistillKitLegacyConfig(**legacy)
    checks = {
        "decoded": torch.equal(
            got[0], legacy_decompress(exact[0].float(), coeffs[0].float(), mine_legacy)
        ),
        "ids": torch.equal(
            got_ids[0], legacy_unpack_ids(packed[0], mine_legacy.index_bits(), 64)
        ),
        "packing": torch.equal(
            legacy_pack_ids(ids, mine_legacy.index_bits()), packed[0]
        ),
    }
    ok &= all(checks.values())
    print(f"legacy: {checks}")
    print("ALL EQUAL" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
