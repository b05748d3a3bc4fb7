"""Chunked (checkpointed) per-token log-probs against the plain full-logits reference; token-budget batching.

No model is built here: the trainer's path (TRL's fused head) is compared on a tiny model in
tests/integration/test_fused_head.py."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from poft.logprobs import chunked_token_log_probs, token_budget_batches, token_log_probs_reference

TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def make_inputs(shape, hidden_size, vocab, dtype, holes, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, hidden_size, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(vocab, hidden_size, generator=g) * 0.2).to(dtype).requires_grad_()
    bias = (torch.randn(vocab, generator=g) * 0.1).to(dtype).requires_grad_()
    labels = torch.randint(0, vocab, shape, generator=g)
    if holes:
        labels[torch.rand(shape, generator=g) < holes] = -100
    return hidden, weight, bias, labels


def values_and_grads(fn, hidden, weight, bias, labels, **kw):
    for t in (hidden, weight, bias):
        t.grad = None
    out = fn(hidden, weight, labels, bias, **kw)
    # a loss that weights positions differently, so gradient routing errors show
    scale = torch.linspace(0.5, 1.5, out.numel()).reshape(out.shape)
    (out * scale).sum().backward()
    return out.detach(), [t.grad.detach().float().clone() for t in (hidden, weight, bias)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("shape", "chunk_size", "holes"),
    [((3, 17), 5, 0.3), ((1, 1), 4, 0.0), ((2, 33), 64, 0.5), ((5, 7), 1, 0.0), ((4, 9), 3, 0.9)],
)
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_chunked_equals_reference(dtype, shape, chunk_size, holes, softcap):
    inputs = make_inputs(shape, hidden_size=24, vocab=211, dtype=dtype, holes=holes)
    ref_out, ref_grads = values_and_grads(token_log_probs_reference, *inputs, softcap=softcap)
    out, grads = values_and_grads(chunked_token_log_probs, *inputs, softcap=softcap, chunk_size=chunk_size)
    assert out.dtype == torch.float32 and out.shape == shape
    assert torch.allclose(out, ref_out, **TOLERANCE[dtype])
    assert (out[inputs[3] == -100] == 0).all()
    for a, b in zip(grads, ref_grads, strict=True):
        if dtype == torch.float32:
            assert torch.allclose(a, b, **TOLERANCE[dtype])
        else:  # bf16 .grad accumulates one chunk at a time in bf16 (35 chunks of 1 here): norm-relative error
            assert (a - b).norm() / b.norm() < 3e-2


def test_all_positions_ignored_gives_zeros_and_zero_grads():
    hidden, weight, bias, labels = make_inputs((2, 5), 8, 31, torch.float32, holes=0.0)
    labels[:] = -100
    out, grads = values_and_grads(chunked_token_log_probs, hidden, weight, bias, labels, chunk_size=2)
    assert (out == 0).all() and all((g == 0).all() for g in grads)


def test_no_grad_path_matches():
    hidden, weight, bias, labels = make_inputs((3, 11), 16, 97, torch.float32, holes=0.2)
    with torch.no_grad():
        a = chunked_token_log_probs(hidden, weight, labels, bias, chunk_size=4)
        b = token_log_probs_reference(hidden, weight, labels, bias)
    assert torch.allclose(a, b, atol=1e-6)


def assert_longest_first_partition(batches: list[list[int]], lengths: list[int]) -> None:
    """Every row in exactly one batch, and the rows in order of decreasing length across the batches."""
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)  # longest first


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=40), st.integers(1, 200))
def test_token_budget_batches(lengths, budget):
    batches = token_budget_batches(lengths, budget)
    assert_longest_first_partition(batches, lengths)
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= budget


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_chunked_log_probs_equal_full_log_softmax(chunk_size, softcap):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 97, bias=False)
    hidden, labels = torch.randn(23, 16) * 3, torch.randint(0, 97, (23,))
    with torch.no_grad():
        logits = head(hidden)
        if softcap:
            logits = softcap * torch.tanh(logits / softcap)
        expected = torch.log_softmax(logits.double(), -1).gather(-1, labels[:, None]).squeeze(-1)
        ours = chunked_token_log_probs(hidden, head.weight, labels, None, softcap, chunk_size)
    assert torch.allclose(ours.double(), expected, rtol=1e-5, atol=1e-5)
    assert math.isclose(float(ours.sum()), float(expected.sum()), rel_tol=1e-5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=40), st.integers(1, 200))
def test_packed_batches(lengths, budget):
    from poft.logprobs import packed_batches

    batches = packed_batches(lengths, budget)
    assert_longest_first_partition(batches, lengths)
    for b in batches:  # real tokens within the budget, or one sequence alone
        assert len(b) == 1 or sum(lengths[i] for i in b) <= budget
    assert batches == packed_batches(lengths, budget)  # deterministic: a resume re-forms the same batches
