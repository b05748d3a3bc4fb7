"""Per-token log-probabilities of the labels without materialising [tokens x vocab] logits.

With a 128k vocabulary, full fp32 logits cost 0.5 MB per token: 2 GB for a 4k-token batch, kept for the
backward pass, plus a log-softmax copy. The official PoFT code does exactly that. Here the LM head is
applied to `chunk_size` positions at a time; with gradients, each chunk is recomputed in the backward
pass (activation checkpointing), so at most one chunk of logits is alive at any moment.

Training uses TRL's fused LM head (`model(..., fused_lm_head=True)`) where it has a kernel (Triton);
`chunked_token_log_probs` serves the scorer and training everywhere else (`response_log_probs`: TRL's
CPU fallback projects every position), and `token_log_probs_reference` is the plain formula the tests
compare both against. The scorer packs each batch into one row (`packed_logprob_sums`), so its compute
follows the real tokens, not padding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

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


# The packed-scoring scheme, recorded in a bf16/fp16 scoring run's identity (with the budget), where scores
# depend slightly on which rows share a batch and on the kernels: a build whose scheme differs (how rows are
# grouped, packed or attended) must name another one, so that it refuses to resume such a run.
PACKING = "padding-free, small runs in 20 batches of >= 512 tokens"
MIN_BATCHES = 20
MIN_BATCH_TOKENS = 512


def batch_budget(lengths: Sequence[int], batch_tokens: int) -> int:
    """The token budget of one packed batch of these rows: `batch_tokens`, lowered to 1/MIN_BATCHES of their
    tokens but not under MIN_BATCH_TOKENS. Progress moves per batch, and a small run that fits one or two
    full batches would show nothing until it ends; now a run of MIN_BATCHES x MIN_BATCH_TOKENS tokens or more
    makes at least MIN_BATCHES batches unless some rows are longer than the budget (a row alone). Smaller
    batches would cost more than they show: SmolLM2 on 2 shared CPU threads scored 24 rows (~2k tokens) in
    batches of ~100 tokens ~30 % slower than in one batch, in batches of 512 about as fast. Runs of MIN_BATCHES x
    `batch_tokens` tokens or more keep the full budget. The budget depends on the lengths of all the rows a
    process scores (finished ones included), so a resume re-forms the same batches."""
    return min(batch_tokens, max(MIN_BATCH_TOKENS, sum(lengths) // MIN_BATCHES))


def packed_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Group positions into packed batches, longest first, of at most `batch_tokens` real tokens each
    (nothing is padded); a sequence longer than the budget gets a batch of its own. Deterministic. This is
    the plain reference of `iter_packed_batches`, which forms the same batches lazily."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    total = 0
    for i in order:
        if batches and total + lengths[i] <= batch_tokens:
            batches[-1].append(i)
            total += lengths[i]
        else:
            batches.append([i])
            total = lengths[i]
    return batches


def iter_packed_batches(lengths: np.ndarray, batch_tokens: int) -> Iterator[np.ndarray]:
    """`packed_batches`, one batch at a time as an int64 array of positions: memory is the length order
    (8 bytes a row), not a Python list of every batch."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.lexsort((np.arange(len(lengths)), -lengths))  # longest first, ties by position
    start, total = 0, 0
    for k, n in enumerate(lengths[order].tolist()):
        if k > start and total + n > batch_tokens:
            yield order[start:k]
            start, total = k, 0
        total += n
    if start < len(order):
        yield order[start:]


def scoring_chunk_size(vocab: int) -> int:
    """Response positions per chunk of the LM head when scoring: <= 256 MiB of fp32 logits per chunk."""
    return max(1, (1 << 26) // vocab)


def default_batch_tokens(device: torch.device, dtype: torch.dtype) -> int:
    """Packed tokens per batch when none is given. Packing pads nothing, so a larger pack only means fewer,
    larger calls: on CPU 8192 (faster than 2048 and 512 on SmolLM2 fp32, BENCHMARKS.md; the attention runs
    per sequence and the LM head in chunks, so memory stays small). On a GPU large packs fill the device:
    16384 (32768 in 16-bit; not measured on GPU)."""
    if device.type == "cpu":
        return 8192
    return 32768 if dtype in (torch.bfloat16, torch.float16) else 16384


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


def packed_logprob_sums(
    model: torch.nn.Module,
    sequences: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    chunk_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """`batch_logprob_sums` without padding: the batch's sequences packed into one row.

    `position_ids` restart at 0 for each sequence, so every token keeps the position it has alone. With
    sdpa (the default) the attention runs per sequence (`varlen_sdpa_attention`: causal, no mask, compute
    follows the real tokens, not tokens^2 of the whole row); with flash-attention transformers reads the
    packing off `position_ids` (varlen kernels), with eager (e.g. Gemma-2's soft-capped attention) it builds
    a block-diagonal mask. A token is scored when it is a response token and not the first of its sequence
    (nothing in its sequence predicts it). Same values as the padded path and the one-example reference
    (tested).
    """
    device = model.device
    lengths = [len(ids) for ids, _ in sequences]
    input_ids = torch.from_numpy(np.concatenate([ids for ids, _ in sequences]).astype(np.int64))
    response = torch.from_numpy(np.concatenate([mask for _, mask in sequences]).astype(bool))
    position_ids = torch.cat([torch.arange(n) for n in lengths])
    input_ids, response, position_ids = input_ids.to(device), response.to(device), position_ids.to(device)
    kwargs = _packing_kwargs(model, lengths, position_ids)
    with _attention(model, VARLEN_SDPA if "cu_seq_lens_q" in kwargs else None):
        hidden = model.get_decoder()(input_ids=input_ids[None], use_cache=False, **kwargs)
    hidden = hidden.last_hidden_state[0, :-1]
    scored = response[1:] & (position_ids[1:] != 0)
    sequence_of = torch.repeat_interleave(
        torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device)
    )
    rows = sequence_of[1:][scored]
    head = model.get_output_embeddings()
    log_probs = chunked_token_log_probs(
        hidden[scored], head.weight, input_ids[1:][scored], head.bias, softcap(model), chunk_size
    )
    sums = torch.zeros(len(lengths), dtype=torch.float64, device=device).index_add_(
        0, rows, log_probs.double()
    )
    counts = torch.zeros(len(lengths), dtype=torch.int64, device=device).index_add_(
        0, rows, torch.ones_like(rows)
    )
    return sums.cpu().numpy(), counts.cpu().numpy()


def _packing_kwargs(model: torch.nn.Module, lengths: list[int], position_ids: torch.Tensor) -> dict:
    """What the decoder needs to keep packed sequences apart: positions restarting at 0, and under sdpa the
    sequence bounds `varlen_sdpa_attention` reads. One sequence needs nothing."""
    if len(lengths) < 2:
        return {}
    kwargs = {"position_ids": position_ids[None]}
    if model.config._attn_implementation == "sdpa":
        bounds = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
        kwargs.update(cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=max(lengths))
        kwargs["max_length_k"] = max(lengths)
    return kwargs


VARLEN_SDPA = "poft_varlen_sdpa"


def varlen_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    cu_seq_lens_q: torch.Tensor,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention of one packed row [1, heads, tokens, dim], sequence by sequence (`cu_seq_lens_q` bounds):
    what varlen flash-attention does, with torch's sdpa. The block-diagonal mask transformers builds for
    sdpa instead costs tokens^2 for the whole row; here each sequence costs its own length^2, causal with no
    mask (the fast path). Sliding-window layers (`sliding_window`) mask sequences longer than the window, as
    transformers does: a query sees the keys less than `sliding_window` positions back."""
    if kwargs.get("softcap") is not None:
        raise ValueError("attention soft-capping is not supported by the packed CPU attention")
    window = kwargs.get("sliding_window")  # what the layer passes every attention function (None: full)
    bounds = cu_seq_lens_q.tolist()
    pieces = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
        mask = None
        if window is not None and end - start > window:
            i = torch.arange(end - start, device=query.device)
            mask = (i[None] <= i[:, None]) & (i[:, None] - i[None] < window)
        gqa = q.shape[1] != k.shape[1]
        piece = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=scaling, enable_gqa=gqa, dropout_p=dropout
        )
        pieces.append(piece)
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


@contextmanager
def _attention(model: torch.nn.Module, implementation: str | None):
    """Run `model` with attention `implementation` (registered with transformers on first use), then
    restore its own; None leaves it unchanged."""
    if implementation is None:
        yield
        return
    from transformers import AttentionInterface

    # a name transformers has no mask function for: it builds no mask (the attention reads the bounds)
    AttentionInterface.register(implementation, varlen_sdpa_attention)
    own = model.config._attn_implementation
    model.config._attn_implementation = implementation
    try:
        yield
    finally:
        model.config._attn_implementation = own


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


@dataclass
class ResponseLogProbs:
    """What compute_loss reads of a forward: per-token log-probs of the labels [B, T-1] (0 where the label
    is -100) and the label mask; token accuracy and entropy only where TRL's fused kernel computes them."""

    log_probs: torch.Tensor
    label_mask: torch.Tensor
    is_top1: torch.Tensor | None = None
    entropy: torch.Tensor | None = None


def response_log_probs(model: torch.nn.Module, inputs: dict) -> ResponseLogProbs:
    """Per-token log-probs of the response labels, with gradients, without [tokens x vocab] logits kept.

    Where TRL's fused LM head has a kernel (Triton on CUDA / XPU), it is used (`fused_lm_head=True`).
    Elsewhere (CPU, GPUs without Triton) its fallback would project every position and compute entropy
    and top-1 in full tiles; instead the model runs with no logits (`logits_to_keep` empty: its own forward,
    so DDP / PEFT wrappers stay in the path), and `logprobs.chunked_token_log_probs` projects only the
    response positions, a checkpointed chunk at a time (same values and gradients, tested). Models that
    scale their logits after the head (TRL's fused head knows those) keep the fused head.
    """
    from accelerate.utils import extract_model_from_parallel
    from trl.kernels.chunked_logprob import _use_triton

    device = inputs["input_ids"].device
    inner = extract_model_from_parallel(model)  # DDP / DeepSpeed wrappers hold the model; calls go to `model`
    head = inner.get_output_embeddings()
    if _use_triton(device) or _scales_logits(inner.config):
        outputs = model(**inputs, fused_lm_head=True)
        return ResponseLogProbs(outputs.log_probs, outputs.label_mask, outputs.is_top1, outputs.entropy)
    features = {k: v for k, v in inputs.items() if k != "labels"}
    features["use_cache"] = False  # a cache turns off transformers' packed-sequence isolation
    empty = torch.empty(0, dtype=torch.long, device=device)
    hidden = model(**features, logits_to_keep=empty, output_hidden_states=True).hidden_states[-1]
    labels = inputs["labels"][:, 1:].to(head.weight.device)
    chunk_size = max(1, (1 << 25) // head.weight.shape[0])  # <= 128 MiB of fp32 logits per chunk
    hidden = hidden[:, :-1].to(head.weight.device)
    log_probs = chunked_token_log_probs(hidden, head.weight, labels, head.bias, softcap(inner), chunk_size)
    return ResponseLogProbs(log_probs, labels != -100)


def _scales_logits(config) -> bool:
    """Whether a model multiplies its logits after the head (the attributes TRL's fused head reads)."""
    text = config.get_text_config()
    scales = ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
    return any(getattr(text, name, None) not in (None, 1, 1.0) for name in scales)
