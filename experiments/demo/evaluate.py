"""Held-out evaluation of a target model: exact-match accuracy (greedy and sampled) and clean NLL.

- accuracy: greedy decoding, the answer must match exactly (after stripping whitespace);
- sampled_accuracy: one sample per prompt at temperature 1 (no top-k / top-p), a fixed generator seed;
  this is the metric that sees how much probability mass the model puts on wrong answers, which is what
  noisy data does to a model even when its most likely answer is still right;
- clean_nll: mean over prompts of the per-token negative log-likelihood of the clean reference answer
  (response tokens incl. end-of-turn, located by poft.chat exactly as in training), i.e. -r_theta,
  computed by the library's scorer path (`poft.logprobs.batch_logprob_sums`, `poft.loss.normalize_scores`).
Conversations are encoded once (`HeldOut`, `encode_all`) and reused every epoch: rendering chat templates
row by row costs more than the forward passes of these tiny models. Generation is batched, left-padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from poft.chat import ChatFormat, TokenizedChat
from poft.logprobs import batch_logprob_sums, token_budget_batches
from poft.loss import normalize_scores

from .tasks import Example, is_correct


def encode_all(tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict]]) -> list[TokenizedChat]:
    """Token ids + response masks under the tokenizer's chat template, as the trainer builds them."""
    chat = ChatFormat.from_tokenizer(tokenizer, "target")
    return [chat.encode(messages) for messages in conversations]


@dataclass(frozen=True)
class HeldOut:
    """Test prompts prepared for one tokenizer: generation prompts and the encoded clean conversations."""

    examples: list[Example]
    prompt_ids: list[list[int]]
    clean: list[TokenizedChat]

    @classmethod
    def build(cls, tokenizer: PreTrainedTokenizerBase, examples: list[Example]) -> HeldOut:
        chat = ChatFormat.from_tokenizer(tokenizer, "target")
        prompts = []
        for example in examples:
            text = tokenizer.apply_chat_template(
                example.messages()[:1], add_generation_prompt=True, tokenize=False
            )
            ids = tokenizer(text, add_special_tokens=False).input_ids
            prompts.append([tokenizer.bos_token_id, *ids] if chat.prepend_bos else ids)
        return cls(examples, prompts, encode_all(tokenizer, [e.messages() for e in examples]))


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@torch.no_grad()
def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    *,
    sample: bool = False,
    seed: int = 0,
    max_new_tokens: int = 16,
    batch_size: int = 256,
) -> list[str]:
    """One answer per prompt (greedy, or a temperature-1 sample), special tokens removed."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    options = (
        {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0} if sample else {"do_sample": False}
    )
    answers: list[str] = []
    for start in range(0, len(prompt_ids), batch_size):
        ids, mask = _left_pad(prompt_ids[start : start + batch_size], tokenizer.pad_token_id)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **options,
        )
        answers += tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    torch.random.set_rng_state(generator_state)
    return answers


@torch.no_grad()
def response_scores(
    model: PreTrainedModel,
    encoded: list[TokenizedChat],
    pad_id: int,
    normalization: str = "token",
    batch_tokens: int = 16384,
) -> torch.Tensor:
    """r_theta per conversation, float32 [N]: by default the mean log-prob of the response tokens (+ end-of-turn).

    The sums come from the path `poft score` uses (`batch_logprob_sums` over token-budget batches: the
    decoder once, the LM head on response positions only), normalised as the trainer does (`normalize_scores`).
    """
    was_training = model.training
    model.eval()
    sequences = [(np.asarray(c.input_ids), np.asarray(c.response_mask)) for c in encoded]
    sums, counts = np.zeros(len(encoded)), np.zeros(len(encoded), dtype=np.int64)
    for batch in token_budget_batches([len(ids) for ids, _ in sequences], batch_tokens):
        sums[batch], counts[batch] = batch_logprob_sums(
            model, [sequences[i] for i in batch], pad_id=pad_id, chunk_size=4096
        )  # chunk_size: positions per LM-head call; with ~500-token vocabularies one chunk holds a batch
    model.train(was_training)
    n_bytes = torch.tensor([c.response_bytes for c in encoded])
    return normalize_scores(
        torch.from_numpy(sums), torch.from_numpy(counts), normalization=normalization, response_bytes=n_bytes
    )


def evaluate(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, held_out: HeldOut, seed: int = 0
) -> dict[str, float]:
    """{"accuracy", "sampled_accuracy", "clean_nll"} on the held-out prompts; restores the model's mode."""
    was_training = model.training
    model.eval()
    greedy = generate_answers(model, tokenizer, held_out.prompt_ids)
    sampled = generate_answers(model, tokenizer, held_out.prompt_ids, sample=True, seed=seed)
    examples = held_out.examples
    metrics = {
        "accuracy": sum(map(is_correct, examples, greedy)) / len(examples),
        "sampled_accuracy": sum(map(is_correct, examples, sampled)) / len(examples),
        "clean_nll": -response_scores(model, held_out.clean, tokenizer.pad_token_id).mean().item(),
    }
    model.train(was_training)
    return metrics
