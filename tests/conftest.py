import os

import pytest
import torch

# Keep tests deterministic and within the 2-core budget. Under pytest-xdist (`make test` runs two
# workers) the cores are shared: each worker, and the processes its tests start, gets its share.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, os.cpu_count() or 1) // _WORKERS)
torch.set_num_threads(_THREADS)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))


# The longest tests (over a minute on the 2-core CPU; `pytest --durations`), started first so that
# none of them is left running alone at the end of a parallel run.
LONGEST = (
    "test_tiny_model_overfits_a_real_128_frame_clip",
    "test_quick_demo_writes_summary_and_video",
)


def pytest_collection_modifyitems(config, items):
    """The longest tests, then the slow ones, then the rest (stable within each): with two workers,
    a long learning test that starts last would run alone at the end. The order is the same on
    every worker, as xdist requires."""

    def key(item):
        return getattr(item, "originalname", item.name) not in LONGEST, item.get_closest_marker("slow") is None

    items.sort(key=key)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch ~/.cache: the probe cache goes to a per-session temporary folder."""
    monkeypatch.setenv("COORDTOK_CACHE", str(tmp_path_factory.getbasetemp() / "coordtok-cache"))


@pytest.fixture(scope="session", autouse=True)
def _cpu_only():
    """Every test sees a machine without CUDA, so ``make test`` gives the same answers on a GPU
    machine as here: the code picks its device, precision and profiling from
    ``torch.cuda.is_available()``, and the tests check the CPU's choices (bit-exact resumes,
    fp32 losses, no max-batch search). In this process ``torch.cuda.is_available()`` is False
    (so accelerate, whose first use in the session fixes its device, picks the CPU too); the
    processes a test starts (``accelerate launch``, benchmark children) get no visible GPU and
    ``ACCELERATE_USE_CPU=1``. A test about a CUDA branch mocks ``torch.cuda`` itself
    (``monkeypatch.setattr(torch.cuda, "is_available", lambda: True)``): its mock replaces this
    one for that test (tests/test_cpu_only_suite.py checks both). Session-wide, so that it also
    holds for the session's shared fixtures (the tiny tokenizer is trained once, first)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: False)
        mp.setenv("CUDA_VISIBLE_DEVICES", "")
        mp.setenv("ACCELERATE_USE_CPU", "1")
        yield


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
