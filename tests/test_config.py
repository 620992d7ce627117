"""The config engine (frozenvl.config): typed coercion, nested configs, errors naming the dotted key, overrides,
YAML files; then one contract over every config class of the package."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass, field

import pytest
import yaml

import frozenvl
from frozenvl.config import (
    Config,
    ConfigError,
    apply_override,
    check_positive,
    dump_yaml,
    from_dict,
    load_yaml,
    to_dict,
)


@dataclass
class Part(Config):
    name: str = "a"
    weight: float = 1.0

    def validate(self, where: str) -> None:
        check_positive(f"{where}.weight", self.weight, allow_zero=True)


@dataclass
class Whole(Config):
    lr: float = 1e-4
    steps: int = 1
    flag: bool = False
    limit: int | None = None
    source: str | list[str] = ""
    tags: tuple[str, ...] = ()
    themes: dict[str, float] = field(default_factory=dict)
    part: Part = field(default_factory=Part)
    parts: list[Part] = field(default_factory=list)


@dataclass
class Builder(Config):
    """A config whose check builds another config in code, as ImageTowerOptions builds a ViT config."""

    weight: float = 1.0

    def validate(self, where: str) -> None:
        Part(weight=self.weight)


SEEN: list[str] = []


@dataclass
class Seen(Config):
    """Records the ``where`` its check was given."""

    x: int = 0

    def validate(self, where: str) -> None:
        SEEN.append(where)


@dataclass
class Holder(Config):
    given: Seen = field(default_factory=Seen)
    default: Seen = field(default_factory=Seen)


def test_values_are_coerced_to_the_annotated_types():
    config = from_dict(Whole, {"lr": "5e-4", "limit": None, "source": ["x.tar", "y.tar"], "tags": ["a", "b"],
                               "themes": {"qa": 2}, "part": {"name": "p"}, "parts": [{"name": "q"}, {"weight": 0}]})
    assert config.lr == 5e-4 and isinstance(config.lr, float)  # YAML 1.1 reads "5e-4" as a string
    assert config.limit is None and config.source == ["x.tar", "y.tar"]
    assert config.tags == ("a", "b") and config.themes == {"qa": 2.0} and isinstance(config.themes["qa"], float)
    assert config.part == Part("p") and config.parts == [Part("q"), Part(weight=0.0)]
    assert from_dict(Whole, {"part": Part("given")}).part == Part("given")  # an already built config is kept


@pytest.mark.parametrize("data, message", [
    ({"steps": "many"}, "run.steps must be an integer; got 'many'"),
    ({"steps": True}, "run.steps must be an integer"),
    ({"flag": "yes"}, "run.flag must be true or false"),
    ({"lr": "fast"}, "run.lr must be a number"),
    ({"limit": 2.5}, "run.limit must be int or NoneType"),
    ({"tags": "a"}, "run.tags must be a list"),
    ({"themes": {"qa": "x"}}, "run.themes.qa must be a number"),
    ({"part": 3}, "run.part must be a mapping of Part fields"),
    ({"parts": [{}, {"weight": "w"}]}, "run.parts.1.weight must be a number"),
    ({"parts": [{}, {"nme": "b"}]}, "unknown key run.parts.1.nme; Part has: name, weight"),
    ({"part": {"wieght": 1}}, "unknown key run.part.wieght; Part has: name, weight"),
    ({"lrr": 1}, "unknown key run.lrr; Whole has: lr, steps"),
])
def test_errors_name_the_dotted_key(data, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        from_dict(Whole, data, "run")


def test_checks_name_the_key_in_the_tree_or_the_class():
    with pytest.raises(ConfigError, match=r"^run\.parts\.0\.weight must be >= 0; got -1\.0$"):
        from_dict(Whole, {"parts": [{"weight": -1}]}, "run")
    with pytest.raises(ConfigError, match=r"^Part\.weight must be >= 0"):
        Part(weight=-1)  # made in code: the class names it
    with pytest.raises(ConfigError, match=r"^Part\.weight must be >= 0"):
        from_dict(Part, {"weight": -1})  # read at the root of a tree
    with pytest.raises(ConfigError, match=r"^Part\.weight must be >= 0"):
        from_dict(Builder, {"weight": -1}, "run")  # a config made inside a check is checked under its own name
    assert issubclass(ConfigError, ValueError)


def test_only_the_config_read_from_the_tree_gets_its_key():
    SEEN.clear()
    from_dict(Holder, {"given": {"x": 1}}, "h")
    assert SEEN == ["h.given", "Seen"]  # a field's default is made in code, under its class name


def test_to_dict_is_plain_data_and_reads_back():
    config = Whole(tags=("a",), parts=[Part("q")], themes={"qa": 2.0})
    data = to_dict(config)
    assert data["tags"] == ["a"] and data["parts"] == [{"name": "q", "weight": 1.0}]
    assert from_dict(Whole, data) == config
    assert from_dict(Whole, yaml.safe_load(dump_yaml(config))) == config
    assert Whole.from_dict(data) == config and config.to_dict() == data


def test_overrides_address_fields_and_list_entries():
    tree = {"parts": [{"name": "a"}, {"name": "b"}]}
    apply_override(tree, "parts.b.weight=0.5", Whole)
    apply_override(tree, "parts.0.weight=2", Whole)
    apply_override(tree, "part.name=z", Whole)  # a section absent from the tree starts from its defaults
    apply_override(tree, "tags=[x, y]", Whole)
    apply_override(tree, "limit=null", Whole)
    config = from_dict(Whole, tree)
    assert [p.weight for p in config.parts] == [2.0, 0.5]
    assert config.part == Part("z") and config.tags == ("x", "y") and config.limit is None


@pytest.mark.parametrize("assignment, message", [
    ("part.wieght=1", "unknown key part.wieght; Part has: name, weight"),
    ("lrr=1", "unknown key lrr; Whole has"),
    ("parts.c.weight=1", "parts.c: no entry named 'c' (entries: a)"),
    ("parts.3.weight=1", "parts.3: index 3 out of range (the list has 1 entries)"),
    ("parts.a.nme=1", "unknown key parts.a.nme; Part has"),
    ("lr", "override 'lr' must look like key.path=value"),
    ("lr=[1", "override lr: cannot parse value"),
])
def test_bad_overrides_name_the_key(assignment, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        apply_override({"parts": [{"name": "a"}]}, assignment, Whole)


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") == {}


# ----------------------------------------------------------------------------- every config class of frozenvl


def _config_classes() -> list[type]:
    """The dataclasses of the package named ``*Config`` or ``*Options``, found by walking its modules."""
    found = []
    for module_info in pkgutil.walk_packages(frozenvl.__path__, "frozenvl."):
        if module_info.name.endswith("__main__"):
            continue
        module = importlib.import_module(module_info.name)
        found += [obj for name, obj in vars(module).items()
                  if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__
                  and name.endswith(("Config", "Options"))]
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


CONFIG_CLASSES = _config_classes()


def test_the_walk_finds_the_config_classes():
    names = {cls.__name__ for cls in CONFIG_CLASSES}
    assert {"RunConfig", "ModelConfig", "FlamingoConfig", "FlameConfig", "FlameTaskOptions", "LoaderConfig",
            "EvalConfig", "WorldConfig", "VisionTransformerConfig"} <= names


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda cls: cls.__name__)
def test_every_config_class_uses_the_engine(cls):
    assert issubclass(cls, Config)
    default = cls()
    assert from_dict(cls, to_dict(default)) == default
    assert from_dict(cls, yaml.safe_load(dump_yaml(default))) == default
    with pytest.raises(ConfigError, match=rf"unknown key section\.not_a_field; {cls.__name__} has:"):
        from_dict(cls, {"not_a_field": 1}, "section")
