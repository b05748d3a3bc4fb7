"""poft_loss and the score reductions against values worked out by hand."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from poft import normalize_scores, poft_loss, poft_weight, sequence_logprob_sums


def test_poft_loss_hand_values():
    """policy = [-1, -2, 0], ref = [-2, -2, -1]  ->  margins r_theta - r_ref = [1, 0, 1].

    beta=1, gamma=0:   -log sigmoid(1) = log(1 + e^-1) = 0.3132616875,  -log sigmoid(0) = log 2 = 0.6931471806
    beta=2, gamma=0.5: logits 2*[1, 0, 1] + 0.5 = [2.5, 0.5, 2.5]
                       log(1 + e^-2.5) = 0.0788897343,  log(1 + e^-0.5) = 0.4740769842
    """
    policy = torch.tensor([-1.0, -2.0, 0.0])
    ref = torch.tensor([-2.0, -2.0, -1.0])
    got = poft_loss(policy, ref)
    assert torch.allclose(got, torch.tensor([0.3132616875, 0.6931471806, 0.3132616875]), atol=1e-7)
    got = poft_loss(policy, ref, beta=2.0, gamma=0.5)
    assert torch.allclose(got, torch.tensor([0.0788897343, 0.4740769842, 0.0788897343]), atol=1e-7)
    assert got.dtype == torch.float32 and got.shape == (3,)


def test_poft_weight_is_beta_sigmoid_of_minus_margin():
    """tau = beta * sigmoid(-(beta*m + gamma)); m = 1, beta = 2, gamma = 0.5 -> 2 * sigmoid(-2.5) = 0.1517...."""
    tau = poft_weight(torch.tensor([0.0]), torch.tensor([-1.0]), beta=2.0, gamma=0.5)
    assert tau.item() == pytest.approx(2.0 / (1.0 + math.exp(2.5)), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_extreme_margins_stay_finite(dtype):
    policy = torch.tensor([1e4, -1e4, 0.0], dtype=torch.float32).to(dtype).requires_grad_()
    ref = torch.zeros(3, dtype=dtype)
    loss = poft_loss(policy, ref)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss).all()
    assert loss[0].item() == pytest.approx(0.0, abs=1e-6)
    assert loss[1].item() == pytest.approx(1e4, rel=1e-2)  # -logsigmoid(-x) ~ x
    loss.sum().backward()
    assert torch.isfinite(policy.grad.float()).all()
    assert policy.grad[1].item() == pytest.approx(-1.0, abs=1e-2)  # saturated: full pull
    assert policy.grad[0].item() == pytest.approx(0.0, abs=1e-6)  # already preferred: no pull


def test_bi_poft_direction_flips_the_margin():
    """For z = -1 the loss is -logsigmoid(-(beta*(p - r)) + gamma): the target is pushed below the references."""
    policy, ref = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0])
    undesirable = torch.tensor([False, False])
    flipped = poft_loss(policy, ref, beta=1.5, gamma=0.2, direction=undesirable)
    expected = -torch.nn.functional.logsigmoid(-1.5 * (policy - ref) + 0.2)
    assert torch.allclose(flipped, expected)
    # bool and +-1 directions agree; True == no direction (PoFT)
    mixed_bool = torch.tensor([True, False])
    mixed_sign = torch.tensor([1, -1])
    assert torch.allclose(
        poft_loss(policy, ref, direction=mixed_bool), poft_loss(policy, ref, direction=mixed_sign)
    )
    assert torch.allclose(
        poft_loss(policy, ref, direction=torch.tensor([True, True])), poft_loss(policy, ref)
    )


def test_direction_values_other_than_sign_are_rejected():
    with pytest.raises(ValueError, match="direction"):
        poft_loss(torch.zeros(2), torch.zeros(2), direction=torch.tensor([0.5, 1.0]))


def test_small_beta_recovers_mean_cross_entropy():
    """beta -> 0: dL/dr = -beta*sigmoid(-gamma) -> after dividing by beta/2 (gamma=0), the gradient of -r."""
    beta = 1e-4
    policy = torch.tensor([-0.3, -5.0, -1.2], requires_grad=True)
    (poft_loss(policy, torch.tensor([-1.0, -1.0, -9.0]), beta=beta).sum() / (beta / 2)).backward()
    assert torch.allclose(policy.grad, -torch.ones(3), atol=1e-3)


def test_sequence_sums_ignore_masked_garbage():
    log_probs = torch.tensor([[-1.0, -2.0, float("nan"), -4.0], [float("-inf"), -0.5, -0.5, 0.0]])
    mask = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 0]])
    sums, counts = sequence_logprob_sums(log_probs, mask)
    assert sums.tolist() == [-7.0, -1.0] and counts.tolist() == [3, 2]


def test_normalizations():
    sums, counts, nbytes = torch.tensor([-6.0, -3.0]), torch.tensor([3, 0]), torch.tensor([12, 4])
    assert normalize_scores(sums, counts, normalization="token").tolist() == [-2.0, -3.0]  # 0 tokens -> /1
    assert normalize_scores(sums, counts, normalization="byte", response_bytes=nbytes).tolist() == [
        -0.5,
        -0.75,
    ]
    assert normalize_scores(sums, counts, normalization="none").tolist() == [-6.0, -3.0]
    with pytest.raises(ValueError):
        normalize_scores(sums, counts, normalization="byte")
    with pytest.raises(ValueError):
        normalize_scores(sums, counts, normalization="word")


@settings(max_examples=200, deadline=None)
@given(
    policy=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=8),
    shift=st.floats(-1e6, 1e6),
    beta=st.floats(1e-3, 100.0),
    gamma=st.floats(-50.0, 50.0),
    flip=st.booleans(),
)
def test_loss_and_gradient_are_finite_for_any_finite_scores(policy, shift, beta, gamma, flip):
    p = torch.tensor(policy, requires_grad=True)
    ref = torch.tensor(policy) + shift
    direction = torch.tensor([not flip] * len(policy))
    loss = poft_loss(p, ref, beta=beta, gamma=gamma, direction=direction)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and (loss >= 0).all()
    assert torch.isfinite(p.grad).all()
