"""PoFT's gradient = tau-weighted, length-normalised cross-entropy, through a real (tiny) model."""

import pytest
import torch

from poft import poft_loss, poft_weight
from poft.chat import ChatFormat
from poft.tiny import build_model

CONVERSATIONS = [
    [{"role": "user", "content": "add 2 and 3"}, {"role": "assistant", "content": "5"}],
    [
        {"role": "user", "content": "reverse abcdef"},
        {"role": "assistant", "content": "fedcba, the reversed string"},
    ],
    [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi there"},
        {"role": "user", "content": "sort 3 1 2"},
        {"role": "assistant", "content": "1 2 3"},
    ],
]


def response_scores(model, tokenizer):
    """r_theta per conversation from full logits (plain reference computation), one example at a time."""
    chat = ChatFormat.from_tokenizer(tokenizer)
    scores = []
    for conversation in CONVERSATIONS:
        encoded = chat.encode(conversation)
        ids = torch.tensor([encoded.input_ids])
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        token_lp = log_probs.gather(-1, ids[0, 1:, None])[:, 0]
        mask = torch.tensor(encoded.response_mask[1:], dtype=torch.bool)
        scores.append(token_lp[mask].mean())
    return torch.stack(scores)


def grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(
    ("beta", "gamma", "direction"), [(1.0, 0.0, None), (2.5, 0.3, None), (1.0, 0.0, [1, -1, 1])]
)
def test_poft_gradient_equals_weighted_normalised_ce(tokenizers, beta, gamma, direction):
    tokenizer = tokenizers["chatml"]
    model = build_model(tokenizer, hidden_size=32, num_layers=2, seed=3)
    ref = torch.tensor([-4.0, -7.0, -5.5])
    z = None if direction is None else torch.tensor(direction)

    model.zero_grad()
    r = response_scores(model, tokenizer)
    poft_loss(r, ref, beta=beta, gamma=gamma, direction=z).mean().backward()
    autograd = grads(model)

    model.zero_grad()
    r = response_scores(model, tokenizer)
    tau = poft_weight(r, ref, beta=beta, gamma=gamma, direction=z)  # detached
    sign = torch.ones(3) if z is None else z.float()
    (sign * tau * (-r)).mean().backward()  # -r is the length-normalised cross-entropy
    weighted_ce = grads(model)

    assert 0 < tau.min() and tau.max() < beta
    for a, b in zip(autograd, weighted_ce, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    assert any(a.abs().sum() > 0 for a in autograd)
