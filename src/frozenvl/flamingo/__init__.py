"""Flamingo: a frozen vision encoder and a frozen causal LM joined by a resampler and gated cross-attention."""

from frozenvl.flamingo.build import build, load_pretrained
from frozenvl.flamingo.config import FlamingoConfig
from frozenvl.flamingo.model import Flamingo, FlamingoCache, FlamingoOutput
from frozenvl.flamingo.processor import FlamingoProcessor

__all__ = ["Flamingo", "FlamingoCache", "FlamingoConfig", "FlamingoOutput", "FlamingoProcessor", "build",
           "load_pretrained"]
