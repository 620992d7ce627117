"""Tiny randomly initialised backbones built from config objects: no download, for tests and benchmarks."""

from __future__ import annotations

import torch
from torch import nn

from frozenvl.backbones.vision import VisionEncoder

TINY_LM_FAMILIES = ("llama", "gpt2", "qwen2", "opt")


def tiny_tokenizer():
    """A real byte-level BPE tokenizer with no merges (every byte is a token), built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<s>": 0, "</s>": 1}
    for ch in sorted(byte_alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def tiny_lm(family: str = "llama", vocab_size: int = 258, hidden: int = 32, layers: int = 4, heads: int = 4,
            seed: int = 0) -> nn.Module:
    """A tiny causal LM of the given family (llama, gpt2, qwen2, opt), randomly initialised, in eval mode."""
    import transformers as tf

    torch.manual_seed(seed)
    if family == "llama":
        cfg = tf.LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                             max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1)
        model = tf.LlamaForCausalLM(cfg)
    elif family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=512,
                            bos_token_id=0, eos_token_id=1)
        model = tf.GPT2LMHeadModel(cfg)
    elif family == "qwen2":
        # Qwen pads its embedding matrix past the tokenizer: new tokens then land inside the frozen matrix.
        cfg = tf.Qwen2Config(vocab_size=vocab_size + 6, hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                             max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)
        model = tf.Qwen2ForCausalLM(cfg)
    elif family == "opt":
        cfg = tf.OPTConfig(vocab_size=vocab_size, hidden_size=hidden, ffn_dim=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, max_position_embeddings=512, word_embed_proj_dim=hidden,
                           bos_token_id=0, eos_token_id=1, pad_token_id=1)
        model = tf.OPTForCausalLM(cfg)
    else:
        raise ValueError(f"unknown tiny LM family {family!r}; known: {', '.join(TINY_LM_FAMILIES)}")
    return model.eval()


class TinyConvEncoder(nn.Module):
    """A tiny random CNN: (N, 3, H, W) -> (N, C, H/8, W/8)."""

    def __init__(self, channels: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tiny_vision(image_size: int = 32, channels: int = 16, seed: int = 0) -> VisionEncoder:
    torch.manual_seed(seed)
    return VisionEncoder.from_module(TinyConvEncoder(channels), feature_dim=channels, image_size=image_size,
                                     name="tiny-conv")


# ------------------------------------------------------------------------------------------ tiny Flamingo

TINY_FLAMINGO = dict(cross_attn_every=2, resampler_depth=1, num_latents=4, resampler_dim_head=8, resampler_heads=2,
            xattn_dim_head=8, xattn_heads=2, ff_mult=2, max_frames=4)


def tiny_flamingo(family: str = "llama", seed: int = 0, open_gates: bool = False, **overrides):
    torch.manual_seed(seed)
    from frozenvl.flamingo import build

    model, processor = build(lm=tiny_lm(family, seed=seed), tokenizer=tiny_tokenizer(), vision=tiny_vision(seed=seed),
                             **{**TINY_FLAMINGO, **overrides})
    if open_gates:
        open_all_gates(model)
    return model.eval(), processor


def open_all_gates(model: torch.nn.Module, value: float = 0.7) -> None:
    """Set every tanh gate's scalar to ``value``: at init the gates are 0 and images cannot matter, so tests of
    what images may influence open them."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate.alpha"):
                p.fill_(value)


def save_tiny_backbones(root) -> tuple:
    """A tiny LM (with its tokenizer) and a tiny transformers CLIP vision model (with its image processor) saved as
    folders under ``root``: sources for ``--lm FOLDER`` / ``--vision hf:FOLDER`` and ``build(lm=, vision=)``.
    Returns (lm folder, vision folder)."""
    from pathlib import Path

    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    root = Path(root)
    tiny_lm("llama").save_pretrained(root / "lm")
    tiny_tokenizer().save_pretrained(root / "lm")
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     image_size=32, patch_size=8)).save_pretrained(root / "vit")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    return root / "lm", root / "vit"


def images(n: int, seed: int = 0, size: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, size, size, generator=g) for _ in range(n)]


@torch.no_grad()
def gap_to_frozen_lm(model, processor, reference, text: str, media: list) -> tuple[float, float]:
    """How far a Flamingo's logits are from its frozen LM's (``reference``, a copy taken before wrapping): the
    largest difference over the LM's own vocabulary (rows that became new tokens aside), on ``text`` with its
    ``media`` (the new tokens embedded by the Flamingo, since the reference has no row for them) and on plain
    words without any new token. A fresh Flamingo (gates at 0) must give (0, 0) up to rounding."""
    batch = processor([text], [media])
    embeds = model.lm.get_input_embeddings()(batch["input_ids"])
    ref = reference(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    new_ids = model.lm.get_output_embeddings().new_token_ids
    keep = [i for i in range(ref.shape[-1]) if i not in new_ids]
    plain = processor(["just some words"])
    return ((model(**batch).logits[..., keep] - ref[..., keep]).abs().max().item(),
            (model(**plain).logits[..., keep] - reference(**plain).logits[..., keep]).abs().max().item())
