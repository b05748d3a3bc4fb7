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


# ---- bounded bi-PoFT ------------------------------------------------------------------------------------------

BI_OPTIONS = [
    {"variant": "signed"},
    {"variant": "signed", "beta": 2.0, "gamma": 0.3, "undesirable_weight": 0.5},
    {"variant": "soft", "undesirable_target": 0.1},
    {"variant": "soft", "undesirable_target": 0.5, "beta": 0.7, "gamma": -0.4},
    {"variant": "margin", "undesirable_margin": 2.0},
    {"variant": "margin", "undesirable_margin": 0.0, "beta": 1.5, "gamma": 0.2, "undesirable_weight": 0.3},
]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _closed_form_grad(r, q, good, beta=1.0, gamma=0.0, variant="soft", undesirable_target=0.1,
                      undesirable_margin=2.0, undesirable_weight=1.0):  # fmt: skip
    """d loss / d r_theta written out by hand, per variant (the formulas of docs/method.md)."""
    m = beta * (r - q) + gamma
    if good:
        return -beta * _sigmoid(-m)
    if variant == "signed":
        g = beta * _sigmoid(beta * (r - q) - gamma)
    elif variant == "soft":
        g = beta * (_sigmoid(m) - undesirable_target)
    else:
        g = beta * _sigmoid(m) if m > -undesirable_margin else 0.0
    return undesirable_weight * g


@pytest.mark.parametrize("options", BI_OPTIONS)
def test_bi_poft_loss_matches_reference_and_closed_form_gradient(options):
    from poft.loss import bi_poft_loss, bi_poft_loss_reference, bi_poft_weight

    policy = [-0.5, -3.0, -9.0, -1.0, -2.0, -7.5, 0.2, -4.0]
    ref = [-1.0, -1.0, -2.0, -6.0, -2.0, -2.0, -3.0, -1.5]
    good = [True, False, False, False, True, False, False, True]
    r = torch.tensor(policy, requires_grad=True)
    loss = bi_poft_loss(r, torch.tensor(ref), torch.tensor(good), **options)
    expected = bi_poft_loss_reference(policy, ref, good, **options)
    assert loss.dtype == torch.float32
    assert loss.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    loss.sum().backward()
    grad = [_closed_form_grad(p, q, g, **options) for p, q, g in zip(policy, ref, good, strict=True)]
    assert r.grad.tolist() == pytest.approx(grad, rel=1e-5, abs=1e-7)
    weight = bi_poft_weight(r.detach(), torch.tensor(ref), torch.tensor(good), **options)
    assert weight.tolist() == pytest.approx([-g for g in grad], rel=1e-5, abs=1e-7)


def test_bi_poft_hand_values():
    """r_theta - r_ref = 1 on an undesirable row, beta = 1, gamma = 0:
    signed: -log sigmoid(-1) = log(1 + e) = 1.3132616875
    soft P = 0.25: 0.25 * log(1 + e^-1) + 0.75 * log(1 + e) = 0.25 * 0.3132616875 + 0.75 * 1.3132616875 = 1.0632616875
    margin 2, weight 0.5: 0.5 * 1.3132616875; at r_theta - r_ref = -3 (below the margin): 0.5 * log(1 + e^-2)."""
    from poft.loss import bi_poft_loss

    r, q, bad = torch.tensor([0.0]), torch.tensor([-1.0]), torch.tensor([False])
    assert bi_poft_loss(r, q, bad, variant="signed").item() == pytest.approx(1.3132616875, rel=1e-6)
    assert bi_poft_loss(r, q, bad, variant="soft", undesirable_target=0.25).item() == pytest.approx(
        1.0632616875, rel=1e-6
    )
    got = bi_poft_loss(torch.tensor([0.0, -4.0]), torch.tensor([-1.0, -1.0]), torch.tensor([False, False]),
                       variant="margin", undesirable_margin=2.0, undesirable_weight=0.5)  # fmt: skip
    assert got.tolist() == pytest.approx([0.5 * 1.3132616875, 0.5 * math.log1p(math.exp(-2.0))], rel=1e-6)


def test_signed_variant_is_poft_loss_with_a_direction_and_desirable_rows_are_poft():
    from poft.loss import bi_poft_loss

    policy, ref = torch.tensor([-1.0, -3.0, 0.5]), torch.tensor([-2.0, -2.0, 1.0])
    direction = torch.tensor([True, False, False])
    for gamma in (0.0, 0.7):
        assert torch.allclose(
            bi_poft_loss(policy, ref, direction, beta=1.3, gamma=gamma, variant="signed"),
            poft_loss(policy, ref, beta=1.3, gamma=gamma, direction=direction),
        )
    for variant in ("soft", "margin"):
        assert torch.allclose(
            bi_poft_loss(policy, ref, torch.tensor([True] * 3), variant=variant), poft_loss(policy, ref)
        )


@pytest.mark.parametrize("target", [0.05, 0.25, 0.5])
def test_soft_target_stops_pushing_at_its_fixed_point(target):
    """The gradient on an undesirable row is zero exactly where r_theta = r_ref + (logit(P) - gamma) / beta;
    above it the row is pushed down, below it pulled up (weight at most beta * P)."""
    from poft.loss import bi_poft_weight

    beta, gamma, ref = 2.0, 0.3, -4.0
    fixed = ref + (math.log(target / (1 - target)) - gamma) / beta
    policy = torch.tensor([fixed, fixed + 1.0, fixed - 1.0, fixed - 50.0])
    w = bi_poft_weight(policy, torch.full((4,), ref), torch.tensor([False] * 4), beta=beta, gamma=gamma,
                       variant="soft", undesirable_target=target)  # fmt: skip
    assert w[0].item() == pytest.approx(0.0, abs=1e-6)
    assert w[1].item() < 0 < w[2].item() <= beta * target
    assert w[3].item() == pytest.approx(beta * target, rel=1e-4)


def test_margin_variant_never_pulls_an_undesirable_row_up():
    from poft.loss import bi_poft_weight

    policy = torch.linspace(-30.0, 5.0, 71)
    w = bi_poft_weight(policy, torch.zeros(71), torch.zeros(71, dtype=torch.bool), variant="margin",
                       undesirable_margin=1.5)  # fmt: skip
    assert (w <= 0).all()
    assert (w[policy <= -1.5] == 0).all() and (w[policy > -1.5] < 0).all()


def test_bi_poft_options_are_checked():
    from poft.loss import bi_poft_loss

    args = torch.zeros(2), torch.zeros(2), torch.tensor([True, False])
    with pytest.raises(ValueError, match="variant"):
        bi_poft_loss(*args, variant="hinge")
    with pytest.raises(ValueError, match="undesirable_target"):
        bi_poft_loss(*args, variant="soft", undesirable_target=0.7)
    with pytest.raises(ValueError, match="undesirable_target"):
        bi_poft_loss(*args, variant="soft", undesirable_target=0.0)
    with pytest.raises(ValueError, match="undesirable_weight"):
        bi_poft_loss(*args, undesirable_weight=-1.0)


@settings(max_examples=200, deadline=None)
@given(
    policy=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=8),
    shift=st.floats(-1e6, 1e6),
    beta=st.floats(1e-3, 100.0),
    gamma=st.floats(-50.0, 50.0),
    variant=st.sampled_from(["signed", "soft", "margin"]),
    target=st.floats(1e-3, 0.5),
)
def test_bi_poft_loss_and_gradient_are_finite(policy, shift, beta, gamma, variant, target):
    from poft.loss import bi_poft_loss

    p = torch.tensor(policy, requires_grad=True)
    desirable = torch.tensor([i % 2 == 0 for i in range(len(policy))])
    loss = bi_poft_loss(p, torch.tensor(policy) + shift, desirable, beta=beta, gamma=gamma, variant=variant,
                        undesirable_target=target)  # fmt: skip
    loss.sum().backward()
    assert torch.isfinite(loss).all() and (loss >= 0).all()
    assert torch.isfinite(p.grad).all()
