"""One epoch of PoFT under torchrun, for tests/integration/test_row_weights.py (row_weights/ under DDP).

usage: torchrun --nproc_per_node 2 row_weights_ddp.py MODEL_DIR DATA_JSONL OUT_DIR
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import load_dataset  # noqa: E402

from poft import PoFTConfig, PoFTTrainer  # noqa: E402
from poft.distributed import end_distributed  # noqa: E402


def main() -> None:
    model_dir, data, out = sys.argv[1:4]
    torch.set_num_threads(1)
    args = PoFTConfig(
        output_dir=out,
        per_device_train_batch_size=2,
        num_train_epochs=1,
        learning_rate=1e-3,
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        seed=7,
        dataloader_drop_last=False,
        use_cpu=True,  # on CPU, torchrun gives a real gloo process group only with use_cpu=True
    )
    trainer = PoFTTrainer(
        model=model_dir, args=args, train_dataset=load_dataset("json", data_files=data)["train"]
    )
    trainer.train()
    trainer.accelerator.free_memory()


if __name__ == "__main__":
    main()
    end_distributed()
