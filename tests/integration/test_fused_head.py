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
