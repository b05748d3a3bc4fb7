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

from collections.abc import Sequence

import numpy as np
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


def softcap(model: torch.nn.Module) -> float | None:
    """Gemma-2-style final logit soft-capping of a model (logits = cap * tanh(logits / cap)); None for most."""
    return getattr(model.config, "final_logit_softcapping", None)


def token_budget_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Group positions into batches, longest first, so that (batch size x longest length) <= batch_tokens.

    Sorting by length keeps padding small; longest first makes an out-of-memory show in the first batch.
    A sequence longer than the budget gets a batch of its own. Ties keep the input order (deterministic).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def full_logits_logprob_sum(
    model: torch.nn.Module, input_ids: Sequence[int], response_mask: Sequence[int]
) -> float:
    """Plain reference: one example, full logits, log_softmax, sum over response labels (tests, benchmark)."""
    ids = torch.tensor([list(input_ids)], device=model.device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, :-1].float()
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    mask = torch.tensor(list(response_mask)[1:], dtype=torch.bool, device=logits.device)
    return float(log_probs[mask].double().sum())


def batch_logprob_sums(
    model: torch.nn.Module,
    sequences: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    pad_id: int,
    chunk_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of response-token log-probs and their count for each (input_ids, response_mask) sequence.

    Right padding and no attention mask: in a causal model a token only attends to earlier positions, so
    padding placed after a sequence cannot change it, and its positions stay 0..len-1 (tested against an
    unpadded reference). This keeps attention on the plain causal fast path. The decoder runs once on
    the batch, the LM head only on positions whose next token is a response token.
    """
    device = model.device
    longest = max(len(ids) for ids, _ in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    response = torch.zeros((len(sequences), longest), dtype=torch.bool)
    for b, (ids, mask) in enumerate(sequences):
        input_ids[b, : len(ids)] = torch.from_numpy(ids.astype(np.int64))
        response[b, : len(ids)] = torch.from_numpy(mask.astype(bool))
    input_ids, response = input_ids.to(device), response.to(device)
    hidden = model.get_decoder()(input_ids=input_ids, use_cache=False)
    hidden = hidden.last_hidden_state[:, :-1]
    scored = response[:, 1:]
    rows = torch.arange(len(sequences), device=device)[:, None].expand_as(scored)[scored]
    head = model.get_output_embeddings()
    log_probs = chunked_token_log_probs(
        hidden[scored], head.weight, input_ids[:, 1:][scored], head.bias, softcap(model), chunk_size
    )
    sums = torch.zeros(len(sequences), dtype=torch.float64, device=device).index_add_(
        0, rows, log_probs.double()
    )
    return sums.cpu().numpy(), scored.sum(-1).cpu().numpy()
