"""The README's Python tour runs as written (slow: the embedded models). Blocks that need files a user brings
(an OpenFlamingo checkpoint) are skipped."""

import re
from pathlib import Path

import pytest

from frozenvl.constants import WEIGHTS_NAME

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_a_tour():
    assert len(python_blocks()) >= 3


def test_readme_python_tour_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ran = 0
    for block in python_blocks():
        if "checkpoint.pt" in block:
            continue
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
        ran += 1
    assert ran >= 2
    assert (tmp_path / "runs" / "my-flamingo" / WEIGHTS_NAME).exists()
    assert (tmp_path / "data" / "world" / "world.json").exists()
