"""Every op against its reference on the sample inputs, its bad inputs, and torch.library.opcheck."""

import pytest
import torch

from sparseflow.testing.op_db import OP_DB


def _clone(args):
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _bits(t):
    """The bit pattern, so that inputs holding NaN compare equal to themselves."""
    if t.is_floating_point() or t.dtype == torch.float8_e4m3fn:
        return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def _samples(device):
    return [(name, s) for name, e in OP_DB.items() for s in e.samples(torch.device(device))]


@pytest.mark.parametrize("name", sorted(OP_DB))
def test_matches_reference_and_leaves_inputs_alone(name, device):
    entry = OP_DB[name]
    if device not in entry.sample_devices:
        pytest.skip(f"{name}'s registry samples describe {', '.join(entry.sample_devices)} layouts; its {device} "
                    f"kernel has its own tests (tests/test_{device}_*.py)")
    for sample in entry.samples(torch.device(device)):
        before = _clone(sample.args)
        actual = entry.op(*sample.args, **sample.kwargs)
        expected = entry.reference(*sample.args, **sample.kwargs)
        entry.compare(actual, expected, sample.args)
        for a, b in zip(sample.args, before):
            if isinstance(a, torch.Tensor):
                assert torch.equal(_bits(a), _bits(b)), f"{name} modified its input ({sample.note})"


@pytest.mark.parametrize("name", sorted(OP_DB))
def test_bad_inputs_raise_clear_errors(name, device):
    entry = OP_DB[name]
    if device not in entry.sample_devices:
        pytest.skip(f"{name}'s registry samples describe {', '.join(entry.sample_devices)} layouts; its {device} "
                    f"kernel has its own tests (tests/test_{device}_*.py)")
    for bad in entry.bad_samples(torch.device(device)):
        with pytest.raises(bad.error, match=bad.match):
            entry.op(*bad.args)


@pytest.mark.parametrize("name", sorted(OP_DB))
def test_opcheck(name, device):
    entry = OP_DB[name]
    if device not in entry.sample_devices:
        pytest.skip(f"{name}'s registry samples describe {', '.join(entry.sample_devices)} layouts; its {device} "
                    f"kernel has its own tests (tests/test_{device}_*.py)")
    for sample in entry.samples(torch.device(device)):
        # opcheck's schema checker compares tensors with ops float8 lacks, and its eager-vs-traced check
        # counts NaN != NaN; both kinds of sample are covered bitwise above.
        if any(isinstance(a, torch.Tensor) and (a.dtype == torch.float8_e4m3fn or (a.is_floating_point() and a.isnan().any()))
               for a in sample.args):
            continue
        torch.library.opcheck(entry.op, sample.args, sample.kwargs)
