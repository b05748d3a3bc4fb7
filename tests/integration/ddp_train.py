"""One optimizer step of PoFT, written to OUT/weights.pt; run under torchrun or as a plain process.

usage: python ddp_train.py MODEL_DIR DATA_JSONL OUT_DIR PER_DEVICE_BATCH GRAD_ACCUM [OBJECTIVE [DEEPSPEED_JSON]]
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import load_dataset  # noqa: E402

from poft import PoFTConfig, PoFTTrainer  # noqa: E402
from poft.distributed import end_distributed  # noqa: E402


def main() -> None:
    model_dir, data, out, batch, accum = sys.argv[1:6]
    objective = sys.argv[6] if len(sys.argv) > 6 else "poft"
    deepspeed = sys.argv[7] if len(sys.argv) > 7 else None
    torch.set_num_threads(1)
    args = PoFTConfig(
        output_dir=out,
        objective=objective,
        per_device_train_batch_size=int(batch),
        gradient_accumulation_steps=int(accum),
        max_steps=1,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=7,
        data_seed=7,
        dataloader_drop_last=False,
        deepspeed=deepspeed,
        use_cpu=True,  # on CPU, torchrun gives a real gloo process group only with use_cpu=True
    )
    trainer = PoFTTrainer(
        model=model_dir, args=args, train_dataset=load_dataset("json", data_files=data)["train"]
    )
    trainer.train()
    if trainer.accelerator.is_main_process:
        state = {
            k: v.detach().cpu()
            for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()
        }
        torch.save({"state": state, "log": trainer.state.log_history}, os.path.join(out, "weights.pt"))

    trainer.accelerator.free_memory()  # under DeepSpeed, engine.destroy(): its hooks would keep it alive


if __name__ == "__main__":
    main()
    end_distributed()  # the trainer is out of reach: destroy the group, join gloo's threads before teardown
