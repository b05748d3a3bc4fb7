"""The scorer's padding-free path (a batch packed into one row, positions restarting per sequence) against
the padded path and the plain one-example reference `full_logits_logprob_sum`, fp32, 1e-5 relative.

Models: a tiny Llama with grouped-query attention, and a tiny Gemma-3 text model whose sliding-window
layers (window 8) see sequences longer than the window: the per-sequence CPU attention must mask them as
the model does alone. Both the CPU attention (`varlen_sdpa_attention`) and transformers' own packed-sequence
mask (what a GPU without flash-attention uses) are checked."""

import numpy as np
import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from poft.logprobs import batch_logprob_sums, full_logits_logprob_sum, packed_logprob_sums

pytestmark = pytest.mark.usefixtures("one_thread")
LENGTHS = (5, 17, 1, 9, 30, 2, 12)


def llama() -> torch.nn.Module:
    cfg = LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def gemma3() -> torch.nn.Module:
    cfg = Gemma3TextConfig(vocab_size=103, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=8, sliding_window=8,
                           layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                           max_position_embeddings=64, final_logit_softcapping=5.0)  # fmt: skip
    torch.manual_seed(0)
    return Gemma3ForCausalLM(cfg).eval()


def sequences(vocab: int, lengths=LENGTHS, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for length in lengths:
        ids = torch.randint(3, vocab, (length,), generator=g).numpy()
        mask = (torch.rand(length, generator=g) < 0.6).numpy().astype(np.uint8)
        mask[0] = 1  # a response flag on a sequence's first token must not score it (or leak across)
        out.append((ids, mask))
    return out


@pytest.mark.parametrize("build", [llama, gemma3])
def test_packed_equals_padded_and_reference(build):
    model = build()
    rows = sequences(model.config.vocab_size)
    with torch.inference_mode():
        packed, packed_counts = packed_logprob_sums(model, rows, chunk_size=7)
        padded, padded_counts = batch_logprob_sums(model, rows, pad_id=0, chunk_size=5)
    for (ids, mask), total, count, pad_total, pad_count in zip(
        rows, packed, packed_counts, padded, padded_counts, strict=True
    ):
        assert count == pad_count == mask[1:].sum()
        reference = full_logits_logprob_sum(model, ids.tolist(), mask.tolist())
        assert total == pytest.approx(reference, rel=1e-5, abs=1e-5)
        assert total == pytest.approx(pad_total, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("build", [llama, gemma3])
def test_transformers_packed_mask_gives_the_same_hidden_states(build):
    """Off CPU, transformers itself isolates the packed sequences (block-diagonal mask from position_ids):
    the CPU attention and that mask agree on the whole packed row."""
    from poft.logprobs import VARLEN_SDPA, _attention

    model = build()
    rows = sequences(model.config.vocab_size, seed=1)
    lengths = [len(ids) for ids, _ in rows]
    ids = torch.from_numpy(np.concatenate([i for i, _ in rows]).astype(np.int64))[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    bounds = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    decoder = model.get_decoder()
    with torch.inference_mode():
        masked = decoder(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
        with _attention(model, VARLEN_SDPA):
            varlen = decoder(input_ids=ids, position_ids=positions, use_cache=False, cu_seq_lens_q=bounds,
                             cu_seq_lens_k=bounds, max_length_q=max(lengths), max_length_k=max(lengths))  # fmt: skip
    assert model.config._attn_implementation == "sdpa"  # restored
    assert torch.allclose(masked, varlen.last_hidden_state, rtol=1e-5, atol=1e-5)


def test_one_sequence_and_no_response_tokens():
    model = llama()
    ids = np.arange(3, 20)
    with torch.inference_mode():
        (alone,), (count,) = packed_logprob_sums(model, [(ids, np.ones(17, np.uint8))], chunk_size=4)
        sums, counts = packed_logprob_sums(model, [(ids, np.zeros(17, np.uint8)), (ids[:3], np.ones(3, np.uint8))],
                                           chunk_size=4)  # fmt: skip
    assert count == 16 and alone == pytest.approx(full_logits_logprob_sum(model, ids, [1] * 17), rel=1e-5)
    assert counts.tolist() == [0, 2] and sums[0] == 0.0


def test_models_sharing_tokenizer_and_template_encode_once(tiny_model, tmp_path, monkeypatch):
    """Two aligned models with the same tokenizer and template: the rows are encoded once, scores unchanged."""
    from datasets import Dataset

    import poft.scoring as scoring
    from poft.configs import ScoreConfig

    path = tiny_model("chatml", hidden_size=32)
    calls = []
    encode = scoring._encode_rows
    monkeypatch.setattr(scoring, "_encode_rows", lambda *a, **k: calls.append(1) or encode(*a, **k))
    rows = [{"messages": [{"role": "user", "content": "hi " * (i + 1)}, {"role": "assistant", "content": "ok " * i + "."}]}
            for i in range(6)]  # fmt: skip
    config = ScoreConfig(
        dataset="rows", model=[f"a={path}", f"b={path}"], output=str(tmp_path / "o"), progress=False
    )
    scored = scoring.score_dataset(config, Dataset.from_list(rows))
    assert len(calls) == 1
    assert scored["a_logp_sum"] == scored["b_logp_sum"] and scored["a_n_tokens"] == scored["b_n_tokens"]
