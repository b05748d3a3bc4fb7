"""Training through PoFTTrainer: each optimizer step reported to the demo's progress bar, an evaluation after
every epoch.

Every model in the demo (the base, the aligned models and the targets) is trained here by `PoFTTrainer`, so
the demo exercises the library's real training path: the base and the aligned models with objective='sft', the
target with each method's objective / loss_type / bi-PoFT variant (methods.py). One `train()` call per run keeps a single optimizer and cosine
schedule across epochs; a callback evaluates at each epoch end.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_callback import PrinterCallback

from poft.device import has_gpu
from poft.records import RunRecord
from poft.trainer import PoFTTrainer
from poft.training_configs import PoFTConfig

from .config import DemoConfig


def steps_per_run(n_rows: int, batch_size: int, epochs: int) -> int:
    return -(-n_rows // batch_size) * epochs


class _StepCallback(TrainerCallback):
    def __init__(self, sink, on_epoch: Callable[[int, PreTrainedModel], None] | None, units: int):
        self.sink, self.on_epoch, self.units = sink, on_epoch, units

    def on_step_end(self, args, state, control, **kwargs):
        if self.sink is not None:
            self.sink.update(self.units)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.on_epoch is not None:
            self.on_epoch(round(state.epoch), model)


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    *,
    objective: str,
    epochs: int,
    learning_rate: float,
    seed: int,
    config: DemoConfig,
    work_dir: Path,
    sink=None,
    on_epoch: Callable[[int, PreTrainedModel], None] | None = None,
    loss_type: str = "nll",
    bi_poft_variant: str = "soft",
    max_length: int = 64,
    step_units: int = 1,
) -> PreTrainedModel:
    """Train `model` in place with `objective`; `on_epoch(epoch, model)` runs after each epoch.

    `sink.update(step_units)` is called after every optimizer step (the progress bar, or a queue in a worker);
    a step over rows `step_units` times longer than a conversation counts that many times, so the bar's ETA holds."""
    args = PoFTConfig(
        output_dir=str(work_dir),
        objective=objective,
        loss_type=loss_type,
        bi_poft_variant=bi_poft_variant,
        undesirable_target=config.undesirable_target,
        undesirable_margin=config.undesirable_margin,
        undesirable_weight=config.undesirable_weight,
        beta=config.beta,
        gamma=config.gamma,
        score_normalization=config.normalization,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.0,
        num_train_epochs=epochs,
        per_device_train_batch_size=config.batch_size,
        max_length=max_length,
        seed=seed,
        data_seed=seed,
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        bf16=False,
        use_cpu=not has_gpu(),  # said here, so PoFTConfig has nothing to choose (or print) per run
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        on_bad_row="error",
    )
    trainer = PoFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # the demo prints its own progress
    trainer.remove_callback(RunRecord)  # log + curves.png: ~1 s of matplotlib a run, deleted with work/
    trainer.add_callback(_StepCallback(sink, on_epoch, step_units))
    trainer.train()
    return trainer.model
