import pytest

from frozenvl.flame.prompts import OFFICIAL_PROMPT_SETS, PromptSet, clean_caption, load_prompt_set


def test_official_sets_have_1_3_7_one_word_facets():
    sets = {name: load_prompt_set(name) for name in OFFICIAL_PROMPT_SETS}
    assert [sets[n].num_facets for n in ("raw", "short", "long")] == [1, 3, 7]
    for ps in sets.values():
        assert ps.prefix.count("{caption}") == 1
        assert all("in just one word" in p for p in ps.prompts)
    long = " ".join(sets["long"].prompts)
    for facet in ("main object", "minor object", "characteristic", "action or event", "atmosphere or emotion"):
        assert facet in long
    # The short set is the first three long facets; raw is the first one.
    assert sets["long"].prompts[:3] == sets["short"].prompts
    assert sets["raw"].prompts == sets["short"].prompts[:1]


def test_clean_caption():
    assert clean_caption('a dog "Rex" runs') == "a dog 'Rex' runs."
    assert clean_caption("is it a cat?") == "is it a cat."
    assert clean_caption("  two  cats.\n") == "two cats."
    assert clean_caption("   ") == ""


def test_custom_yaml_roundtrip_and_stable_hash(tmp_path):
    ps = PromptSet("mine", "Text: {caption} ->", (" colour in one word:", " shape in one word:"))
    path = tmp_path / "mine.yaml"
    ps.save_yaml(path)
    loaded = load_prompt_set(path)
    assert loaded == ps
    assert loaded.stable_hash() == ps.stable_hash()
    # The hash depends on content only, not on the name, and changes with any prompt or their order.
    assert PromptSet("other", ps.prefix, ps.prompts).stable_hash() == ps.stable_hash()
    assert PromptSet("mine", ps.prefix, ps.prompts[::-1]).stable_hash() != ps.stable_hash()
    assert load_prompt_set("long").stable_hash() != load_prompt_set("short").stable_hash()


def test_bad_prompt_sets_are_refused(tmp_path):
    with pytest.raises(ValueError, match="caption"):
        PromptSet("x", "no caption here", ("p",))
    with pytest.raises(FileNotFoundError, match="official"):
        load_prompt_set("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("prefix: '{caption}'\nprompts: just one string\n")
    with pytest.raises(ValueError, match="list"):
        load_prompt_set(bad)
