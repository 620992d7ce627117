"""Frozen-encoder feature cache: a frozen vision encoder's output for an image never changes, so compute it once.

An entry is the feature grid (n_tokens, D) of one frame, stored as fp16 (fp32 when a value would overflow fp16)
in its own safetensors file, written atomically, under a folder named by the encoder's identity:

    <root>/<encoder id>/<key[:2]>/<key>.safetensors

- **key**: a BLAKE2b digest of the frame's pixels as the model receives them (after the encoder's own transform:
  dtype, shape and bytes), so the same image gives the same key in every epoch and every run, whatever its file.
- **encoder id**: a digest of the encoder's name, module class, transform (its ``repr``), feature size, image
  size, and every tensor of its state dict (weights and buffers, names, dtypes, shapes, bytes). Another encoder,
  or the same one with other weights or another transform, never reads these entries.
- **checks**: each file records its key, the encoder id and a digest of its tensor's bytes; a file that cannot be
  read, or whose metadata or digest do not match (a truncated or corrupted entry), is recomputed and rewritten.

Features come back as float32, always the stored (fp16-rounded) values: a cache miss and a later hit give exactly
the same numbers, so training with the cache does not depend on which images were seen before. Against the
encoder's own fp32 output the difference is fp16 rounding (relative error <= 2**-11 per value).

:meth:`FeatureCache.encode` takes a Flamingo's ``pixel_values`` (and ``frame_mask``) and returns what
``Flamingo.forward(vision_features=...)`` takes: (B, T_img, F, N, D), padded frames zero and never encoded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from frozenvl.files import atomic_path
from frozenvl.tensors import as_frames

_DIGEST_BYTES = 20


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor (any dtype, bf16 included), on the CPU."""
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def encoder_identity(encoder: nn.Module) -> str:
    """A hex digest that changes when the encoder's name, class, transform, sizes or any weight or buffer does."""
    h = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    module = getattr(encoder, "module", encoder)
    for part in (getattr(encoder, "name", ""), type(module).__qualname__, repr(getattr(encoder, "transform", None)),
                 str(getattr(encoder, "feature_dim", "")), str(getattr(encoder, "image_size", ""))):
        h.update(part.encode() + b"\0")
    for name, tensor in encoder.state_dict().items():
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode() + b"\0")
        h.update(_tensor_bytes(tensor))
    return h.hexdigest()


def frame_key(pixels: torch.Tensor) -> str:
    """Content key of one transformed frame (C, H, W): its dtype, shape and bytes."""
    h = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    h.update(f"{pixels.dtype}:{tuple(pixels.shape)}".encode() + b"\0")
    h.update(_tensor_bytes(pixels))
    return h.hexdigest()


@dataclass
class CacheStats:
    hits: int = 0  # frames read from the cache
    misses: int = 0  # frames encoded (no entry, or a bad one)
    corrupted: int = 0  # of the misses: an entry existed but could not be read or did not check out
    encoder_calls: int = 0  # forward passes of the encoder (one per batch of missing frames)


class FeatureCache:
    """``FeatureCache(root, encoder)``: entries under ``root/<encoder id>/``; ``encode(pixel_values, frame_mask)``."""

    def __init__(self, root: str | os.PathLike, encoder: nn.Module):
        if any(p.requires_grad for p in encoder.parameters()):
            raise ValueError("the feature cache is for a frozen vision encoder; this one has trainable parameters "
                             "(train_vision): its outputs change as it trains")
        self.encoder = encoder
        self.identity = encoder_identity(encoder)
        self.folder = Path(root) / self.identity
        self.stats = CacheStats()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def _read(self, key: str) -> torch.Tensor | None:
        from safetensors import safe_open

        path = self._path(key)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                features = f.get_tensor("features")
        except Exception:  # truncated, not a safetensors file, no "features" tensor: recompute
            self.stats.corrupted += 1
            return None
        digest = hashlib.blake2b(_tensor_bytes(features), digest_size=_DIGEST_BYTES).hexdigest()
        if meta.get("key") != key or meta.get("encoder") != self.identity or meta.get("digest") != digest:
            self.stats.corrupted += 1
            return None
        return features

    def _write(self, key: str, features: torch.Tensor) -> torch.Tensor:
        """Store one frame's features (fp16 unless a value overflows it); returns what was stored."""
        from safetensors.torch import save_file

        stored = features.detach().to("cpu", torch.float16)
        if not bool(torch.isfinite(stored).all()) and bool(torch.isfinite(features).all()):
            stored = features.detach().to("cpu", torch.float32)  # beyond fp16's range (65504): keep fp32
        stored = stored.contiguous()
        meta = {"key": key, "encoder": self.identity,
                "digest": hashlib.blake2b(_tensor_bytes(stored), digest_size=_DIGEST_BYTES).hexdigest()}
        with atomic_path(self._path(key)) as tmp:
            save_file({"features": stored}, str(tmp), metadata=meta)
        return stored

    def frames(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) transformed frames -> (N, n_tokens, D) float32 features, from the cache or the encoder.

        The encoder runs in its own precision whatever autocast the caller is under: an entry is the same for a
        bf16 and an fp32 run (its key names no precision)."""
        encoder_device = next(self.encoder.parameters(), torch.empty(0)).device
        with torch.no_grad(), contextlib.ExitStack() as stack:
            for device_type in {pixels.device.type, encoder_device.type}:
                stack.enter_context(torch.autocast(device_type, enabled=False))
            return self._frames(pixels)

    def _frames(self, pixels: torch.Tensor) -> torch.Tensor:
        if len(pixels) == 0:
            return self.encoder(pixels).float()
        keys = [frame_key(p) for p in pixels]
        found: dict[str, torch.Tensor] = {}
        missing: dict[str, int] = {}  # key -> first frame index (a frame repeated in the batch is encoded once)
        for i, key in enumerate(keys):
            if key in found or key in missing:
                continue
            entry = self._read(key)
            if entry is None:
                missing[key] = i
            else:
                found[key] = entry
        self.stats.hits += len(keys) - sum(1 for k in keys if k in missing)
        self.stats.misses += sum(1 for k in keys if k in missing)
        if missing:
            dtype = next(self.encoder.parameters(), torch.empty(0)).dtype
            device = next(self.encoder.parameters(), torch.empty(0)).device
            batch = pixels[list(missing.values())].to(device, dtype)
            self.stats.encoder_calls += 1
            computed = self.encoder(batch)  # (M, n_tokens, D)
            for key, features in zip(missing, computed):
                found[key] = self._write(key, features)
        return torch.stack([found[k] for k in keys]).float()  # (N, n_tokens, D)

    def encode(self, pixel_values: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """A Flamingo batch's pixels (B, T_img, [F,] C, H, W) -> encoder features (B, T_img, F, N, D) float32.
        ``frame_mask`` (B, T_img, F): only real frames are looked up or encoded; padded ones are zero."""
        pixel_values = as_frames(pixel_values)  # (B, T_img, F, C, H, W)
        B, T, Fr = pixel_values.shape[:3]
        frames = pixel_values.flatten(0, 2)  # (B*T*F, C, H, W)
        if frame_mask is None:
            feats = self.frames(frames)
        else:
            real = frame_mask.to(frames.device).flatten()  # (B*T*F,)
            kept = self.frames(frames[real])
            feats = kept.new_zeros(len(frames), *kept.shape[1:])
            feats[real] = kept
        return feats.reshape(B, T, Fr, *feats.shape[1:])  # (B, T, F, N, D)
