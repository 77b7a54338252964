import os

import pytest
import torch

# Keep tests deterministic and within the 2-core budget.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch ~/.cache: the probe cache goes to a per-session temporary folder."""
    monkeypatch.setenv("COORDTOK_CACHE", str(tmp_path_factory.getbasetemp() / "coordtok-cache"))


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    """A session folder for the shared tiny tokenizer and latent cache (tests/sit_common.py)."""
    return str(tmp_path_factory.getbasetemp() / "sit-shared")


@pytest.fixture(scope="session")
def cache(root):
    from sit_common import tiny_cache

    return tiny_cache(root)


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny tensors: a second OpenMP thread only adds hand-off cost, and on a shared,
    busy CPU its spin-waits make every op slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
