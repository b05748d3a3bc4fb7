"""The trainer's path (TRL's fused LM head) against the plain full-logits reference, on a tiny model."""

import pytest
import torch

from poft.logprobs import token_log_probs_reference

TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_trl_fused_head_matches_reference(tokenizers, dtype):
    """The trainer's path (TRL's fused LM head) gives the reference log-probs and gradients."""
    from trl.trainer.utils import add_fused_lm_head

    from poft.tiny import build_model

    model = build_model(tokenizers["chatml"], hidden_size=32, num_layers=2, seed=1).to(dtype)
    add_fused_lm_head(model, outputs=("log_probs",))
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, len(tokenizers["chatml"]), (3, 13), generator=g)
    labels = input_ids.clone()
    labels[:, :4] = -100
    labels[1, 7:9] = -100

    model.zero_grad()
    fused = model(input_ids=input_ids, labels=labels, fused_lm_head=True).log_probs
    fused.sum().backward()
    fused_grad = model.lm_head.weight.grad.float().clone()

    model.zero_grad()
    hidden = model.model(input_ids=input_ids).last_hidden_state[:, :-1]
    reference = token_log_probs_reference(hidden, model.lm_head.weight, labels[:, 1:])
    reference.sum().backward()
    tol = TOLERANCE[dtype]
    assert torch.allclose(fused.float(), reference, **tol)
    assert torch.allclose(fused_grad, model.lm_head.weight.grad.float(), **tol)


def test_batch_logprob_sums_equal_the_plain_reference_through_padding(tiny_model):
    """The scorer's batched path (right padding, decoder once, LM head on response positions only) against
    `full_logits_logprob_sum`, one unpadded example at a time."""
    import numpy as np
    from transformers import AutoModelForCausalLM

    from poft.logprobs import batch_logprob_sums, full_logits_logprob_sum

    model = AutoModelForCausalLM.from_pretrained(tiny_model("chatml", hidden_size=32)).eval()
    g = torch.Generator().manual_seed(0)
    sequences = []
    for length in (5, 17, 9, 30):
        ids = torch.randint(3, model.config.vocab_size, (length,), generator=g).numpy()
        mask = (torch.rand(length, generator=g) < 0.5).numpy().astype(np.uint8)
        sequences.append((ids, mask))
    with torch.inference_mode():
        sums, counts = batch_logprob_sums(model, sequences, pad_id=0, chunk_size=7)
    for (ids, mask), total, count in zip(sequences, sums, counts, strict=True):
        assert count == mask[1:].sum()
        assert total == pytest.approx(
            full_logits_logprob_sum(model, ids.tolist(), mask.tolist()), rel=1e-5, abs=1e-5
        )


def _gemma3(vocab: int):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=8, sliding_window=8,
                           final_logit_softcapping=5.0)  # fmt: skip
    torch.manual_seed(0)
    return Gemma3ForCausalLM(cfg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("padding_free", [False, True])
def test_trainer_chunked_path_matches_reference_and_fused_head(tokenizers, dtype, arch, padding_free):
    """Without a fused-head kernel (CPU), compute_loss's `response_log_probs` projects response positions
    only (chunked, checkpointed): the reference log-probs and gradients (every parameter), and TRL's fused
    head's values; padded rows and a padding-free packed row (position_ids) alike. No token metrics."""
    from trl.trainer.utils import add_fused_lm_head

    from poft.logprobs import response_log_probs, softcap
    from poft.tiny import build_model

    vocab = len(tokenizers["chatml"])
    model = (
        build_model(tokenizers["chatml"], hidden_size=32, num_layers=2, seed=1)
        if arch == "llama"
        else _gemma3(vocab)
    )
    model = model.to(dtype)
    add_fused_lm_head(model, outputs=("log_probs",))
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab, (3, 13), generator=g)
    labels = input_ids.clone()
    labels[:, :4] = -100
    labels[1, 7:9] = -100
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    if padding_free:  # one row: sequences of 13, 13, 13 tokens, positions restarting
        inputs = {"input_ids": input_ids.reshape(1, -1), "labels": labels.reshape(1, -1),
                  "position_ids": torch.arange(13).repeat(3)[None]}  # fmt: skip
        inputs["labels"][0, 13::13] = -100  # a sequence's first token is not predicted across the boundary

    def grads():
        return [p.grad.float().clone() for p in model.parameters() if p.grad is not None]

    model.zero_grad()
    ours = response_log_probs(model, dict(inputs))
    assert ours.is_top1 is None and ours.entropy is None  # asks for nothing it does not use
    (
        ours.log_probs * torch.linspace(0.5, 1.5, ours.log_probs.numel()).view_as(ours.log_probs)
    ).sum().backward()
    our_grads = grads()

    model.zero_grad()
    features = {k: v for k, v in inputs.items() if k != "labels"} | {
        "use_cache": False
    }  # a cache leaks packing
    hidden = model.model(**features).last_hidden_state[:, :-1]
    reference = token_log_probs_reference(
        hidden, model.lm_head.weight, inputs["labels"][:, 1:], softcap=softcap(model)
    )
    (reference * torch.linspace(0.5, 1.5, reference.numel()).view_as(reference)).sum().backward()
    tol = TOLERANCE[dtype]
    assert torch.equal(ours.label_mask, inputs["labels"][:, 1:] != -100)
    assert torch.allclose(ours.log_probs.float(), reference.float(), **tol)
    assert len(our_grads) == len(grads())
    for a, b in zip(our_grads, grads(), strict=True):
        if dtype == torch.float32:
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
        else:
            assert (a - b).norm() <= 3e-2 * b.norm() + 1e-6

    with torch.no_grad():
        fused = model(**inputs, fused_lm_head=True).log_probs
    assert torch.allclose(ours.log_probs.detach().float(), fused.float(), **tol)
