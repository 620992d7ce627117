"""The synthetic world's captions in other languages: templated translations of the same scenes from vocabulary
tables kept as data (src/frozenvl/data/synth_languages.yaml)."""

from __future__ import annotations

import copy
import json
import re

import pytest
import yaml

from frozenvl.config import ConfigError
from frozenvl.data.formats import decode_sample
from frozenvl.data.languages import LANGUAGE_TABLE, load_languages
from frozenvl.data.synth import (
    CAPTION_LANGUAGES,
    ENGLISH_VOCABULARY,
    Obj,
    World,
    WorldConfig,
    generate_world,
    iter_world_split,
    long_caption,
    short_caption,
)

# Hand-written translations of two scenes (the oracle: written by a person, not by the templates).
# Scene A: a small red circle top left and a large blue star in the centre, dark background.
# Scene B: a large purple cross at the top and a small yellow square at the bottom, grey background.
SCENE_A = ([Obj("red", "circle", "small", 0), Obj("blue", "star", "large", 4)], "dark")
SCENE_B = ([Obj("purple", "cross", "large", 1), Obj("yellow", "square", "small", 7)], "grey")
HUMAN = {
    "fr": {
        "A": "Deux formes sur un fond sombre et bruité : un petit cercle rouge en haut à gauche et une grande étoile "
             "bleue au centre. Le cercle rouge est à gauche de l'étoile bleue.",
        "B": "Deux formes sur un fond gris et bruité : une grande croix violette en haut et un petit carré jaune en "
             "bas. La croix violette est au-dessus du carré jaune.",
        "B short counted": "deux formes : une croix violette et un carré jaune",
    },
    "es": {
        "A": "Dos formas sobre un fondo oscuro con ruido: un círculo rojo pequeño arriba a la izquierda y una "
             "estrella azul grande en el centro. El círculo rojo está a la izquierda de la estrella azul.",
        "B": "Dos formas sobre un fondo gris con ruido: una cruz morada grande arriba y un cuadrado amarillo pequeño "
             "abajo. La cruz morada está encima del cuadrado amarillo.",
        "B short counted": "dos formas: una cruz morada y un cuadrado amarillo",
    },
    "de": {
        "A": "Zwei Formen auf einem dunklen verrauschten Hintergrund: ein kleiner roter Kreis oben links und ein "
             "großer blauer Stern in der Mitte. Der rote Kreis ist links von dem blauen Stern.",
        "B": "Zwei Formen auf einem grauen verrauschten Hintergrund: ein großes violettes Kreuz oben und ein kleines "
             "gelbes Quadrat unten. Das violette Kreuz ist über dem gelben Quadrat.",
        "B short counted": "zwei Formen: ein violettes Kreuz und ein gelbes Quadrat",
    },
}
# Words of the English templates themselves (not filled in from the vocabulary): each language's templates say them.
TEMPLATE_WORDS = {"a", "an", "the", "at", "in", "on", "is", "and", "shape", "shapes", "noisy", "background"}


@pytest.mark.parametrize("code", sorted(HUMAN))
def test_translations_equal_hand_written_ones(code):
    language = load_languages(ENGLISH_VOCABULARY, codes=[code])[code]
    objs, bg = SCENE_A
    assert language.long_caption(objs, bg, "to the left of") == HUMAN[code]["A"]
    objs, bg = SCENE_B
    assert language.long_caption(objs, bg, "above") == HUMAN[code]["B"]
    assert language.short_caption(objs, counted=True) == HUMAN[code]["B short counted"]
    # English, for the same scenes, from the world's own functions: the translations say the same relation.
    assert long_caption(*SCENE_B).endswith("The purple cross is above the yellow square.")


def test_every_eval_caption_has_its_translations(tmp_path):
    config = WorldConfig(seed=5, n_pairs=4, n_eval=30, shard_size=50,
                         splits=("captioning", "retrieval", "retrieval_val"))
    meta = generate_world(tmp_path, config, progress=False, log=None)
    assert meta["caption_languages"] == {"en": "English", "fr": "French", "es": "Spanish", "de": "German"}
    assert json.loads((tmp_path / "world.json").read_text())["caption_languages"] == meta["caption_languages"]
    tables = yaml.safe_load(LANGUAGE_TABLE.read_text(encoding="utf-8"))
    for split in ("captioning", "retrieval", "retrieval_val"):
        records = list(iter_world_split(tmp_path, split))
        assert len(records) == 30
        for r in records:
            assert set(r["translations"]) == set(CAPTION_LANGUAGES), (split, r["key"])
            for code, t in r["translations"].items():
                assert len(t["captions"]) == len(r["captions"]) >= 1
                assert all(c and c != e for c, e in zip(t["captions"], r["captions"]))
                if split != "captioning":
                    assert len(t["long_captions"]) == len(r["long_captions"]) == 1
                    # The translated long caption names each object's shape noun and position phrase.
                    for o in r["objects"]:
                        assert tables[code]["shapes"][o["shape"]]["noun"] in t["long_captions"][0]
                        position = tables[code]["positions"][Obj(**o).position]
                        assert position in t["long_captions"][0]


def test_translations_leave_the_english_captions_and_images_as_they_were():
    plain, translated = World(WorldConfig(seed=2, languages=())), World(WorldConfig(seed=2))
    for split in ("retrieval", "captioning"):
        for i in range(25):
            a, b = decode_sample(plain.sample(split, i)), decode_sample(translated.sample(split, i))
            assert a["captions"] == b["captions"] and a.get("long_captions") == b.get("long_captions")
            assert a["images"][0].tobytes() == b["images"][0].tobytes()
            assert a["translations"] == {} and set(b["translations"]) == {"fr", "es", "de"}


def test_the_tables_cover_every_word_the_english_templates_use():
    """Every word of thousands of English captions is either a vocabulary word the tables translate or a word of
    the templates themselves; and the packaged tables translate every vocabulary word."""
    vocabulary_words = {w for words in ENGLISH_VOCABULARY.values() for phrase in words for w in phrase.split()}
    world = World(WorldConfig(seed=11))
    seen = set()
    for i in range(400):
        rng = world.rng("retrieval", i)
        objs, _, bg = world.scene(rng, allow_heldout=True)
        seen |= set(re.findall(r"[a-z]+", (long_caption(objs, bg) + " " + short_caption(objs, rng)).lower()))
    assert seen - vocabulary_words - TEMPLATE_WORDS == set()
    used = {w for phrase in ENGLISH_VOCABULARY["positions"] + ENGLISH_VOCABULARY["relations"] for w in phrase.split()}
    assert vocabulary_words - used <= seen  # the captions do use the vocabulary (the check above is not empty)
    languages = load_languages(ENGLISH_VOCABULARY)
    assert set(languages) >= {"fr", "es", "de"}


@pytest.mark.parametrize("table", ["colours", "shapes", "sizes", "positions", "counts", "backgrounds", "relations"])
def test_a_missing_word_fails_naming_it(tmp_path, table):
    data = yaml.safe_load(LANGUAGE_TABLE.read_text(encoding="utf-8"))
    for code in ("fr", "de"):
        for word in ENGLISH_VOCABULARY[table]:
            broken = copy.deepcopy(data)
            del broken[code][table][word]
            path = tmp_path / "broken.yaml"
            path.write_text(yaml.safe_dump(broken, allow_unicode=True), encoding="utf-8")
            with pytest.raises(ValueError, match=f"language '{code}'.*{re.escape(f'{table}.{word}')}"):
                load_languages(ENGLISH_VOCABULARY, path)


def test_missing_grammar_fails_naming_it(tmp_path):
    data = yaml.safe_load(LANGUAGE_TABLE.read_text(encoding="utf-8"))
    del data["es"]["colours"]["red"]["f"]
    del data["de"]["articles"]["relation"]["n"]
    data["fr"]["templates"]["long"] = "{count}: {parts}."  # no {background}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ValueError, match=r"'es'.*colours\.red\.f"):
        load_languages(ENGLISH_VOCABULARY, path, codes=["es"])
    with pytest.raises(ValueError, match=r"'de'.*articles\.relation\.n"):
        load_languages(ENGLISH_VOCABULARY, path, codes=["de"])
    with pytest.raises(ValueError, match=r"'fr'.*templates\.long"):
        load_languages(ENGLISH_VOCABULARY, path, codes=["fr"])


def test_an_unknown_language_is_a_config_error():
    with pytest.raises(ConfigError, match=r"languages.*'xx'.*fr, es, de"):
        WorldConfig(languages=("fr", "xx"))


def test_world_retrieval_reads_a_language(tmp_path):
    from frozenvl.flame.synthetic_eval import world_retrieval

    generate_world(tmp_path, WorldConfig(seed=1, n_eval=6, image_size=32, languages=("de",), splits=("retrieval",)),
                   progress=False, log=None)
    records = list(iter_world_split(tmp_path, "retrieval"))
    german = world_retrieval(tmp_path, 32, long=True, language="de")
    assert german.captions == [r["translations"]["de"]["long_captions"][0] for r in records]
    short = world_retrieval(tmp_path, 32, long=False, language="de")
    assert short.captions == [c for r in records for c in r["translations"]["de"]["captions"]]
    assert short.text_to_image == [i for i, r in enumerate(records) for _ in r["captions"]]
    with pytest.raises(ValueError, match="no 'fr' captions.*en, de"):
        world_retrieval(tmp_path, 32, language="fr")
