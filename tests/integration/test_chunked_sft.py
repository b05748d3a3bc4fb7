"""objective 'sft' on PoFT's chunked response-only path (`sft_path='chunked'`) against TRL's own loss, and
objective 'poft_fixed_tau' against its plain definition, on a tiny model in float32.

The chunked path must give TRL's loss (within 1e-6) and gradients (within 1e-5) for 'nll' and 'dft' on a
padded batch of several sequences, on a packed row, and through gradient accumulation (TRL divides by the
response tokens of the whole optimizer step), so that SFT and DFT baselines cost what PoFT costs."""

import json

import pytest
import test_trainer  # this folder is on sys.path
import torch
from datasets import Dataset

from poft import PoFTConfig, PoFTTrainer
from poft.fixed_tau import FIXED_TAU_FILE


def config(tmp_path, **overrides) -> PoFTConfig:
    settings = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-3,
                    logging_steps=1, bf16=False, gradient_checkpointing=False, report_to=[], save_strategy="no",
                    seed=0)  # fmt: skip
    settings.update(overrides)
    return PoFTConfig(**settings)


tiny = test_trainer.tiny  # the fixture: a tiny model and 8 rows of varied lengths (a 2-turn one)


def loss_and_grads(trainer, batch, num_items_in_batch=None):
    model = trainer.model
    model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items_in_batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return loss.item(), grads


def assert_same(ours, trls):
    (loss, grads), (trl_loss, trl_grads) = ours, trls
    assert loss == pytest.approx(trl_loss, rel=1e-6, abs=1e-6)
    assert grads.keys() == trl_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        torch.testing.assert_close(grad, trl_grads[name], rtol=1e-5, atol=1e-5)
    assert any(g.abs().sum() > 0 for g in grads.values())


def trainers(tiny, tmp_path, **overrides):
    rows = Dataset.from_list(tiny["rows"])
    made = {}
    for path in ("trl", "chunked"):
        args = config(tmp_path / path, objective="sft", sft_path=path, **overrides)
        made[path] = PoFTTrainer(model=tiny["model"], args=args, train_dataset=rows)
    assert made["trl"].train_dataset["labels"] == made["chunked"].train_dataset["labels"]
    return made["trl"], made["chunked"]


@pytest.mark.parametrize("loss_type", ["nll", "dft"])
@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_chunked_sft_equals_trls_loss_and_gradients(tiny, tmp_path, loss_type, packing):
    """A padded batch of 8 sequences (or one packed row holding them), as training (num_items_in_batch: the
    step's response tokens, here twice this batch's, as with 2 accumulation steps) and as evaluation (None)."""
    mode = dict(packing=True, max_length=1024, per_device_train_batch_size=1) if packing else {}
    trl, chunked = trainers(tiny, tmp_path, loss_type=loss_type, **mode)
    n = len(trl.train_dataset)
    batch = trl._prepare_inputs(trl.data_collator([trl.train_dataset[i] for i in range(n)]))
    assert ("position_ids" in batch and "attention_mask" not in batch) == packing
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    for items in (torch.tensor(2 * tokens), None):
        assert_same(loss_and_grads(chunked, batch, items), loss_and_grads(trl, batch, items))


def test_chunked_sft_trains_like_trl_through_gradient_accumulation(tiny, tmp_path):
    """Two optimizer steps of 2 micro-batches x 2 rows: the same logged losses and the same weights."""
    trl, chunked = trainers(tiny, tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    trl.train()
    chunked.train()
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (trl, chunked)]
    assert len(losses[0]) == 2 and losses[1] == pytest.approx(losses[0], rel=1e-6)
    assert "poft/nll" in chunked.state.log_history[0] and "poft/weight" not in chunked.state.log_history[0]
    theirs = trl.model.state_dict()
    for name, value in chunked.model.state_dict().items():
        torch.testing.assert_close(value, theirs[name], rtol=1e-5, atol=1e-6)


def plain_scores(model, trainer) -> torch.Tensor:
    """r_theta of every training row by a full-logits forward, one row at a time (the plain reference)."""
    scores = []
    for row in trainer.train_dataset:
        ids = torch.tensor([row["input_ids"]])
        labels = torch.tensor(row["labels"][1:])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        mask = labels != -100
        scores.append(lp.gather(-1, labels.clamp(min=0)[:, None])[:, 0][mask].mean())
    return torch.stack(scores)


def test_fixed_tau_is_the_initial_models_tau_held_constant(tiny, tmp_path):
    """tau = sigmoid(r_ref - r_theta_0) from the model before the first step, for every step and epoch;
    the first step's loss is mean(-tau * r_theta); a resumed run reads the weights back."""
    rows = Dataset.from_list(tiny["rows"])
    args = config(tmp_path, objective="poft_fixed_tau", max_steps=-1, num_train_epochs=2,
                  per_device_train_batch_size=8, learning_rate=5e-3)  # fmt: skip
    trainer = PoFTTrainer(model=tiny["model"], args=args, train_dataset=rows)
    r0 = plain_scores(trainer.model, trainer)
    ref = torch.tensor(trainer.train_dataset["poft_ref_score"])
    expected_tau = torch.sigmoid(ref - r0)
    expected_loss = (-expected_tau * r0).mean()
    trainer.train()
    saved = json.loads((tmp_path / "out" / FIXED_TAU_FILE).read_text())["tau"]
    order = trainer.train_dataset["poft_row"]
    torch.testing.assert_close(
        torch.tensor([saved[str(r)] for r in order]), expected_tau, rtol=1e-5, atol=1e-6
    )
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs[0]["loss"] == pytest.approx(expected_loss.item(), rel=1e-5)
    assert [h["poft/weight"] for h in logs] == pytest.approx([expected_tau.mean().item()] * 2, rel=1e-5)
    moved = torch.sigmoid(ref - plain_scores(trainer.model, trainer))  # what PoFT's tau is by now
    assert (moved - expected_tau).abs().max() > 1e-3
    epochs = [tmp_path / "out" / "row_weights" / f"epoch-{e}.jsonl" for e in (1, 2)]
    taus = [[json.loads(line)["tau"] for line in path.read_text().splitlines()] for path in epochs]
    assert taus[0] == taus[1]


def test_fixed_tau_gradient_is_the_tau_weighted_normalised_ce(tiny, tmp_path):
    """Against PoFT on the same batch: at the start its tau is the fixed one, so the gradients agree; PoFT
    differs once the model moves (checked above), fixed tau does not."""
    rows = Dataset.from_list(tiny["rows"])
    made = {}
    for objective in ("poft", "poft_fixed_tau"):
        args = config(tmp_path / objective, objective=objective, per_device_train_batch_size=8)
        made[objective] = PoFTTrainer(model=tiny["model"], args=args, train_dataset=rows)
    fixed = made["poft_fixed_tau"]
    from poft.fixed_tau import initial_tau

    fixed._fixed_tau = initial_tau(fixed, resuming=False)
    batch = fixed._prepare_inputs(fixed.data_collator([fixed.train_dataset[i] for i in range(8)]))
    _, poft_grads = loss_and_grads(made["poft"], batch, torch.tensor(8))
    _, fixed_grads = loss_and_grads(fixed, batch, torch.tensor(8))
    for name, grad in poft_grads.items():
        torch.testing.assert_close(fixed_grads[name], grad, rtol=1e-5, atol=1e-6)


def test_fixed_tau_of_packed_rows_equals_the_padded_ones(tiny, tmp_path):
    """The pass before the first step reads packed rows (several sequences a row) as the padded batch."""
    rows = Dataset.from_list(tiny["rows"])
    taus = []
    for packed in (False, True):
        mode = dict(packing=True, max_length=1024, per_device_train_batch_size=1) if packed else {}
        args = config(tmp_path / str(packed), objective="poft_fixed_tau", max_steps=1, **mode)
        PoFTTrainer(model=tiny["model"], args=args, train_dataset=rows).train()
        taus.append(json.loads((tmp_path / str(packed) / "out" / FIXED_TAU_FILE).read_text())["tau"])
    assert taus[0].keys() == taus[1].keys() and len(taus[0]) == len(tiny["rows"])
    for row, tau in taus[0].items():
        assert taus[1][row] == pytest.approx(tau, rel=1e-5)
