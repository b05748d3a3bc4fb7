"""Train PoFT for MAX_STEPS, checkpointing every 2 steps; optionally SIGKILL itself right after a checkpoint.

usage: python resume_train.py MODEL_DIR DATA_JSONL OUT_DIR MAX_STEPS [kill-after-save=N | kill-rank1-at=N | resume]
Writes OUT_DIR/final.pt (the final weights) when it gets to the end. Also runs under torchrun (gloo on CPU).
"""

import os
import signal
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import load_dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from poft import PoFTConfig, PoFTTrainer  # noqa: E402
from poft.distributed import end_distributed  # noqa: E402


class KillRankOne(TrainerCallback):
    """SIGKILL rank 1 of a multi-process run when it reaches `step`; the other rank is left to hang or fail."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and args.process_index == 1:
            os.kill(os.getpid(), signal.SIGKILL)


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
        use_cpu=True,  # under torchrun on CPU, a gloo process group is created only with use_cpu=True
    )
    trainer = PoFTTrainer(
        model=model_dir, args=args, train_dataset=load_dataset("json", data_files=data)["train"]
    )
    if mode.startswith("kill-after-save="):
        trainer.add_callback(KillAfterSave(int(mode.split("=")[1])))
    if mode.startswith("kill-rank1-at="):
        trainer.add_callback(KillRankOne(int(mode.split("=")[1])))
    trainer.train(resume_from_checkpoint=True if mode == "resume" else None)
    if trainer.accelerator.is_main_process:
        state = {
            k: v.detach().cpu()
            for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()
        }
        torch.save(state, os.path.join(out, "final.pt"))


if __name__ == "__main__":
    main()
    end_distributed()  # the trainer is out of reach: destroy the group, join gloo's threads before teardown
