"""Held-out evaluation of a target model: exact-match accuracy (greedy and sampled) and clean NLL.

- accuracy: greedy decoding, the answer must match exactly (after stripping whitespace);
- sampled_accuracy: one sample per prompt at temperature 1 (no top-k / top-p), a fixed generator seed;
  this is the metric that sees how much probability mass the model puts on wrong answers, which is what
  noisy data does to a model even when its most likely answer is still right;
- clean_nll: mean over prompts of the per-token negative log-likelihood of the clean reference answer
  (response tokens incl. end-of-turn, located by poft.chat exactly as in training), i.e. -r_theta.
Generation is batched with left padding; everything runs under torch.no_grad in eval mode.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..chat import ChatFormat
from ..loss import normalize_scores, sequence_logprob_sums
from .tasks import Example, is_correct


def _prompt_ids(chat: ChatFormat, example: Example) -> list[int]:
    tok = chat.tokenizer
    text = tok.apply_chat_template(example.messages()[:1], add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False).input_ids
    return [tok.bos_token_id, *ids] if chat.prepend_bos else ids


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@torch.no_grad()
def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    *,
    sample: bool = False,
    seed: int = 0,
    max_new_tokens: int = 16,
    batch_size: int = 256,
) -> list[str]:
    """One answer per example (greedy, or a temperature-1 sample), special tokens removed."""
    chat = ChatFormat.from_tokenizer(tokenizer, "target")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    answers: list[str] = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        ids, mask = _left_pad([_prompt_ids(chat, e) for e in batch], tokenizer.pad_token_id)
        kwargs = (
            {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
            if sample
            else {"do_sample": False}
        )
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **kwargs,
        )
        answers += tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    torch.random.set_rng_state(generator_state)
    return answers


@torch.no_grad()
def response_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict]],
    normalization: str = "token",
    batch_size: int = 256,
) -> torch.Tensor:
    """r_theta per conversation, float32 [N]: by default the mean log-prob of the response tokens
    (+ end-of-turn), normalised exactly as the trainer does (`poft.loss.normalize_scores`)."""
    chat = ChatFormat.from_tokenizer(tokenizer, "target")
    was_training = model.training
    model.eval()
    scores = []
    for start in range(0, len(conversations), batch_size):
        encoded = [chat.encode(m) for m in conversations[start : start + batch_size]]
        width = max(len(c.input_ids) for c in encoded)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([c.input_ids + [pad] * (width - len(c.input_ids)) for c in encoded])
        attn = torch.tensor([[1] * len(c.input_ids) + [0] * (width - len(c.input_ids)) for c in encoded])
        resp = torch.tensor([c.response_mask + [0] * (width - len(c.input_ids)) for c in encoded]).bool()
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
        target = resp[:, 1:]
        sums, counts = sequence_logprob_sums(logp, target)
        n_bytes = torch.tensor([c.response_bytes for c in encoded])
        scores.append(normalize_scores(sums, counts, normalization=normalization, response_bytes=n_bytes))
    model.train(was_training)
    return torch.cat(scores)


def clean_nll(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[Example]) -> float:
    """Mean over examples of the per-token NLL of the clean answer (response tokens + end-of-turn)."""
    return -response_scores(model, tokenizer, [e.messages() for e in examples]).mean().item()


def evaluate(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[Example], seed: int = 0
) -> dict[str, float]:
    """{"accuracy", "sampled_accuracy", "clean_nll"} on `examples`; the model is left in its prior mode."""
    was_training = model.training
    model.eval()
    greedy = generate_answers(model, tokenizer, examples)
    sampled = generate_answers(model, tokenizer, examples, sample=True, seed=seed)
    metrics = {
        "accuracy": sum(map(is_correct, examples, greedy)) / len(examples),
        "sampled_accuracy": sum(map(is_correct, examples, sampled)) / len(examples),
        "clean_nll": clean_nll(model, tokenizer, examples),
    }
    model.train(was_training)
    return metrics
