"""Padding-free / packed PoFT equals unpacked PoFT: per-sequence scores, gradients and trainer updates."""

import pytest
import torch
from datasets import Dataset
from trl.trainer.utils import add_fused_lm_head

from poft import PoFTConfig, PoFTTrainer, poft_loss
from poft.chat import ChatFormat
from poft.example import make_rows
from poft.loss import packed_sequence_logprob_sums, sequence_logprob_sums
from poft.tiny import build_model


@pytest.fixture(scope="module")
def rows():
    rows = make_rows(8, seed=3)
    rows[1]["messages"][1]["content"] = "a longer answer, so that the sequences have different lengths"
    return rows


@pytest.fixture(scope="module")
def model_dir(tiny_model, rows):
    corpus = [m["content"] for r in rows for m in r["messages"]]
    return tiny_model("llama3", corpus, vocab_size=300, hidden_size=32, seed=5)


def test_packed_scores_and_gradients_equal_unpacked(tokenizers, rows):
    tokenizer = tokenizers["llama3"]
    model = build_model(tokenizer, hidden_size=32, num_layers=2, seed=2)
    add_fused_lm_head(model, outputs=("log_probs",))
    chat = ChatFormat.from_tokenizer(tokenizer)
    encoded = [chat.encode(r["messages"]) for r in rows[:5]]
    labels = [[t if m else -100 for t, m in zip(e.input_ids, e.response_mask, strict=True)] for e in encoded]
    ref = torch.tensor([r["ref_score"] for r in rows[:5]])

    # unpacked: right-padded batch with an attention mask
    longest = max(len(e.input_ids) for e in encoded)
    ids = torch.full((5, longest), tokenizer.pad_token_id)
    lab = torch.full((5, longest), -100)
    att = torch.zeros((5, longest), dtype=torch.long)
    for i, (e, lb) in enumerate(zip(encoded, labels, strict=True)):
        ids[i, : len(lb)], lab[i, : len(lb)], att[i, : len(lb)] = (
            torch.tensor(e.input_ids),
            torch.tensor(lb),
            1,
        )
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=att, labels=lab, fused_lm_head=True)
    sums, counts = sequence_logprob_sums(out.log_probs, out.label_mask)
    poft_loss(sums / counts, ref).mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]

    # packed: one row, position ids restart per sequence, no attention mask, then 3 padding tokens
    flat_ids = torch.tensor([t for e in encoded for t in e.input_ids] + [tokenizer.pad_token_id] * 3)[None]
    flat_lab = torch.tensor([t for lb in labels for t in [-100, *lb[1:]]] + [-100] * 3)[None]
    positions = torch.tensor([p for e in encoded for p in range(len(e.input_ids))] + [0, 0, 0])[None]
    model.zero_grad()
    out = model(input_ids=flat_ids, position_ids=positions, labels=flat_lab, fused_lm_head=True)
    p_sums, p_counts = packed_sequence_logprob_sums(out.log_probs[0], out.label_mask[0], positions[0], 5)
    poft_loss(p_sums / p_counts, ref).mean().backward()

    assert torch.equal(p_counts, counts)
    assert torch.allclose(p_sums, sums, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, [p.grad for p in model.parameters()], strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def one_step(model_dir, rows, tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=1,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
    )
    settings.update(overrides)
    trainer = PoFTTrainer(model=model_dir, args=PoFTConfig(**settings), train_dataset=Dataset.from_list(rows))
    trainer.train()
    return trainer


@pytest.mark.parametrize(
    "mode",
    [
        dict(packing=True, max_length=1024, per_device_train_batch_size=1),  # BFD packs all 8 into one row
        dict(padding_free=True, max_length=None),
    ],
    ids=["packing", "padding_free"],
)
def test_trainer_packed_update_equals_unpacked(model_dir, rows, tmp_path, mode):
    unpacked = one_step(model_dir, rows, tmp_path / "unpacked")
    packed = one_step(model_dir, rows, tmp_path / "packed", **mode)
    assert len(packed.train_dataset) == (1 if mode.get("packing") else 8)
    a, b = unpacked.state.log_history[0], packed.state.log_history[0]
    for key in ("loss", "poft/policy_score", "poft/ref_score", "poft/weight", "poft/win_rate"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    for (name, p), q in zip(unpacked.model.named_parameters(), packed.model.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), name


def test_wrapped_packing_is_refused(model_dir, rows, tmp_path):
    with pytest.raises(ValueError, match="wrapped"):
        one_step(model_dir, rows, tmp_path, packing=True, packing_strategy="wrapped", max_length=64)
