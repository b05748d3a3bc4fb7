"""objective 'poft_fixed_tau': PoFT's weight tau computed once per training row, by the model as training
starts, then held constant (`loss.fixed_tau_loss`).

PoFT's gradient is tau * (gradient of the length-normalised cross-entropy) with
tau = beta * sigmoid(beta * (r_ref - r_theta) - gamma): tau moves as the model learns each row. Holding it
at its value for the initial model, r_theta_0, keeps what PoFT knows of the data before training (the aligned
models' score against the target's) and takes away the weight's dynamics; comparing the two tells which of
them does the work. r_theta_0 comes from one pass over the training rows (no gradient, in evaluation mode,
in the trainer's precision) before the first step: about a third of an epoch's compute. The weights are
written to `fixed_tau.json` in the output folder, keyed by row, so a run resumed from a checkpoint reads
them back instead of scoring its rows with the partly trained model. With several processes each scores every
row (the same weights everywhere; the main process writes the file).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .loss import poft_weight
from .training_data import ROW_COLUMN

FIXED_TAU_FILE = "fixed_tau.json"


def initial_tau(trainer, resuming: bool) -> dict[int, float]:
    """Each training row's tau under the model as it is now (row -> tau), read back from the output folder
    instead when `resuming` and it is there. The main process writes the file."""
    path = Path(trainer.args.output_dir) / FIXED_TAU_FILE
    if resuming and path.is_file():
        return {int(row): tau for row, tau in json.loads(path.read_text())["tau"].items()}
    weights = _score_rows(trainer)
    if trainer.is_world_process_zero():
        path.parent.mkdir(parents=True, exist_ok=True)
        text = {"beta": trainer.args.beta, "gamma": trainer.args.gamma, "tau": weights}
        path.write_text(json.dumps(text))
    return weights


def _score_rows(trainer) -> dict[int, float]:
    """tau of every row of `trainer.train_dataset`, in order, a training batch at a time (no shuffling, so
    the data order and random state of training are untouched)."""
    args = trainer.args
    loader = DataLoader(
        trainer.train_dataset, batch_size=args.per_device_train_batch_size, collate_fn=trainer.data_collator
    )
    model = trainer.model
    was_training = model.training
    model.eval()
    weights: dict[int, float] = {}
    try:
        with torch.no_grad(), trainer.accelerator.autocast():
            for batch in loader:
                batch = trainer._prepare_inputs(batch)
                rows = batch.pop(ROW_COLUMN, None)
                if rows is None:
                    raise ValueError(
                        f"objective 'poft_fixed_tau' needs the `{ROW_COLUMN}` column to key each row's weight: "
                        "give rows of `messages` (or pre-tokenised rows that carry it)"
                    )
                ref = batch.pop("poft_ref_score")
                scores = trainer.policy_scores(model, batch)
                tau = poft_weight(scores, ref, beta=args.beta, gamma=args.gamma)
                weights.update(zip(rows.tolist(), tau.tolist(), strict=True))
    finally:
        model.train(was_training)
    return weights


def tau_of_rows(weights: dict[int, float], rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The fixed weights of a batch's rows, float32 on `like`'s device; a row without one is named."""
    missing = [row for row in rows.tolist() if row not in weights]
    if missing:
        raise KeyError(f"{FIXED_TAU_FILE}: no fixed tau for training rows {missing[:8]}")
    return torch.tensor([weights[row] for row in rows.tolist()], dtype=torch.float32, device=like.device)
