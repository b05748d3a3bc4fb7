"""Per-token log-probabilities of the labels without materialising [tokens x vocab] logits.

With a 128k vocabulary, full fp32 logits cost 0.5 MB per token: 2 GB for a 4k-token batch, kept for the
backward pass, plus a log-softmax copy. The official PoFT code does exactly that. Here the LM head is
applied to `chunk_size` positions at a time; with gradients, each chunk is recomputed in the backward
pass (activation checkpointing), so at most one chunk of logits is alive at any moment.

Training uses TRL's fused LM head (`model(..., fused_lm_head=True)`), which does the same in tiles;
`chunked_token_log_probs` serves the paths where that head is not available (the scorer, custom models),
and `token_log_probs_reference` is the plain formula the tests compare both against.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def _logits(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None
) -> torch.Tensor:
    """float32 logits of the LM head, with Gemma-2-style soft-capping when `softcap` is set."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def _head_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None,
    softcap: float | None,
) -> torch.Tensor:
    """log softmax(hidden @ weight.T + bias)[label], float32; labels must be valid (>= 0)."""
    logits = _logits(hidden, weight, bias, softcap)
    return logits.gather(-1, labels[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_log_probs_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Plain reference: full logits, log_softmax, gather. hidden [..., H], labels [...] -> float32 [...].

    Positions whose label is -100 get 0.
    """
    log_probs = torch.log_softmax(_logits(hidden, weight, bias, softcap), dim=-1)
    valid = labels != IGNORE_INDEX
    picked = log_probs.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return torch.where(valid, picked, torch.zeros((), device=picked.device))


def chunked_token_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Same values and gradients as `token_log_probs_reference`, with at most chunk_size x vocab logits alive.

    Only positions with a label != -100 are projected (prompt tokens cost nothing); the others get 0.
    """
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1)
    valid = flat_labels != IGNORE_INDEX
    rows = valid.nonzero().squeeze(-1)
    selected, targets = flat_hidden[rows], flat_labels[rows]
    needs_grad = torch.is_grad_enabled() and (selected.requires_grad or weight.requires_grad)
    pieces = []
    for start in range(0, len(rows), chunk_size):
        args = (
            selected[start : start + chunk_size],
            weight,
            targets[start : start + chunk_size],
            bias,
            softcap,
        )
        if needs_grad:
            pieces.append(checkpoint(_head_log_probs, *args, use_reentrant=False))
        else:
            pieces.append(_head_log_probs(*args))
    out = torch.zeros(flat_labels.shape, dtype=torch.float32, device=hidden.device)
    if pieces:
        out = out.index_put((rows,), torch.cat(pieces))
    elif needs_grad:  # keep a graph so a batch without labels backpropagates zeros instead of failing
        anchor = flat_hidden.sum() + weight.sum() + (bias.sum() if bias is not None else 0.0)
        out = out + anchor * 0.0
    return out.reshape(labels.shape)
