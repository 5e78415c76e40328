"""benchmarks/bench_gemm.py's oneDNN linear layer computes what torch's own does, forward and backward."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tiny_lm import tiny_llama, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("bench_gemm", ROOT / "benchmarks" / "bench_gemm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_onednn_linear_matches_torch_linear_values_and_gradients():
    bench = load_script()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 17, 24, generator=gen, requires_grad=True)
    w = torch.randn(40, 24, generator=gen, requires_grad=True)
    b = torch.randn(40, generator=gen, requires_grad=True)
    upstream = torch.randn(3, 17, 40, generator=gen)
    expected = torch.nn.functional.linear(x, w, b)
    expected_grads = torch.autograd.grad(expected, (x, w, b), upstream)
    with bench.linear_through_onednn():
        got = torch.nn.functional.linear(x, w, b)
    assert torch.allclose(got, expected, atol=1e-5)
    for g, e in zip(torch.autograd.grad(got, (x, w, b), upstream), expected_grads):
        assert torch.allclose(g, e, atol=1e-4)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_a_model_run_through_onednn_gives_its_logits_and_restores_torch_linear():
    bench = load_script()
    tok = tiny_tokenizer()
    model = tiny_llama(tok)
    ids = torch.tensor([tok("the cat sat on the mat")["input_ids"]])
    original = torch.nn.functional.linear
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        with bench.linear_through_onednn():
            assert torch.nn.functional.linear is not original
            got = model(input_ids=ids).logits
    assert torch.nn.functional.linear is original
    assert torch.allclose(got, expected, atol=1e-5)
