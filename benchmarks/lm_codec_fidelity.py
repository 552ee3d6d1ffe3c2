"""Fidelity of LM label codecs at equal all-in bytes on real SmolLM2 logits.

Each codec is configured by its own rate control for an archive of ``--tokens``
labels at each target ratio (so the stored model is amortised as it would be in
that archive), fitted on ``--fit-positions`` positions of the train label set
(every other row: a uniform sample across its windows, like the LM reservoir),
and measured on the first ``--test-positions`` rows of the held-out set, encoded
in blocks of 256 (one LM window, the archive's chunk). All-in bytes per token =
measured payload per token + model bytes / tokens (the archive header, a few KB,
is left out for every codec alike). Prints one JSON line per point.

Usage:
    python benchmarks/lm_codec_fidelity.py --codecs topk topk-tail rskd vqae-sparse
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from safetensors.torch import load_file

from labelzip.bench.lm import CODEC_PRESETS
from labelzip.codecs.vqae_lm.sampled import VQAESampledCodec
from labelzip.ops.metrics import kl_divergence, top1_agreement
from labelzip.rate import ArchiveTarget, configure_codec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", default="/work/devdata/lm_smollm2_logits.safetensors")
    p.add_argument("--test", default="/work/devdata/lm_smollm2_logits_test.safetensors")
    p.add_argument(
        "--codecs", nargs="+", default=["topk", "topk-tail", "rskd", "vqae-sparse"]
    )
    p.add_argument("--ratios", nargs="+", type=float, default=[500.0, 2000.0])
    p.add_argument("--tokens", type=int, default=200_000, help="archive size assumed")
    p.add_argument("--fit-positions", type=int, default=2048)
    p.add_argument("--test-positions", type=int, default=512)
    p.add_argument("--opt", action="append", default=[], help="codec:key=json_value")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    extra: dict[str, dict[str, object]] = {}
    for item in args.opt:
        codec, _, kv = item.partition(":")
        key, _, value = kv.partition("=")
        extra.setdefault(codec, {})[key] = json.loads(value)
    train = load_file(args.train)["logits"]
    step = max(1, train.shape[0] // args.fit_positions)
    fit = train[::step][: args.fit_positions].float()
    del train
    test = load_file(args.test)["logits"][: args.test_positions].float()
    vocab = int(test.shape[1])
    for ratio in args.ratios:
        for name in args.codecs:
            options = {**CODEC_PRESETS.get(name, {}), **extra.get(name, {})}
            t0 = time.perf_counter()
            # the codec alone (no archive header): the whole goal is its budget
            target = ArchiveTarget.flat(args.tokens, vocab, ratio=ratio, header_bytes=0)
            codec = configure_codec(name, options, target)
            codec.fit([fit], num_labels=args.tokens)
            fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            blocks = [codec.encode(x) for x in test.split(256)]
            enc_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            decoded = torch.cat([codec.decode(b) for b in blocks])
            dec_s = time.perf_counter() - t0
            payload = sum(b.nbytes for b in blocks) / test.shape[0]
            cfg = codec.to_config()
            row = {
                "ratio": ratio,
                "codec": name,
                "options": extra.get(name, {}),
                "k": cfg.get("k") or cfg.get("num_samples"),
                "budget_bytes_per_token": round(2 * vocab / ratio, 1),
                "all_in_bytes_per_token": round(
                    payload + codec.model_bytes() / args.tokens, 1
                ),
                "model_bytes": codec.model_bytes(),
                "kl_t1": round(float(kl_divergence(test, decoded).mean()), 4),
                "kl_t4": round(
                    float(kl_divergence(test, decoded, temperature=4.0).mean()), 4
                ),
                "top1": round(float(top1_agreement(test, decoded)), 4),
                # squared L2 between decoded and teacher probabilities: bias^2 +
                # variance of the target, what a KD gradient sees (KL punishes an
                # unbiased sampled label for its zeros; this does not)
                "sq_err": round(
                    float(
                        (
                            torch.softmax(decoded.double(), 1)
                            - torch.softmax(test.double(), 1)
                        )
                        .square()
                        .sum(1)
                        .mean()
                    ),
                    5,
                ),
                "fit_s": round(fit_s, 1),
                "encode_ms_per_token": round(1000 * enc_s / test.shape[0], 2),
                "decode_ms_per_token": round(1000 * dec_s / test.shape[0], 2),
            }
            if isinstance(
                codec, VQAESampledCodec
            ):  # its only bias: the VQ head profile
                row["head_tv"] = round(_head_tv(codec, test), 4)
            print(json.dumps(row), flush=True)


def _head_tv(codec: VQAESampledCodec, test: torch.Tensor) -> float:
    """Mean total variation between the decoded and the teacher's K + 1 profile."""
    ids, log_q = codec.head.decode_support(codec.head.encode(test))
    p = torch.softmax(test.double(), dim=1).gather(1, ids)
    q = log_q.double().exp()
    tv = (q[:, :-1] - p).abs().sum(1) + (q[:, -1] - (1 - p.sum(1))).abs()
    return float(0.5 * tv.mean())


if __name__ == "__main__":
    main()
