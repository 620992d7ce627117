"""The synthetic world: a seeded generator of small scenes, written as real shards in every frozenvl format.

A scene holds 1-4 objects, each a (colour, shape, size) in its own cell of a 3x3 grid, on a noisy background.
Every caption, answer and label is a function of the pixels only (the text prior cannot guess a colour), so a
model has to look. Some colour+shape compositions never appear in training (`heldout`): the zero-shot split
tests them. The `icl_words` split is a few-shot task that cannot be solved zero-shot: in each episode, the values
of one attribute are mapped to nonsense words by a fresh random permutation, defined only by that episode's
support examples. The evaluation captions (``captioning``, ``retrieval``, ``retrieval_val``) are also written in
other languages (``translations``): templated translations of the same captions from the vocabulary tables of
``synth_languages.yaml`` (:mod:`frozenvl.data.languages`).

Everything is a function of (seed, split, index): `generate_world(out_dir, seed)` writes the same bytes on every
machine, and any sample can be regenerated alone. `world.json` lists each split's shards, and readers take them
from there (never a glob that could pick up another world's leftovers); generating into an existing world removes
the shards it does not list.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from frozenvl.config import Config, ConfigError
from frozenvl.data.formats import (
    RawSample,
    caption_record,
    classification_record,
    decode_sample,
    interleaved_sample,
    pair_sample,
    retrieval_record,
    video_qa_record,
    video_sample,
    vqa_record,
)
from frozenvl.data.languages import Language, load_languages
from frozenvl.data.shards import ShardWriter, expand_shards, read_shard
from frozenvl.data.skips import BadSample, SkipCounter
from frozenvl.files import write_text_atomic

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 85, 225),
    "yellow": (235, 210, 40), "purple": (150, 60, 195), "orange": (245, 140, 25),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
SIZES = {"small": 0.20, "large": 0.31}  # object diameter as a fraction of the image side
CELL_NAMES = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
# Nonsense label words: pages of the training set use the first pool, icl_words episodes only the second.
TRAIN_WORDS = ("dax", "wug", "fep", "blicket", "toma", "zup", "kiki", "gazzer", "modi", "tufa", "lorp", "bix")
EVAL_WORDS = ("zorb", "quiv", "mib", "snerg", "yark", "veem", "glim", "crad", "prell", "noff", "jibb", "sarn")
# How a `words` page names a picture; "Output:{word}" is also the few-shot classification prompt's format.
WORD_FORMATS = ("This is a {word}.", "Output:{word}", "A {word}.", "Name: {word}.")
BACKGROUNDS = ("dark", "grey")  # the long caption's background words (by the background's brightness)
RELATIONS = ("to the left of", "to the right of", "above", "below")  # of the long caption's first object to its second
# Every English word the caption templates fill in: the vocabulary tables of the other languages
# (synth_languages.yaml) must translate each of them.
ENGLISH_VOCABULARY: dict[str, tuple[str, ...]] = {
    "colours": tuple(COLOURS), "shapes": SHAPES, "sizes": tuple(SIZES), "positions": CELL_NAMES,
    "counts": NUMBER_WORDS[1:], "backgrounds": BACKGROUNDS, "relations": RELATIONS,
}
# Languages the evaluation captions are also written in (templated translations of the same captions).
CAPTION_LANGUAGES = ("fr", "es", "de")
# Colour i with shape i+1: every colour and every shape still appears in training, in other pairings.
HELDOUT = tuple((c, SHAPES[(i + 1) % len(SHAPES)]) for i, c in enumerate(COLOURS))

_log = logging.getLogger(__name__)

SPLIT_IDS = {"pairs": 1, "interleaved": 2, "video": 3, "captioning": 11, "vqa": 12, "classification": 13,
             "retrieval": 14, "video_qa": 15, "icl_words": 16, "heldout": 17, "retrieval_val": 18}
TRAIN_SPLITS = ("pairs", "interleaved", "video")
PAGE_THEMES = ("caption", "qa", "count", "words")
EVAL_SPLITS = ("captioning", "vqa", "classification", "retrieval", "video_qa", "icl_words", "heldout")
# Written on request only (not in the default splits): a retrieval split of other scenes, to choose settings on.
VALIDATION_SPLITS = ("retrieval_val",)
TRANSLATED_SPLITS = ("captioning", "retrieval", "retrieval_val")  # records that carry "translations"


@dataclass
class WorldConfig(Config):
    seed: int = 0
    image_size: int = 64
    image_format: str = "png"
    shard_size: int = 1000  # samples per shard
    n_pairs: int = 10_000
    n_interleaved: int = 2_000
    n_video: int = 1_000
    n_eval: int = 500  # records per evaluation split (icl_words: episodes x records per episode)
    n_episodes: int = 100
    n_way: int = 3  # icl_words: classes per episode
    k_shot: int = 4  # icl_words: support examples per class
    n_query: int = 6  # icl_words: queries per episode
    frames: int = 8
    fps: float = 1.0
    single_image_page_prob: float = 0.2
    noisy_image_prob: float = 0.1  # interleaved: an image whose text belongs to another scene (low similarity)
    # interleaved: relative frequency of each page theme (words pages teach in-context naming); themes left out: 1
    page_themes: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PAGE_THEMES, 1.0))
    workers: int = 1
    # captioning/retrieval records also hold their captions in these languages (synth_languages.yaml)
    languages: tuple[str, ...] = CAPTION_LANGUAGES
    splits: tuple[str, ...] = field(default_factory=lambda: TRAIN_SPLITS + EVAL_SPLITS)

    def __post_init__(self) -> None:
        self.splits = tuple(self.splits)
        self.languages = tuple(self.languages)
        super().__post_init__()
        self.page_themes = {t: float(w) for t, w in self._themes().items()}

    def _themes(self) -> dict[str, float]:
        return {**dict.fromkeys(PAGE_THEMES, 1.0), **self.page_themes}  # themes left out keep their weight of 1

    def validate(self, where: str) -> None:
        unknown = set(self.splits) - set(SPLIT_IDS)
        if unknown:
            raise ConfigError(f"{where}.splits: unknown synthetic splits {sorted(unknown)}; known: "
                              f"{', '.join(SPLIT_IDS)}")
        if not self.splits:
            raise ConfigError(f"{where}.splits is empty: name at least one split to write")
        try:
            caption_languages(self.languages)
        except ValueError as e:
            raise ConfigError(f"{where}.languages: {e}") from None
        for name in ("n_pairs", "n_interleaved", "n_video", "n_eval", "n_episodes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name} must be >= 0; got {getattr(self, name)}")
        for name in ("shard_size", "k_shot", "n_query", "frames", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name} must be >= 1; got {getattr(self, name)}")
        if not self.fps > 0:
            raise ConfigError(f"{where}.fps must be > 0; got {self.fps}")
        empty = [split for split in self.splits if split_size(self, split) < 1]
        if empty:
            raise ConfigError(f"{where}: the splits {', '.join(empty)} would hold no samples (a count is 0); leave "
                              "them out of the splits or give them a count >= 1")
        if self.image_size < 24:
            raise ConfigError(f"{where}.image_size must be >= 24 pixels; got {self.image_size}")
        if not 2 <= self.n_way <= min(len(SHAPES), len(COLOURS), len(EVAL_WORDS)):
            raise ConfigError(f"{where}.n_way must be in [2, {len(SHAPES)}]; got {self.n_way}")
        themes = self._themes()
        if set(themes) != set(PAGE_THEMES) or any(not w >= 0 for w in themes.values()) or not sum(themes.values()) > 0:
            raise ConfigError(f"{where}.page_themes must map themes of {PAGE_THEMES} to weights >= 0, not all 0; "
                              f"got {self.page_themes}")


@dataclass
class Obj:
    colour: str
    shape: str
    size: str
    cell: int  # 0..8, row-major in the 3x3 grid

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def position(self) -> str:
        return CELL_NAMES[self.cell]


# ------------------------------------------------------------------------------------------ drawing

def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    level = int(rng.integers(15, 100))
    tint = rng.integers(-12, 13, size=3)
    noise = rng.integers(-18, 19, size=(size, size, 1))  # (S, S, 1): grey noise, so colours stay readable
    bg = np.clip(level + tint[None, None, :] + noise, 0, 255).astype(np.uint8)  # (S, S, 3)
    return bg, (BACKGROUNDS[0] if level < 55 else BACKGROUNDS[1])


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)]
    if shape == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        return [(cx + q * np.cos(a), cy - q * np.sin(a)) for q, a in zip(radii, angles)]
    raise ValueError(shape)


def draw_object(draw: ImageDraw.ImageDraw, obj_shape: str, colour: str, cx: float, cy: float, r: float) -> None:
    fill = COLOURS[colour]
    if obj_shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif obj_shape == "square":
        q = r * 0.85
        draw.rectangle((cx - q, cy - q, cx + q, cy + q), fill=fill)
    elif obj_shape == "cross":
        w = r * 0.35
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    else:
        draw.polygon(_shape_points(obj_shape, cx, cy, r), fill=fill)


def render_scene(objs: list[Obj], rng: np.random.Generator, size: int) -> tuple[Image.Image, str]:
    """(image, background word). Objects sit in their grid cell with a small random offset."""
    bg, bg_word = _background(rng, size)
    img = Image.fromarray(bg)
    draw = ImageDraw.Draw(img)
    cell = size / 3
    for o in objs:
        r = SIZES[o.size] * size / 2
        jitter = rng.uniform(-0.12, 0.12, size=2) * cell
        cx = (o.cell % 3 + 0.5) * cell + jitter[0]
        cy = (o.cell // 3 + 0.5) * cell + jitter[1]
        draw_object(draw, o.shape, o.colour, cx, cy, r)
    return img, bg_word


# ------------------------------------------------------------------------------------------ scenes and text

def sample_objects(rng: np.random.Generator, n: int, allow_heldout: bool) -> list[Obj]:
    """n objects with distinct colour+shape compositions in distinct cells (reading order)."""
    combos = [(c, s) for c in COLOURS for s in SHAPES if allow_heldout or (c, s) not in HELDOUT]
    picks = rng.choice(len(combos), size=n, replace=False)
    cells = sorted(rng.choice(9, size=n, replace=False).tolist())
    sizes = rng.choice(list(SIZES), size=n)
    return [Obj(combos[p][0], combos[p][1], str(z), int(c)) for p, z, c in zip(picks, sizes, cells)]


def _a(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def short_caption_plan(objs: list[Obj], rng: np.random.Generator) -> tuple[list[Obj], bool]:
    """What a short caption says, in every language: the objects in the caption's order, and whether the count
    comes first."""
    order = rng.permutation(len(objs)) if rng.random() < 0.5 else np.arange(len(objs))
    counted = not (rng.random() < 0.5 or len(objs) == 1)
    return [objs[i] for i in order], counted


def english_short_caption(ordered: list[Obj], counted: bool) -> str:
    names = _join([_a(o.name) for o in ordered])
    return f"{NUMBER_WORDS[len(ordered)]} shapes: {names}" if counted else names


def short_caption(objs: list[Obj], rng: np.random.Generator) -> str:
    return english_short_caption(*short_caption_plan(objs, rng))


def caption_relation(objs: list[Obj]) -> str | None:
    """Where the first object is relative to the second (one of RELATIONS); None for a single object."""
    if len(objs) < 2:
        return None
    (ar, ac), (br, bc) = divmod(objs[0].cell, 3), divmod(objs[1].cell, 3)
    return RELATIONS[0] if ac < bc else RELATIONS[1] if ac > bc else RELATIONS[2] if ar < br else RELATIONS[3]


def long_caption(objs: list[Obj], bg_word: str) -> str:
    n = len(objs)
    noun = "shape" if n == 1 else "shapes"
    parts = [f"a {o.size} {o.name} {'in the' if o.position == 'center' else 'at the'} {o.position}" for o in objs]
    text = f"{NUMBER_WORDS[n].capitalize()} {noun} on a {bg_word} noisy background: {_join(parts)}."
    rel = caption_relation(objs)
    if rel is not None:
        text += f" The {objs[0].name} is {rel} the {objs[1].name}."
    return text


def caption_languages(codes: tuple[str, ...] | list[str] | None = None) -> dict[str, Language]:
    """The languages of the packaged vocabulary tables (``synth_languages.yaml``; ``codes``: only these),
    each checked to translate every word of ``ENGLISH_VOCABULARY``."""
    return load_languages(ENGLISH_VOCABULARY, codes=codes)


def vqa_pair(objs: list[Obj], rng: np.random.Generator) -> tuple[str, str, str]:
    """(question, answer, question type) about colour, shape, count or position; always unambiguous."""
    qtype = ("colour", "shape", "count", "position")[int(rng.integers(4))]
    o = objs[int(rng.integers(len(objs)))]
    shapes = [x.shape for x in objs]
    colours = [x.colour for x in objs]
    if qtype == "colour":
        ref = f"the {o.shape}" if shapes.count(o.shape) == 1 else f"the shape at the {o.position}"
        return f"What colour is {ref}?", o.colour, qtype
    if qtype == "shape":
        ref = f"the {o.colour} shape" if colours.count(o.colour) == 1 else f"the shape at the {o.position}"
        return f"What shape is {ref}?", o.shape, qtype
    if qtype == "count":
        if rng.random() < 0.5:
            return "How many shapes are there?", str(len(objs)), qtype
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        return f"How many {colour} shapes are there?", str(colours.count(colour)), qtype
    return f"Where is the {o.name}?", o.position, qtype


# ------------------------------------------------------------------------------------------ one sample per split

class World:
    """Generates sample `i` of a split as a raw webdataset sample (see formats.py)."""

    def __init__(self, config: WorldConfig):
        self.cfg = config
        weights = np.array([config.page_themes[t] for t in PAGE_THEMES])
        self._theme_p = weights / weights.sum()  # probability of each page theme
        self.languages = caption_languages(config.languages)

    def translations(self, plans: list[tuple[list[Obj], bool]], long: tuple[list[Obj], str] | None = None
                     ) -> dict[str, dict[str, list[str]]]:
        """The same captions in every language of the config: short captions from their plans, and the long
        caption of (objects, background word)."""
        out = {}
        for code, language in self.languages.items():
            entry = {"captions": [language.short_caption(ordered, counted) for ordered, counted in plans]}
            if long is not None:
                entry["long_captions"] = [language.long_caption(long[0], long[1], caption_relation(long[0]))]
            out[code] = entry
        return out

    def short_captions(self, objs: list[Obj], rng: np.random.Generator) -> tuple[list[str], list]:
        """Up to 5 distinct short captions of a scene (sorted, as English text) and their plans."""
        plans: dict[str, tuple[list[Obj], bool]] = {}
        for _ in range(12):
            plan = short_caption_plan(objs, rng)
            plans.setdefault(english_short_caption(*plan), plan)
        caps = sorted(plans)[:5]
        return caps, [plans[c] for c in caps]

    def rng(self, split: str, index: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, SPLIT_IDS[split], index])

    def scene(self, rng: np.random.Generator, n: int | None = None, allow_heldout: bool = False
              ) -> tuple[list[Obj], Image.Image, str]:
        n = int(rng.integers(1, 5)) if n is None else n
        objs = sample_objects(rng, n, allow_heldout)
        img, bg = render_scene(objs, rng, self.cfg.image_size)
        return objs, img, bg

    def sample(self, split: str, index: int) -> RawSample:
        rng = self.rng(split, index)
        key = f"{split}{index:07d}"
        fmt = self.cfg.image_format
        if split == "pairs":
            objs, img, bg = self.scene(rng)
            return pair_sample(key, img, short_caption(objs, rng), long_caption=long_caption(objs, bg),
                               extra={"objects": [asdict(o) for o in objs]}, image_format=fmt)
        if split == "interleaved":
            return self._page(key, rng)
        if split in ("video", "video_qa"):
            return self._video(key, rng, split, allow_heldout=split == "video_qa")
        if split == "icl_words":
            return self._icl(index)
        heldout_only = split == "heldout"
        allow = split != "pairs"
        if split in ("classification", "heldout"):
            if heldout_only:
                colour, shape = HELDOUT[int(rng.integers(len(HELDOUT)))]
                objs = [Obj(colour, shape, str(rng.choice(list(SIZES))), int(rng.integers(9)))]
            else:
                objs = sample_objects(rng, 1, allow_heldout=True)
            img, _ = render_scene(objs, rng, self.cfg.image_size)
            choices = [f"{c} {s}" for c in COLOURS for s in SHAPES]
            extra = {"heldout": (objs[0].colour, objs[0].shape) in HELDOUT, "colour": objs[0].colour,
                     "shape": objs[0].shape}
            return classification_record(key, img, objs[0].name, choices=choices, extra=extra, image_format=fmt)
        objs, img, bg = self.scene(rng, allow_heldout=allow)
        extra = {"objects": [asdict(o) for o in objs],
                 "heldout": any((o.colour, o.shape) in HELDOUT for o in objs)}
        if split == "captioning":
            caps, plans = self.short_captions(objs, rng)
            return caption_record(key, img, caps, extra={**extra, "translations": self.translations(plans)},
                                  image_format=fmt)
        if split == "vqa":
            q, a, qtype = vqa_pair(objs, rng)
            return vqa_record(key, img, q, [a] * 10, question_id=index, extra={**extra, "question_type": qtype},
                              image_format=fmt)
        if split in ("retrieval", "retrieval_val"):
            caps, plans = self.short_captions(objs, rng)
            return retrieval_record(key, img, caps, long_captions=[long_caption(objs, bg)],
                                    extra={**extra, "translations": self.translations(plans, (objs, bg))},
                                    image_format=fmt)
        raise ValueError(f"unknown split {split!r}")

    def _page(self, key: str, rng: np.random.Generator) -> RawSample:
        """A page of one theme: each image followed by its text; pages teach the model to follow a format."""
        theme = PAGE_THEMES[int(rng.choice(len(PAGE_THEMES), p=self._theme_p))]
        if theme == "words":
            return self._words_page(key, rng)
        n_images = 1 if rng.random() < self.cfg.single_image_page_prob else int(rng.integers(2, 6))
        texts: list[str | None] = []
        images: list[Image.Image | None] = []
        sims: list[float | None] = []
        intro = {"caption": "Pictures of shapes with their descriptions.", "qa": "A quiz about shapes.",
                 "count": "Count the shapes in each picture."}[theme]
        if rng.random() < 0.5:
            texts.append(intro), images.append(None), sims.append(None)
        for _ in range(n_images):
            objs, img, bg = self.scene(rng)
            noisy = rng.random() < self.cfg.noisy_image_prob
            described = sample_objects(rng, len(objs), False) if noisy else objs  # noisy: another scene's text
            if theme == "caption":
                text = short_caption(described, rng).capitalize() + "."
            elif theme == "qa":
                q, a, _ = vqa_pair(described, rng)
                text = f"Question: {q} Answer: {a}."
            else:
                n = len(described)
                text = f"There {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} {'shape' if n == 1 else 'shapes'}."
            texts += [None, text]
            images += [img, None]
            sims += [float(rng.uniform(0.05, 0.15) if noisy else rng.uniform(0.25, 0.4)), None]
        return interleaved_sample(key, texts, images, similarities=sims, extra={"theme": theme},
                                  image_format=self.cfg.image_format)

    def _words_page(self, key: str, rng: np.random.Generator) -> RawSample:
        """A page that names 2-3 kinds of shape (or colour) with nonsense words drawn for this page only, then
        shows more of them: 4-9 one-object pictures, so later pictures reuse names given earlier on the page.
        The only way to predict a repeated name is to find the earlier picture of the same kind - the skill the
        ``icl_words`` episodes test, with another word pool (``TRAIN_WORDS``) and several text formats."""
        attribute = ("shape", "colour")[int(rng.integers(2))]
        pool = list(SHAPES if attribute == "shape" else COLOURS)
        n_way = int(rng.integers(2, 4))
        values = [pool[i] for i in rng.choice(len(pool), size=n_way, replace=False)]
        words = [str(w) for w in rng.choice(TRAIN_WORDS, size=n_way, replace=False)]
        fmt = WORD_FORMATS[int(rng.integers(len(WORD_FORMATS)))]
        texts: list[str | None] = []
        images: list[Image.Image | None] = []
        if rng.random() < 0.5:
            texts.append("Each kind of shape has a name on this page."), images.append(None)
        others = list(COLOURS if attribute == "shape" else SHAPES)
        objects = []
        n_images = int(rng.integers(4, 10))
        # Every name is given at least once; the rest are random repeats, in random order.
        classes = rng.permutation([*range(n_way), *rng.integers(n_way, size=n_images - n_way).tolist()])
        for cls in classes.tolist():
            while True:  # training pages never show a held-out colour+shape composition
                other = others[int(rng.integers(len(others)))]
                colour, shape = (other, values[cls]) if attribute == "shape" else (values[cls], other)
                if (colour, shape) not in HELDOUT:
                    break
            obj = Obj(colour, shape, str(rng.choice(list(SIZES))), int(rng.integers(9)))
            img, _ = render_scene([obj], rng, self.cfg.image_size)
            objects.append(asdict(obj))
            texts += [None, fmt.format(word=words[cls])]
            images += [img, None]
        sims = [None if im is None else float(rng.uniform(0.25, 0.4)) for im in images]
        return interleaved_sample(key, texts, images, similarities=sims,
                                  extra={"theme": "words", "attribute": attribute, "names": dict(zip(words, values)),
                                         "objects": objects},
                                  image_format=self.cfg.image_format)

    def _video(self, key: str, rng: np.random.Generator, split: str, allow_heldout: bool) -> RawSample:
        size, frames = self.cfg.image_size, self.cfg.frames
        n = int(rng.integers(1, 3))
        objs = sample_objects(rng, n, allow_heldout)
        # One axis per clip; each object has its own lane across that axis, so paths never cross.
        axis = ("left", "right") if rng.random() < 0.5 else ("up", "down")
        moves = [str(rng.choice(axis if i == 0 else (*axis, "still"))) for i in range(n)]
        bg, _ = _background(rng, size)
        travel = size * 0.45  # total displacement over the clip
        starts = []
        for i, (o, m) in enumerate(zip(objs, moves)):
            r = SIZES[o.size] * size / 2
            dx, dy = DIRECTIONS[m]
            lane = (i + 0.5) * size / n
            if m == "still":
                along = float(rng.uniform(r + 1, size - r - 1))
            else:
                along = size / 2 - (dx + dy) * travel / 2
            x0, y0 = (along, lane) if axis[0] == "left" else (lane, along)
            starts.append((x0, y0, r, dx, dy))
        clip = []
        for f in range(frames):
            img = Image.fromarray(bg)
            draw = ImageDraw.Draw(img)
            t = f / max(1, frames - 1)
            for o, (x0, y0, r, dx, dy) in zip(objs, starts):
                draw_object(draw, o.shape, o.colour, x0 + dx * travel * t, y0 + dy * travel * t, r)
            clip.append(img)
        phrases = [f"{_a(o.name)} {'stays still' if m == 'still' else 'moves ' + m}" for o, m in zip(objs, moves)]
        caption = " while ".join(phrases)
        extra = {"objects": [{**asdict(o), "motion": m} for o, m in zip(objs, moves)]}
        fmt = self.cfg.image_format
        if split == "video":
            return video_sample(key, clip, caption, self.cfg.fps, extra=extra, image_format=fmt)
        i = int(rng.integers(n))
        question = f"Which way does the {objs[i].name} move?"
        return video_qa_record(key, clip, self.cfg.fps, question, [moves[i]] * 10,
                               extra={**extra, "caption": caption}, image_format=fmt)

    def _icl(self, index: int) -> RawSample:
        """Record `index` of the icl_words split: episode = index // per_episode, supports first, then queries."""
        cfg = self.cfg
        per_episode = cfg.n_way * cfg.k_shot + cfg.n_query
        episode, j = divmod(index, per_episode)
        # Episode-level draws (attribute, its values, their words) from their own stream.
        ep = np.random.default_rng([cfg.seed, SPLIT_IDS["icl_words"], 0, episode])
        attribute = ("shape", "colour")[int(ep.integers(2))]
        pool = list(SHAPES if attribute == "shape" else COLOURS)
        values = [pool[i] for i in ep.choice(len(pool), size=cfg.n_way, replace=False)]
        words = [EVAL_WORDS[i] for i in ep.choice(len(EVAL_WORDS), size=cfg.n_way, replace=False)]
        rng = np.random.default_rng([cfg.seed, SPLIT_IDS["icl_words"], 1, index])
        role = "support" if j < cfg.n_way * cfg.k_shot else "query"
        cls = j % cfg.n_way if role == "support" else int(rng.integers(cfg.n_way))
        other = list(COLOURS if attribute == "shape" else SHAPES)[int(rng.integers(len(pool)))]
        colour, shape = (other, values[cls]) if attribute == "shape" else (values[cls], other)
        obj = Obj(colour, shape, str(rng.choice(list(SIZES))), int(rng.integers(9)))
        img, _ = render_scene([obj], rng, cfg.image_size)
        extra = {"episode": episode, "role": role, "attribute": attribute, "concept": values[cls],
                 "colour": colour, "shape": shape}
        return classification_record(f"icl_words{index:07d}", img, words[cls], choices=words, extra=extra,
                                     image_format=cfg.image_format)


# ------------------------------------------------------------------------------------------ writing the world

def split_folder(split: str) -> str:
    """The folder of a world that holds a split's shards: ``train`` or ``eval``."""
    return "train" if split in TRAIN_SPLITS else "eval"


def split_glob(world: str | Path, split: str) -> str:
    """The glob of a split's shards in a world folder (``<world>/train/pairs-*.tar``), e.g. for a run config
    written before the world exists."""
    return str(Path(world) / split_folder(split) / f"{split}-*.tar")


def split_size(config: WorldConfig, split: str) -> int:
    if split == "icl_words":
        return config.n_episodes * (config.n_way * config.k_shot + config.n_query)
    return {"pairs": config.n_pairs, "interleaved": config.n_interleaved, "video": config.n_video}.get(
        split, config.n_eval)


def _gen_chunk(args: tuple[WorldConfig, str, int, int]) -> list[RawSample]:
    config, split, lo, hi = args
    world = World(config)
    return [world.sample(split, i) for i in range(lo, hi)]


def _samples(config: WorldConfig, split: str, pool: Any) -> Iterator[RawSample]:
    n = split_size(config, split)
    chunk = 64
    jobs = [(config, split, lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]
    chunks = pool.imap(_gen_chunk, jobs) if pool is not None else map(_gen_chunk, jobs)
    for samples in chunks:
        yield from samples


WORLD_FILE = "world.json"
_NOT_IDENTITY = ("splits", "workers")  # settings that do not change a split's samples


def _same_world(recorded: dict[str, Any], config: WorldConfig) -> bool:
    """Whether a world.json's config generates the same samples as ``config`` (the splits and workers aside)."""
    mine = json.loads(json.dumps({k: v for k, v in asdict(config).items() if k not in _NOT_IDENTITY}))
    return mine == {k: v for k, v in recorded.items() if k not in _NOT_IDENTITY}


def _world_shard_files(out: Path) -> list[Path]:
    """Every shard (or interrupted shard write) of a known split in a world's train/ and eval/ folders."""
    return sorted(p for folder in ("train", "eval") for split in SPLIT_IDS
                  for pattern in (f"{split}-*.tar", f"{split}-*.tar.tmp") for p in (out / folder).glob(pattern))


def generate_world(out_dir: str | Path, config: WorldConfig | None = None, progress: bool = True,
                   log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Write the world's shards under out_dir/{train,eval}/{split}-NNNNNN.tar and out_dir/world.json.

    Returns the world metadata (also in world.json): config, vocabulary, held-out compositions, the shard files
    and sample count of each split, and the fields of each split's records.

    Into an existing world: world.json is removed first (an interrupted generation leaves no world behind), the
    splits written are rewritten, the splits of the previous world that this call does not write are kept when it
    was generated with the same settings (so splits can be added one call at a time), and every other shard of a
    known split is removed (logged), so the folder holds exactly the shards world.json lists.
    """
    config = config or WorldConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kept: dict[str, Any] = {}
    meta_path = out / WORLD_FILE
    if meta_path.exists():
        try:
            previous = json.loads(meta_path.read_text(encoding="utf-8"))
            if _same_world(previous["config"], config):
                kept = {k: v for k, v in previous["splits"].items() if k not in config.splits}
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            pass  # an unreadable world.json: nothing of it is kept
        meta_path.unlink()
    splits: dict[str, Any] = {}
    t0 = time.perf_counter()
    pool = mp.get_context("fork").Pool(config.workers) if config.workers > 1 else None
    try:
        for split in config.splits:
            n = split_size(config, split)
            t = time.perf_counter()
            with ShardWriter(out / split_folder(split), split, max_samples=config.shard_size) as w:
                for s in tqdm(_samples(config, split, pool), total=n, desc=f"synth {split}", disable=not progress,
                              leave=False):
                    w.write(s)
            splits[split] = {"samples": n, "shards": [str(p.relative_to(out)) for p in w.shards],
                             "seconds": round(time.perf_counter() - t, 3)}
            if log:
                log(f"synth {split}: {n} samples in {len(w.shards)} shards, {splits[split]['seconds']:.1f} s")
    except OSError as e:  # disk full, permissions: one error; no partial shard is left
        for partial in out.glob("*/*.tar.tmp"):
            partial.unlink(missing_ok=True)
        raise OSError(e.errno, f"could not write the synthetic world into {out}: {e.strerror or e}") from None
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    splits = {**kept, **splits}
    listed = {out / f for entry in splits.values() for f in entry["shards"]}
    stale = [p for p in _world_shard_files(out) if p not in listed]
    for path in stale:
        path.unlink()
    if stale and log:
        log(f"synth: removed {len(stale)} shards of the previous world that this one does not list")
    meta = {
        "format_version": 1,
        "config": {**asdict(config), "splits": list(splits)},
        "colours": list(COLOURS), "shapes": list(SHAPES), "sizes": list(SIZES), "positions": list(CELL_NAMES),
        "directions": list(DIRECTIONS), "heldout_compositions": [list(p) for p in HELDOUT],
        "train_words": list(TRAIN_WORDS), "eval_words": list(EVAL_WORDS),
        "caption_languages": {"en": "English", **{c: lang.name for c, lang in caption_languages(
            config.languages).items()}},
        "splits": splits, "seconds": round(time.perf_counter() - t0, 3),
        "icl_words": {"n_way": config.n_way, "k_shot": config.k_shot, "n_query": config.n_query,
                      "episodes": config.n_episodes,
                      "fields": ["episode", "role", "attribute", "concept", "label", "choices"]},
    }
    write_text_atomic(meta_path, json.dumps(meta, indent=1))
    return meta


# ------------------------------------------------------------------------------------------ reading the world

def world_split_shards(path: str | Path, split: str) -> list[str]:
    """The shards of one split, in order: those world.json lists, for a world folder or the folder of the split
    inside it (``<world>/train``); else the ``<split>-*.tar`` files of the folder, or a shard spec (see
    :func:`~frozenvl.data.shards.expand_shards`)."""
    root = Path(path)
    world = next((w for w in (root, root.parent) if (w / WORLD_FILE).is_file()
                  and (w == root or root.name == split_folder(split))), None) if root.is_dir() else None
    if world is not None:
        try:
            splits = json.loads((world / WORLD_FILE).read_text(encoding="utf-8"))["splits"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{world / WORLD_FILE} is not a valid world description: {e}") from None
        except RecursionError:  # JSON nested too deeply to parse
            raise ValueError(f"{world / WORLD_FILE} is not a valid world description: nested too deeply") from None
        if split not in splits:
            raise FileNotFoundError(f"{world}: the world has no {split} split ({WORLD_FILE} lists "
                                    f"{', '.join(splits) or 'none'}); generate it with frozenvl data synth "
                                    f"--splits {split}")
        shards = [str(world / f) for f in splits[split]["shards"]]
        missing = [s for s in shards if not Path(s).is_file()]
        if missing:
            raise FileNotFoundError(f"{world}: {WORLD_FILE} lists {missing[0]}, which is missing")
        return shards
    for folder in (root / split_folder(split), root):
        if folder.is_dir():
            shards = sorted(str(p) for p in folder.glob(f"{split}-*.tar"))
            if shards:
                return shards
    if root.is_dir():
        raise FileNotFoundError(f"{path}: no {split}-*.tar shards (expected a synthetic world folder generated "
                                "with this split)")
    shards = expand_shards(str(path))
    if not shards or not all(Path(s).exists() for s in shards):
        raise FileNotFoundError(f"no shards found at {path}")
    return shards


def iter_world_split(path: str | Path, split: str, skips: SkipCounter | None = None) -> Iterator[dict[str, Any]]:
    """Decoded samples (:func:`~frozenvl.data.formats.decode_sample`) of one split, in shard order.
    Bad samples are skipped and counted in ``skips``, never raised."""
    skips = skips if skips is not None else SkipCounter()
    for shard in world_split_shards(path, split):
        for raw in read_shard(shard, skips):
            try:
                yield decode_sample(raw)
            except BadSample as bad:
                skips.add(bad.reason, str(bad))
