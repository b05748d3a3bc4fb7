"""Training step cost of PoFT against TRL's own SFTTrainer and against the official PoFT loss formulation.

    python benchmarks/bench_training.py --quick                    # real SmolLM2 + a 128k-vocab config, CPU
    python benchmarks/bench_training.py --config real              # one config, more rounds
    python benchmarks/bench_training.py --device cuda --config llama-1b   # a GPU (bf16, 1B-class config)

Same model, same batch (real Alpaca rows under the model's template, poft's response labels), forward +
backward of one micro-batch:
  (a) sft       TRL's unmodified `SFTTrainer.compute_loss` on that batch (its fused LM head; on CPU TRL's
                torch fallback, which projects every position and computes entropy and top-1)
  (b) poft      `PoFTTrainer(objective="poft").compute_loss`: where TRL's fused head has no kernel (CPU), the
                response positions only, through `logprobs.chunked_token_log_probs`; on a GPU with Triton,
                TRL's fused head
  (c) official  the official code's formulation: full [B, T, V] logits, CE with reduction="none", per-example
                mean over response tokens, -log(sigmoid(.)) (re-implemented here, no code copied)
Configs: `real` (SmolLM2-135M-Instruct from the real-model cache), `vocab128k` (random-init Llama, vocab
128,256), `llama-1b` (random-init ~1.2B Llama-3-style config, for a GPU).
Time: the three run interleaved in this process (rounds of a, b, c), median per variant.
Peak memory: on CPU each variant runs in 3 fresh subprocesses (median reported); free heap is returned to the
OS (malloc_trim), the kernel's peak-RSS counter is reset (`echo 5 > /proc/self/clear_refs`), two steps run,
and the figure is the peak RSS (VmHWM) minus the RSS just before the steps: the step's own working memory.
On CUDA: torch.cuda.max_memory_allocated over two steps minus the memory allocated before them.
`uptime` is printed at the start and the end; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

from poft import PoFTConfig, PoFTTrainer  # noqa: E402

REAL = Path("~/.cache/poft/real-models/hf/smollm2-135m-instruct").expanduser()
ROWS = Path(__file__).resolve().parent.parent / "data/alpaca_real.json"
CONFIGS = {
    "vocab128k": dict(vocab_size=128256, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4),
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8),
}  # fmt: skip
VARIANTS = ("sft", "poft", "official")


def tokenizer_for_bench():
    if REAL.exists():
        return AutoTokenizer.from_pretrained(REAL)
    from poft.tiny import build_tokenizer  # a machine without the real-model cache (a GPU box)

    return build_tokenizer("chatml")


def build(config_name: str, batch: int, seq_len: int, device: str, seed: int = 0):
    """Model, its tokenizer, and `batch` real conversations (the longest of the file, cut at seq_len)."""
    tokenizer = tokenizer_for_bench()
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if config_name == "real":
        model = AutoModelForCausalLM.from_pretrained(REAL, dtype=dtype)
    else:
        cfg = LlamaConfig(**CONFIGS[config_name], max_position_embeddings=max(4096, 4 * seq_len),
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                          tie_word_embeddings=False)  # fmt: skip
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg).to(dtype)
    records = json.loads(ROWS.read_text())
    records.sort(key=lambda r: -len(r["instruction"] + r["input"] + r["output"]))
    rows = []
    for i, r in enumerate(records[:batch]):
        user = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}]
        rows.append({"messages": messages, "ref_score": -2.0 - 0.1 * i})
    return model.to(device), tokenizer, Dataset.from_list(rows)


def poft_trainer(model, tokenizer, dataset, seq_len: int, device: str) -> PoFTTrainer:
    args = PoFTConfig(output_dir="/tmp/poft-bench", objective="poft", per_device_train_batch_size=len(dataset),
                      max_length=seq_len, bf16=device.startswith("cuda"), gradient_checkpointing=False,
                      report_to=[], save_strategy="no", dataset_num_proc=None, use_cpu=device == "cpu")  # fmt: skip
    return PoFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def make_step(variant: str, model, tokenizer, dataset, seq_len: int, device: str):
    """A closure running forward + backward of one batch for `variant`, and the batch's token count. Every
    variant gets the same tensors: the batch PoFT's collator builds (poft.chat response labels)."""
    poft = poft_trainer(model, tokenizer, dataset, seq_len, device)
    batch = poft.data_collator([poft.train_dataset[i] for i in range(len(dataset))])
    batch = {k: v.to(device) for k, v in batch.items()}
    n_tokens = int(batch["attention_mask"].sum())
    tensors = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    model.train()

    if variant == "official":
        ref = batch["poft_ref_score"]

        def step():
            logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits
            labels = tensors["labels"]
            ce = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(),
                labels[:, 1:].flatten(),
                reduction="none",
                ignore_index=-100,
            ).view(labels.shape[0], -1)
            mask = labels[:, 1:] != -100
            policy = -(ce * mask).sum(-1) / mask.sum(-1)
            loss = -torch.log(torch.sigmoid(policy - ref)).mean()
            loss.backward()
            model.zero_grad(set_to_none=True)

    elif variant == "sft":  # TRL's own SFTTrainer, unmodified, on the same tensors
        args = SFTConfig(output_dir="/tmp/poft-bench-sft", per_device_train_batch_size=len(dataset),
                         max_length=seq_len, bf16=device.startswith("cuda"), gradient_checkpointing=False,
                         report_to=[], save_strategy="no", use_cpu=device == "cpu")  # fmt: skip
        sft = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        num_items = (tensors["labels"][:, 1:] != -100).sum()

        def step():
            loss = sft.compute_loss(model, dict(tensors), num_items_in_batch=num_items)
            loss.backward()
            model.zero_grad(set_to_none=True)

    else:
        num_items = torch.tensor(len(dataset), device=device)

        def step():
            loss = poft.compute_loss(model, dict(batch), num_items_in_batch=num_items)
            loss.backward()
            model.zero_grad(set_to_none=True)

    return step, n_tokens


def status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process from /proc/self/status, in MB."""
    with open("/proc/self/status") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    return int(match.group(1)) / 1024.0


def measure_memory(variant: str, config_name: str, batch: int, seq_len: int, device: str) -> float:
    """Run in a fresh process: peak memory growth (MB) during two steps of `variant`."""
    model, tokenizer, dataset = build(config_name, batch, seq_len, device)
    step, _ = make_step(variant, model, tokenizer, dataset, seq_len, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = status_mb("VmRSS")
    step()
    step()
    return status_mb("VmHWM") - before


def memory_in_subprocess(variant: str, config_name: str, args, repeats: int = 3) -> float:
    """Median over `repeats` fresh processes (the peak RSS of one process varies by a few % run to run)."""
    cmd = [sys.executable, __file__, "--memory-of", variant, "--config", config_name, "--device", args.device]
    cmd += ["--batch", str(args.batch), "--seq-len", str(args.seq_len), "--threads", str(args.threads)]
    runs = [subprocess.run(cmd, capture_output=True, text=True, check=True) for _ in range(repeats)]
    return statistics.median(float(done.stdout.strip().splitlines()[-1]) for done in runs)


def time_variants(config_name: str, args) -> dict[str, dict[str, float]]:
    model, tokenizer, dataset = build(config_name, args.batch, args.seq_len, args.device)
    steps = {v: make_step(v, model, tokenizer, dataset, args.seq_len, args.device) for v in VARIANTS}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for v in VARIANTS:  # warm-up
        steps[v][0]()
    for _ in range(args.rounds):
        for v in VARIANTS:
            sync()
            start = time.perf_counter()
            steps[v][0]()
            sync()
            times[v].append(time.perf_counter() - start)
    n_tokens = steps["poft"][1]
    return {
        v: {
            "step_s": statistics.median(t),
            "tokens_per_s": n_tokens / statistics.median(t),
            "tokens": n_tokens,
        }
        for v, t in times.items()
    }


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512, help="max tokens per sequence")
    parser.add_argument(
        "--rounds", type=int, default=None, help="timed rounds per variant (5 quick, 10 full)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", default=None, choices=["real", *CONFIGS], help="only this config")
    parser.add_argument("--no-memory", action="store_true", help="time only (memory needs 9 fresh processes)")
    parser.add_argument("--memory-of", default=None, choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.rounds = args.rounds or (5 if args.quick else 10)
    if args.memory_of:
        print(measure_memory(args.memory_of, args.config, args.batch, args.seq_len, args.device))
        return
    print("load at start:", uptime(), flush=True)
    result: dict = {
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else "not measured on GPU",
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "rounds": args.rounds,
        "configs": {},
    }
    default = ["llama-1b"] if args.device.startswith("cuda") else ["real", "vocab128k"]
    for name in [args.config] if args.config else default:
        timing = time_variants(name, args)
        memory = {v: None if args.no_memory else memory_in_subprocess(v, name, args) for v in VARIANTS}
        entry = {v: {**timing[v], "peak_step_mem_mb": memory[v]} for v in VARIANTS}
        entry["poft_vs_sft_time_ratio"] = timing["poft"]["step_s"] / timing["sft"]["step_s"]
        entry["poft_vs_official_time_ratio"] = timing["poft"]["step_s"] / timing["official"]["step_s"]
        if not args.no_memory:
            entry["poft_vs_sft_peak_mem_ratio"] = memory["poft"] / memory["sft"]
            entry["poft_vs_official_peak_mem_ratio"] = memory["poft"] / memory["official"]
        result["configs"][name] = entry
        print(f"{name}: " + json.dumps(entry), flush=True)
    print("load at end:", uptime())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
