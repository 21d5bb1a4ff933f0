"""Random valid and invalid inputs for every op: either the reference's result or a clear exception.

A few hundred cases per run in CI; SPARSEFLOW_FUZZ_EXAMPLES=5000 for a long run.
"""

import pytest
import torch
from conftest import fuzz_examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparseflow.testing.op_db import OP_DB

CLEAR_ERRORS = (TypeError, ValueError, IndexError)


@pytest.mark.parametrize("name", sorted(OP_DB))
def test_fuzz(name, device):
    entry = OP_DB[name]
    if device not in entry.sample_devices:
        pytest.skip(f"{name}'s registry samples describe {', '.join(entry.sample_devices)} layouts; its {device} "
                    f"kernel has its own tests (tests/test_{device}_*.py)")

    @settings(max_examples=fuzz_examples(150), deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        args = entry.fuzz(data.draw, torch.device(device))
        try:
            expected = entry.reference(*args)
        except CLEAR_ERRORS as ref_error:
            with pytest.raises(CLEAR_ERRORS) as info:
                entry.op(*args)
            assert "sparseflow." in str(info.value), f"unclear message: {info.value}"
            assert isinstance(info.value, type(ref_error)), f"{type(info.value)} vs reference {type(ref_error)}"
            return
        entry.compare(entry.op(*args), expected, args)

    run()
