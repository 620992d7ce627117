from pathlib import Path

import pytest
from trainfixtures import make_world


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    return make_world(tmp_path_factory.mktemp("world"))
