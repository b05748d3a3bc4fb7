"""The token losses of objective 'sft' on PoFT's path (`loss.token_loss`: TRL's 'nll' and 'dft') and PoFT with
tau fixed (`loss.fixed_tau_loss`) against plain references."""

import pytest
import torch

from poft.loss import fixed_tau_loss, poft_loss, poft_weight, token_loss, token_loss_reference

LOG_PROBS = [[-0.1, -2.3, -0.7], [-4.0], [-0.05, -1.2]]  # response tokens of 3 sequences


def padded() -> tuple[torch.Tensor, torch.Tensor]:
    """[3, 4] log-probs with garbage (NaN) where the label is ignored, and the mask."""
    values = torch.full((3, 4), float("nan"))
    mask = torch.zeros((3, 4), dtype=torch.bool)
    for b, row in enumerate(LOG_PROBS):
        values[b, 1 : 1 + len(row)] = torch.tensor(row)
        mask[b, 1 : 1 + len(row)] = True
    return values, mask


@pytest.mark.parametrize("loss_type", ["nll", "dft"])
@pytest.mark.parametrize("n_tokens", [None, 12])
def test_token_loss_is_the_token_mean_of_the_reference(loss_type, n_tokens):
    """Summed over tokens, divided by the step's token count (or this batch's): not a mean of row means."""
    values, mask = padded()
    got = token_loss(values, mask, loss_type=loss_type, num_items_in_batch=n_tokens)
    expected = token_loss_reference(LOG_PROBS, loss_type=loss_type, n_tokens=n_tokens)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    row_means = sum(token_loss_reference([r], loss_type=loss_type) for r in LOG_PROBS) / 3
    assert abs(token_loss_reference(LOG_PROBS, loss_type=loss_type) - row_means) > 0.02


def test_dft_gradient_has_the_probability_detached():
    """d/dlp of -lp * exp(lp).detach() is -exp(lp), not the gradient of -lp * exp(lp)."""
    values, mask = padded()
    values = torch.where(mask, values, torch.zeros(()))  # what the model path returns: 0 where ignored
    lp = values.clone().requires_grad_(True)
    token_loss(lp, mask, loss_type="dft", num_items_in_batch=1).backward()
    torch.testing.assert_close(lp.grad[mask], -values[mask].exp())
    assert (lp.grad[~mask] == 0).all()


def test_a_batch_without_response_tokens_is_zero_not_nan():
    assert token_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


def test_fixed_tau_gradient_is_poft_gradient_at_the_fixed_point_and_stays_put():
    """At r_theta = r_theta_0 the gradient is PoFT's; away from it PoFT's weight moves, the fixed one not."""
    r0, ref = torch.tensor([-2.0, -0.5, -3.0]), torch.tensor([-1.0, -1.5, -0.2])
    tau = poft_weight(r0, ref, beta=2.0, gamma=0.3)
    for shift, same in ((0.0, True), (1.5, False)):
        r = (r0 + shift).requires_grad_(True)
        fixed_tau_loss(r, tau).sum().backward()
        torch.testing.assert_close(r.grad, -tau)
        p = (r0 + shift).requires_grad_(True)
        poft_loss(p, ref, beta=2.0, gamma=0.3).sum().backward()
        assert torch.allclose(p.grad, r.grad, atol=1e-6) == same
    assert fixed_tau_loss(r0, tau).tolist() == pytest.approx((-tau * r0).tolist())
