"""Train one PoFT step under torchrun, end with poft.distributed.end_distributed, check that gloo's threads
are gone, then leave through normal interpreter teardown (no os._exit).

usage: python exit_train.py MODEL_DIR DATA_JSONL OUT_DIR [DEEPSPEED_JSON]
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import load_dataset  # noqa: E402

from poft import PoFTConfig, PoFTTrainer  # noqa: E402
from poft.distributed import end_distributed, gloo_threads  # noqa: E402


def train() -> None:
    model_dir, data, out = sys.argv[1:4]
    deepspeed = sys.argv[4] if len(sys.argv) > 4 else None
    torch.set_num_threads(1)
    args = PoFTConfig(
        output_dir=out,
        per_device_train_batch_size=4,
        max_steps=1,
        optim="sgd",
        learning_rate=0.5,
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        seed=7,
        deepspeed=deepspeed,
        use_cpu=True,  # on CPU, torchrun gives a real gloo process group only with use_cpu=True
    )
    trainer = PoFTTrainer(
        model=model_dir, args=args, train_dataset=load_dataset("json", data_files=data)["train"]
    )
    trainer.train()
    assert torch.distributed.is_initialized() and torch.distributed.get_world_size() == 2
    assert gloo_threads()
    trainer.save_model(out)
    trainer.accelerator.free_memory()  # DeepSpeed: engine.destroy() removes the hooks that keep it alive


if __name__ == "__main__":
    train()
    end_distributed()
    gloo = gloo_threads()
    assert not gloo, f"gloo threads still alive after end_distributed: {gloo}"
    print(f"rank {os.environ['RANK']}: no gloo thread after end_distributed", flush=True)
