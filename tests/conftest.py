import os

import pytest
import torch

import sparseflow  # noqa: F401  (loads the kernels before any test collects torch.ops.sparseflow)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICES)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def fuzz_examples(default: int) -> int:
    """Hypothesis examples per op: a few hundred in CI, thousands with SPARSEFLOW_FUZZ_EXAMPLES."""
    return int(os.environ.get("SPARSEFLOW_FUZZ_EXAMPLES", default))


def toolchain_env() -> dict:
    """The environment for compilers and host test programs started by a test: without the sanitizer runtime
    that scripts/asan_tests.sh preloads into the Python process (nvcc and its children would load it too)."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    return env
