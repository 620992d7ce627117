"""Templated translations of the synthetic world's captions, from vocabulary tables kept as data
(``synth_languages.yaml`` beside this module).

A table maps each English word of the world (colours, shapes, sizes, positions, counts, backgrounds, relations) to
its translation, with the grammar a template needs: the gender of each shape, articles per gender and article
kind, adjective forms per gender (or a stem plus endings), the word order of a noun phrase and the sentence
templates. :func:`load_languages` checks a table against the English vocabulary and fails naming every missing
word; :class:`Language` renders the same scene plans as :mod:`frozenvl.data.synth` renders in English.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

LANGUAGE_TABLE = Path(__file__).with_name("synth_languages.yaml")
ARTICLE_KINDS = ("indefinite", "definite", "relation")
_WORD_TABLES = ("colours", "shapes", "sizes", "positions", "counts", "backgrounds", "relations")
_TEMPLATES = {"long": ("count", "background", "parts"), "relation": ("subject", "relation", "object"),
              "short_counted": ("count", "parts")}


class SceneObject(Protocol):
    colour: str
    shape: str
    size: str

    @property
    def position(self) -> str: ...


@dataclass(frozen=True)
class Language:
    """One language's table (see ``synth_languages.yaml``); ``code`` is its key there (``fr``)."""

    code: str
    table: Mapping[str, Any]

    @property
    def name(self) -> str:
        return str(self.table.get("name", self.code))

    def _adjective(self, entry: Any, gender: str, kind: str) -> str:
        stem = entry[gender] if isinstance(entry, Mapping) else entry
        return f"{stem}{self.table.get('endings', {}).get(kind, {}).get(gender, '')}"

    def noun_phrase(self, obj: SceneObject, kind: str = "indefinite", with_size: bool = True) -> str:
        """``kind``: the article (indefinite "a red circle", definite "the red circle", relation "of the red
        circle"); ``with_size``: the size adjective too (long captions)."""
        shape = self.table["shapes"][obj.shape]
        gender = shape["gender"]
        article = shape.get(kind, self.table["articles"][kind][gender])
        size = self._adjective(self.table["sizes"][obj.size], gender, kind) if with_size else ""
        text = self.table["noun_phrase"].format(article=article, size=size, noun=shape["noun"],
                                                colour=self._adjective(self.table["colours"][obj.colour], gender,
                                                                       kind))
        return _tidy(text)

    def join(self, parts: Sequence[str]) -> str:
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" {self.table['and']} " + parts[-1]

    def short_caption(self, objs: Sequence[SceneObject], counted: bool) -> str:
        """The objects in the caption's order, with the count first when ``counted``."""
        parts = self.join([self.noun_phrase(o, with_size=False) for o in objs])
        if not counted:
            return parts
        return self.table["templates"]["short_counted"].format(count=self.table["counts"][_COUNTS[len(objs)]],
                                                               parts=parts)

    def long_caption(self, objs: Sequence[SceneObject], background: str, relation: str | None) -> str:
        """Every object with its size and position, then ``relation`` (an English relation such as "above") of
        the first object to the second."""
        templates = self.table["templates"]
        parts = [f"{self.noun_phrase(o)} {self.table['positions'][o.position]}" for o in objs]
        text = _capital(templates["long"].format(count=self.table["counts"][_COUNTS[len(objs)]],
                                                 background=self.table["backgrounds"][background],
                                                 parts=self.join(parts)))
        if relation is not None:
            text += " " + _capital(templates["relation"].format(
                subject=self.noun_phrase(objs[0], "definite", with_size=False),
                relation=self.table["relations"][relation],
                object=self.noun_phrase(objs[1], "relation", with_size=False)))
        return text


_COUNTS = (None, "one", "two", "three", "four")


def _tidy(text: str) -> str:
    return " ".join(text.split()).replace("' ", "'")


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def check_table(code: str, table: Any, vocabulary: Mapping[str, Sequence[str]]) -> None:
    """Raise one ValueError naming every English word (or grammar entry) that ``table`` does not cover."""
    if not isinstance(table, Mapping):
        raise ValueError(f"language {code!r}: expected a mapping of tables, got {type(table).__name__}")
    missing: list[str] = []
    for name in _WORD_TABLES:
        words = table.get(name)
        words = words if isinstance(words, Mapping) else {}
        missing += [f"{name}.{w}" for w in vocabulary[name] if w not in words or words[w] in (None, "")]
    shapes = table.get("shapes") if isinstance(table.get("shapes"), Mapping) else {}
    articles = table.get("articles") if isinstance(table.get("articles"), Mapping) else {}
    genders = {s.get("gender") for s in shapes.values() if isinstance(s, Mapping)}
    for shape, entry in shapes.items():
        if not isinstance(entry, Mapping) or not entry.get("noun") or not entry.get("gender"):
            missing.append(f"shapes.{shape}.noun/gender")
    for kind in ARTICLE_KINDS:
        forms = articles.get(kind) if isinstance(articles.get(kind), Mapping) else {}
        missing += [f"articles.{kind}.{g}" for g in sorted(genders, key=str) if g not in forms]
    for name in ("colours", "sizes"):
        for word, entry in (table.get(name) or {}).items():
            if isinstance(entry, Mapping):
                missing += [f"{name}.{word}.{g}" for g in sorted(genders, key=str) if not entry.get(g)]
    for key in ("and", "noun_phrase"):
        if not table.get(key):
            missing.append(key)
    templates = table.get("templates") if isinstance(table.get("templates"), Mapping) else {}
    for name, fields in _TEMPLATES.items():
        text = templates.get(name)
        if not isinstance(text, str) or any("{" + f + "}" not in text for f in fields):
            missing.append(f"templates.{name} (with {', '.join('{' + f + '}' for f in fields)})")
    if missing:
        raise ValueError(f"language {code!r} of the synthetic world's vocabulary tables does not cover: "
                         f"{', '.join(missing)}")


def load_languages(vocabulary: Mapping[str, Sequence[str]], path: str | Path = LANGUAGE_TABLE,
                   codes: Sequence[str] | None = None) -> dict[str, Language]:
    """The languages of a table file (default: the packaged one), each checked against ``vocabulary`` (table
    name -> the English words it must translate). ``codes``: only these, in this order (unknown: an error)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping of language codes to tables")
    unknown = [c for c in codes or () if c not in data]
    if unknown:
        raise ValueError(f"{path} has no language {', '.join(map(repr, unknown))}; it has {', '.join(data)}")
    out = {}
    for code in codes if codes is not None else list(data):
        check_table(str(code), data[code], vocabulary)
        out[str(code)] = Language(str(code), data[code])
    return out
