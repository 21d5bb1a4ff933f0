"""The direct bindings of the per-call ops (sparseflow._C.nm_linear / bsr_linear, csrc/op_bindings.cpp) and the
rule in sparseflow.ops that routes calls to them or to torch.ops."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

from sparseflow import _C, ops
from sparseflow.testing.op_db import OP_DB, nm_linear_args

PER_CALL_OPS = ("nm_linear", "bsr_linear")


def _bits(t):
    return t.view(torch.int16) if t.dtype in (torch.bfloat16, torch.float16) else t


@pytest.mark.parametrize("name", PER_CALL_OPS)
def test_binding_matches_torch_ops_bit_for_bit(name):
    for sample in OP_DB[name].samples(torch.device("cpu")):
        direct = getattr(_C, name)(*sample.args)
        through_torch_ops = OP_DB[name].op(*sample.args)
        assert direct.dtype == through_torch_ops.dtype and direct.shape == through_torch_ops.shape, sample.note
        assert torch.equal(_bits(direct), _bits(through_torch_ops)), sample.note


@pytest.mark.parametrize("name", PER_CALL_OPS)
def test_binding_raises_the_errors_of_torch_ops(name):
    # Same Python exception types and messages: the binding translates c10 errors as torch does.
    for bad in OP_DB[name].bad_samples(torch.device("cpu")):
        with pytest.raises(bad.error, match=bad.match):
            getattr(_C, name)(*bad.args)
        with pytest.raises(bad.error, match=bad.match):
            getattr(ops, name)(*bad.args)


def test_arguments_of_the_wrong_python_type_get_torch_ops_message():
    args = list(nm_linear_args((2,), 16, 64, 2, 4, torch.float32))
    for position, value, expected in ((9, None, "str"), (3, 2.5, "int"), (8, "scale", "Optional\\[Tensor\\]")):
        bad = args[:position] + [value] + args[position + 1:]
        with pytest.raises(RuntimeError, match=f"Expected a value of type '{expected}' for argument"):
            ops.nm_linear(*bad)


def test_eager_calls_take_the_binding_and_torch_function_modes_see_torch_ops(monkeypatch):
    args = nm_linear_args((3,), 16, 64, 2, 4, torch.float32, bias=True)
    taken = []
    binding = _C.nm_linear
    monkeypatch.setattr(_C, "nm_linear", lambda *a: taken.append(True) or binding(*a))
    ops.nm_linear(*args)
    assert taken == [True]

    seen = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, a=(), kwargs=None):
            seen.append(func)
            return func(*a, **(kwargs or {}))

    with Record():
        y = ops.nm_linear(*args)
    assert seen == [torch.ops.sparseflow.nm_linear.default]
    assert torch.equal(y, _C.nm_linear(*args))


def test_tensor_subclass_with_torch_function_goes_through_torch_ops():
    calls = []

    class Traced(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            calls.append(func)
            return super().__torch_function__(func, types, args, kwargs or {})

    args = list(nm_linear_args((2,), 16, 64, 2, 4, torch.float32))
    args[0] = args[0].as_subclass(Traced)
    ops.nm_linear(*args)
    assert torch.ops.sparseflow.nm_linear.default in calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8])
def test_compiled_calls_trace_torch_ops_in_one_graph(dtype):
    args = nm_linear_args((3,), 16, 64, 2, 4, dtype, bias=True)
    compiled = torch.compile(lambda *a: ops.nm_linear(*a), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(*args), ops.nm_linear(*args), rtol=0, atol=0)


@pytest.mark.parametrize("name", PER_CALL_OPS)
def test_inputs_that_require_grad_get_the_autograd_fallback_as_through_torch_ops(name):
    """The bindings skip the autograd keys only when no tensor argument (optional ones included) requires
    grad; otherwise the fallback runs as through torch.ops."""
    bias = {"nm_linear": 7, "bsr_linear": 8}[name]
    float_samples = [s for s in OP_DB[name].samples(torch.device("cpu"))
                     if s.args[0].dtype == torch.float32 and s.args[0].numel() and s.args[bias] is not None]
    args = list(float_samples[0].args)
    for position in (0, bias):  # x, and the optional bias
        grad_args = list(args)
        grad_args[position] = grad_args[position].clone().requires_grad_()
        for call in (getattr(ops, name), OP_DB[name].op):
            y = call(*grad_args)
            assert y.requires_grad
            with pytest.warns(UserWarning, match=f"sparseflow::{name}: an autograd kernel was not registered"):
                y.sum().backward()
    assert not getattr(ops, name)(*args).requires_grad


def test_a_type_error_of_the_op_itself_is_raised_once(monkeypatch):
    """x of the wrong dtype: the binding's TypeError (the op's own message) propagates; torch.ops is not run
    again, as it is when pybind11 refuses an argument's Python type."""
    args = list(nm_linear_args((2,), 16, 64, 2, 4, torch.float32))
    args[0] = args[0].to(torch.int32)
    through_torch_ops = []
    monkeypatch.setattr(ops, "_NM_LINEAR", lambda *a: through_torch_ops.append(True))
    with pytest.raises(TypeError, match="sparseflow.nm_linear: x must have dtype"):
        ops.nm_linear(*args)
    assert through_torch_ops == []
    args[0], args[3] = args[0].float(), 2.5  # n of the wrong Python type: torch.ops takes the call
    ops.nm_linear(*args)
    assert through_torch_ops == [True]
