"""Train PoFT for MAX_STEPS, checkpointing every 2 steps; optionally SIGKILL itself right after a checkpoint.

usage: python resume_train.py MODEL_DIR DATA_JSONL OUT_DIR MAX_STEPS [kill-after-save=N | resume]
Writes OUT_DIR/final.pt (the final weights) when it gets to the end.
"""

import os
import signal
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import load_dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from poft import PoFTConfig, PoFTTrainer  # noqa: E402


class KillAfterSave(TrainerCallback):
    """SIGKILL the process right after the checkpoint of `step` is written: no clean-up code runs."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    model_dir, data, out, max_steps = sys.argv[1:5]
    mode = sys.argv[5] if len(sys.argv) > 5 else ""
    torch.set_num_threads(1)
    args = PoFTConfig(
        output_dir=out,
        per_device_train_batch_size=4,
        max_steps=int(max_steps),
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        warmup_steps=1,
        save_strategy="steps",
        save_steps=2,
        logging_steps=1,
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        seed=11,
    )
    trainer = PoFTTrainer(
        model=model_dir, args=args, train_dataset=load_dataset("json", data_files=data)["train"]
    )
    if mode.startswith("kill-after-save="):
        trainer.add_callback(KillAfterSave(int(mode.split("=")[1])))
    trainer.train(resume_from_checkpoint=True if mode == "resume" else None)
    state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    torch.save(state, os.path.join(out, "final.pt"))


if __name__ == "__main__":
    main()
