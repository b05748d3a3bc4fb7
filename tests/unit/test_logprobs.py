"""Chunked (checkpointed) and TRL-fused per-token log-probs against the plain full-logits reference."""

import pytest
import torch

from poft.logprobs import chunked_token_log_probs, token_log_probs_reference

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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_trl_fused_head_matches_reference(tokenizers, dtype):
    """The trainer's path (TRL's fused LM head) gives the reference log-probs and gradients."""
    from trl.trainer.utils import add_fused_lm_head

    from poft.tiny import build_model

    model = build_model(tokenizers["chatml"], hidden_size=32, num_layers=2, seed=1).to(dtype)
    add_fused_lm_head(model, outputs=("log_probs",))
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, len(tokenizers["chatml"]), (3, 13), generator=g)
    labels = input_ids.clone()
    labels[:, :4] = -100
    labels[1, 7:9] = -100

    model.zero_grad()
    fused = model(input_ids=input_ids, labels=labels, fused_lm_head=True).log_probs
    fused.sum().backward()
    fused_grad = model.lm_head.weight.grad.float().clone()

    model.zero_grad()
    hidden = model.model(input_ids=input_ids).last_hidden_state[:, :-1]
    reference = token_log_probs_reference(hidden, model.lm_head.weight, labels[:, 1:])
    reference.sum().backward()
    tol = TOLERANCE[dtype]
    assert torch.allclose(fused.float(), reference, **tol)
    assert torch.allclose(fused_grad, model.lm_head.weight.grad.float(), **tol)
