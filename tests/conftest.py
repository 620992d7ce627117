import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    # Fast tests first: the slow ones (embedded real models) run at the end of the default run.
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


ONE_THREAD_FOLDERS = {"eval", "flame", "tasks", "cli"}


@pytest.fixture(autouse=True)
def _one_torch_thread(request):
    """Tiny models run fastest on one thread; on a shared 2-core machine more threads only stall each other."""
    if request.path.parent.name not in ONE_THREAD_FOLDERS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
