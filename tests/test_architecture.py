"""The import layers of docs/architecture.md hold: import-linter's contracts in pyproject.toml (one-way layers, the
engine imports no model kind, no circles inside a package) are checked on the source tree."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter on the tree at ``root`` (its ``src`` first on the path, its pyproject.toml's contracts)."""
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(root / "src"), "PATH": ""})


def test_import_contracts_are_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout


def test_the_check_fails_on_an_upward_import_and_on_a_circle(tmp_path):
    shutil.copytree(ROOT / "src", tmp_path / "src")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    config = tmp_path / "src/frozenvl/flamingo/config.py"
    original = config.read_text()
    config.write_text(original + "\nfrom frozenvl.train import loop  # noqa: E402,F401\n")  # library -> engine
    result = lint_imports(tmp_path)
    assert result.returncode != 0 and "frozenvl.flamingo.config -> frozenvl.train.loop" in result.stdout
    config.write_text(original + "\nfrom frozenvl.flamingo import model  # noqa: E402,F401\n")  # model <-> config
    result = lint_imports(tmp_path)
    assert result.returncode != 0 and "No cycles are allowed in frozenvl.flamingo" in result.stdout
    config.write_text(original)
    loop = tmp_path / "src/frozenvl/train/loop.py"
    loop.write_text(loop.read_text() + "\nfrom frozenvl.tasks.flamingo import FlamingoTask  # noqa: E402,F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0 and "frozenvl.train.loop -> frozenvl.tasks.flamingo" in result.stdout
