"""The PoFT objective as pure tensor functions.

PoFT (arXiv 2412.12865) trains a target model to be *preferred* over frozen aligned models on each SFT
example, with a Bradley-Terry loss on length-normalised log-likelihoods:

    r(x, y)   = log p(y | x) / |y|                     (mean log-prob of the response tokens)
    r_ref     = mean over aligned models m of r_m       (precomputed offline, see `poft score`)
    L         = -log sigmoid( z * beta * (r_theta - r_ref) + gamma )

z is +1 for PoFT and the example's direction (+1 desirable / -1 undesirable) for bi-PoFT.
Its gradient is the length-normalised cross-entropy weighted per example by

    tau = beta * sigmoid( -(z * beta * (r_theta - r_ref) + gamma) )      (detached, in (0, beta))

which is why PoFT acts as a soft data-quality filter. `bi_poft_loss` adds the bounded forms of bi-PoFT
(a soft Bradley-Terry target or a margin on undesirable rows, and a weight for them; docs/method.md), with
a plain-Python reference `bi_poft_loss_reference` beside it. Everything here is computed in float32 and is
finite for any finite input: `logsigmoid` is used, never `log(sigmoid(x))` (the official code's bug).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from .configs import BI_POFT_VARIANTS, NORMALIZATIONS  # choices are typed once, where --help reads them

Normalization = Literal["token", "byte", "none"]


def direction_sign(direction: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Map a direction tensor (bool: True = desirable, or +-1 numbers) to float32 +-1 shaped like `like`.

    None means every example is desirable (+1). Numbers other than +1/-1 are rejected rather than
    silently scaling the margin.
    """
    if direction is None:
        return torch.ones_like(like, dtype=torch.float32)
    if direction.dtype == torch.bool:
        return direction.to(like.device, torch.float32) * 2.0 - 1.0
    z = direction.to(like.device, torch.float32)
    if not bool(((z == 1.0) | (z == -1.0)).all()):
        raise ValueError(f"direction must be boolean or +1/-1, got values {torch.unique(z).tolist()}")
    return z


def poft_margin(
    policy_scores: torch.Tensor,
    ref_scores: torch.Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 0.0,
    direction: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Bradley-Terry logit `z * beta * (r_theta - r_ref) + gamma`, per example, float32. Shapes [B]."""
    policy = policy_scores.float()
    ref = ref_scores.to(policy.device, torch.float32)
    z = direction_sign(direction, policy)
    return z * beta * (policy - ref) + gamma


def poft_loss(
    policy_scores: torch.Tensor,
    ref_scores: torch.Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 0.0,
    direction: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-example PoFT loss `-logsigmoid(z * beta * (r_theta - r_ref) + gamma)`, no reduction.

    Args:
        policy_scores: r_theta, the target model's normalised score per example, shape [B] (any float dtype;
            the loss is computed in float32 and keeps the graph to `policy_scores`).
        ref_scores: r_ref, the aligned models' mean normalised score per example, shape [B] (no gradient).
        beta: scale of the margin (paper: 1).
        gamma: offset of the margin (paper: 0).
        direction: bi-PoFT direction per example, boolean (True = desirable) or +-1; None = all +1 (PoFT).

    Returns:
        float32 tensor [B]; finite for any finite input.
    """
    return -F.logsigmoid(poft_margin(policy_scores, ref_scores, beta=beta, gamma=gamma, direction=direction))


def poft_weight(
    policy_scores: torch.Tensor,
    ref_scores: torch.Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 0.0,
    direction: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-example weight tau = beta * sigmoid(-margin) on the normalised CE, detached, shape [B].

    d loss / d r_theta = -z * tau, so tau is how hard each example pulls on the model.
    """
    with torch.no_grad():
        margin = poft_margin(policy_scores, ref_scores, beta=beta, gamma=gamma, direction=direction)
        return beta * torch.sigmoid(-margin)


def bi_poft_loss(
    policy_scores: torch.Tensor,
    ref_scores: torch.Tensor,
    desirable: torch.Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 0.0,
    variant: str = "margin",
    undesirable_target: float = 0.1,
    undesirable_margin: float = 2.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """Per-example bi-PoFT loss, no reduction: PoFT on desirable rows, a push down on undesirable ones.

    With m = beta * (r_theta - r_ref) + gamma, desirable rows (True / +1) get PoFT's `-logsigmoid(m)`;
    undesirable rows (False / -1) get `undesirable_weight` times:
    - "signed": `-logsigmoid(-beta * (r_theta - r_ref) + gamma)`, the original definition (`poft_loss` with
      a direction). It pushes with weight beta * sigmoid(m) until the row is far below the aligned models.
    - "soft": the Bradley-Terry loss with a soft target P = `undesirable_target` in (0, 0.5]:
      `-[P logsigmoid(m) + (1 - P) logsigmoid(-m)]`. Its gradient beta * (sigmoid(m) - P) vanishes at
      m = logit(P): the push stops once r_theta is (gamma - logit(P)) / beta below r_ref, and a row already
      lower is pulled back up with weight at most beta * P. P -> 0 is "signed" with gamma -> -gamma.
    - "margin": `-logsigmoid(-max(m, -undesirable_margin))`: "signed"'s push (weight beta * sigmoid(m))
      until m reaches -undesirable_margin, then nothing (the loss is flat there, never pulled up).

    Shapes [B]; `desirable` is boolean or +-1 (see `direction_sign`). float32, finite for finite input.
    """
    if variant not in BI_POFT_VARIANTS:
        raise ValueError(f"variant must be one of {BI_POFT_VARIANTS}, got {variant!r}")
    if variant == "soft" and not 0.0 < undesirable_target <= 0.5:
        raise ValueError(f"undesirable_target must be in (0, 0.5], got {undesirable_target}")
    if variant == "margin" and undesirable_margin < 0:
        raise ValueError(f"undesirable_margin must be >= 0, got {undesirable_margin}")
    if undesirable_weight < 0:
        raise ValueError(f"undesirable_weight must be >= 0, got {undesirable_weight}")
    z = direction_sign(desirable, policy_scores)
    m = poft_margin(policy_scores, ref_scores, beta=beta, gamma=gamma)
    if variant == "signed":
        push = -F.logsigmoid(-beta * (policy_scores.float() - ref_scores.to(m.device, torch.float32)) + gamma)
    elif variant == "soft":
        p = undesirable_target
        push = -(p * F.logsigmoid(m) + (1.0 - p) * F.logsigmoid(-m))
    else:
        floor = torch.full_like(m, -undesirable_margin)
        push = -F.logsigmoid(-torch.where(m > floor, m, floor))  # no gradient at or below the margin
    return torch.where(z > 0, -F.logsigmoid(m), undesirable_weight * push)


def bi_poft_weight(
    policy_scores: torch.Tensor,
    ref_scores: torch.Tensor,
    desirable: torch.Tensor,
    **options,
) -> torch.Tensor:
    """-d bi_poft_loss / d r_theta per example, detached, shape [B]: the (signed) weight on the normalised CE.

    Positive = the row is pulled up (trained on), negative = pushed down; PoFT's tau on desirable rows.
    Takes `bi_poft_loss`'s keyword options.
    """
    policy = policy_scores.detach().float().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = bi_poft_loss(policy, ref_scores.detach(), desirable, **options)
        (grad,) = torch.autograd.grad(loss.sum(), policy)
    return -grad


def bi_poft_loss_reference(
    policy: list[float],
    ref: list[float],
    desirable: list[bool],
    *,
    beta: float = 1.0,
    gamma: float = 0.0,
    variant: str = "margin",
    undesirable_target: float = 0.1,
    undesirable_margin: float = 2.0,
    undesirable_weight: float = 1.0,
) -> list[float]:
    """Plain-Python reference of `bi_poft_loss`, row by row (for the tests; exact formulas, no tensors)."""

    def softplus(x: float) -> float:  # -log sigmoid(-x), stable
        return max(x, 0.0) + math.log1p(math.exp(-abs(x)))

    out = []
    for r, q, good in zip(policy, ref, desirable, strict=True):
        m = beta * (r - q) + gamma
        if good:
            out.append(softplus(-m))
            continue
        if variant == "signed":
            loss = softplus(beta * (r - q) - gamma)
        elif variant == "soft":
            p = undesirable_target
            loss = p * softplus(-m) + (1 - p) * softplus(m)
        else:
            loss = softplus(max(m, -undesirable_margin))
        out.append(undesirable_weight * loss)
    return out


def sequence_logprob_sums(
    token_log_probs: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum of the masked token log-probs and the count of masked tokens.

    Args:
        token_log_probs: [B, T] log-probability of each next-token label (any float dtype).
        mask: [B, T] bool/0-1, True where the token is a response token that counts.

    Returns:
        (sums float32 [B], counts int64 [B]). Masked-out positions contribute nothing even if they hold
        garbage (NaN/inf are not multiplied through: they are selected away).
    """
    mask = mask.bool()
    sums = torch.where(mask, token_log_probs.float(), torch.zeros((), device=token_log_probs.device)).sum(-1)
    return sums, mask.sum(-1)


def packed_sequence_logprob_sums(
    token_log_probs: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor, n_sequences: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sequence_logprob_sums` for one padding-free row holding several sequences back to back.

    Args:
        token_log_probs: [T-1] log-prob of token t+1 given tokens <= t (TRL's fused head on a packed row).
        mask: [T-1] bool/0-1, True where token t+1 is a response token.
        position_ids: [T]; a sequence starts wherever it is 0 (padding tokens, at the end, each start one).
        n_sequences: how many real sequences the row holds (the first n segments).

    Returns:
        (sums float32 [n], counts int64 [n]), equal to `sequence_logprob_sums` on the unpacked sequences.
    """
    segment = (position_ids == 0).cumsum(0) - 1  # segment index of every token
    label_segment = segment[1:]  # log-prob t scores token t+1, which belongs to segment[t+1]
    n_segments = int(segment[-1]) + 1
    mask = mask.bool()
    values = torch.where(mask, token_log_probs.float(), torch.zeros((), device=token_log_probs.device))
    sums = values.new_zeros(n_segments).index_add(0, label_segment, values)
    counts = torch.zeros(n_segments, dtype=torch.long, device=mask.device).index_add(
        0, label_segment, mask.long()
    )
    return sums[:n_sequences], counts[:n_sequences]


def normalize_scores(
    logp_sums: torch.Tensor,
    n_tokens: torch.Tensor,
    *,
    normalization: Normalization = "token",
    response_bytes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Turn per-sequence log-prob sums into preference scores r, float32 [B].

    - "token": sum / number of response tokens (the paper's r = log p(y|x) / T(y)).
    - "byte":  sum / UTF-8 bytes of the assistant contents; the same denominator for every tokenizer,
               so aligned models with different vocabularies are compared on equal terms.
    - "none":  the plain sum log p(y|x).
    Denominators are clamped at 1 so an empty response gives 0, never NaN (such rows are dropped upstream).
    """
    sums = logp_sums.float()
    if normalization == "token":
        return sums / n_tokens.to(sums.device, torch.float32).clamp(min=1.0)
    if normalization == "byte":
        if response_bytes is None:
            raise ValueError("normalization='byte' needs response_bytes")
        return sums / response_bytes.to(sums.device, torch.float32).clamp(min=1.0)
    if normalization == "none":
        return sums
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def token_loss(
    log_probs: torch.Tensor,
    label_mask: torch.Tensor,
    *,
    loss_type: str = "nll",
    num_items_in_batch: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """SFT's token loss as TRL's SFTTrainer computes it, from per-token log-probs of the labels: a scalar.

    Each response token's loss is -log p (`loss_type` 'nll') or -log p * p with p detached ('dft', Dynamic
    Fine-Tuning, arXiv 2508.05629); their sum is divided by `num_items_in_batch`, the response tokens of the
    whole optimizer step (every micro-batch of the accumulation, every process when TRL's
    `average_tokens_across_devices`), or, when it is None (evaluation), by this batch's response tokens;
    clamped at 1, so a batch without response tokens gives 0. Token-weighted: a long answer counts more
    than a short one (unlike PoFT's per-example mean). The caller multiplies by the number of processes
    where TRL does (DDP averages the gradients).

    Args:
        log_probs: [B, T] log-prob of each label, 0 where the label is ignored (what TRL's fused head and
            `logprobs.response_log_probs` return).
        label_mask: [B, T] bool, True on response labels.
    """
    mask = label_mask.bool()
    log_probs = torch.where(mask, log_probs, torch.zeros((), dtype=log_probs.dtype, device=log_probs.device))
    per_token = -log_probs
    if loss_type == "dft":
        per_token = per_token * log_probs.exp().detach()
    count = mask.sum() if num_items_in_batch is None else num_items_in_batch
    return per_token.sum() / torch.as_tensor(count, device=per_token.device).clamp(min=1)


def token_loss_reference(
    token_log_probs: list[list[float]], *, loss_type: str = "nll", n_tokens: int | None = None
) -> float:
    """Plain-Python reference of `token_loss`: the response tokens' log-probs of each sequence (lists), the
    loss summed over every token and divided by `n_tokens` (default: their number)."""
    total, count = 0.0, 0
    for sequence in token_log_probs:
        for lp in sequence:
            total += -lp * (math.exp(lp) if loss_type == "dft" else 1.0)
            count += 1
    return total / max(n_tokens if n_tokens is not None else count, 1)


def fixed_tau_loss(policy_scores: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Per-example loss of PoFT with tau fixed: `-tau * r_theta`, no reduction, float32 [B].

    `tau` is a constant per row (computed once, `poft_weight` of the model as training starts), so the
    gradient is PoFT's, tau times the length-normalised cross-entropy's, with a weight that no longer moves
    as the model learns the row: what is left of PoFT when its dynamic weighting is taken away."""
    return -tau.detach().to(policy_scores.device, torch.float32) * policy_scores.float()
