"""Training step cost of PoFT against TRL's SFT and against the official PoFT loss formulation.

    python benchmarks/bench_training.py --quick        # a few minutes on 2 CPU cores
    python benchmarks/bench_training.py                # more rounds, longer sequences

Same Llama-architecture configs (a small one and one with a 128k vocabulary), same batch, same sequence
lengths, forward + backward of one micro-batch:
  (a) sft       PoFTTrainer(objective="sft"): TRL's own loss through its fused LM head
  (b) poft      PoFTTrainer(objective="poft"): the same fused head, per-sequence reduction, Bradley-Terry loss
  (c) official  the official code's formulation: full [B, T, V] logits, CE with reduction="none", per-example
                mean over response tokens, -log(sigmoid(.)) (re-implemented here, no code copied)
Time: the three run interleaved in this process (rounds of a, b, c), median per variant.
Peak memory: each variant runs in 3 fresh subprocesses (median reported); free heap is returned to the OS (malloc_trim), the
kernel's peak-RSS counter is reset (`echo 5 > /proc/self/clear_refs`), two steps run, and the figure is
the peak RSS (VmHWM) minus the RSS just before the steps: the step's own working memory (activations,
logits, gradients), exact rather than sampled.
The last line printed is one JSON object with the figures and the ratios.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from poft import PoFTConfig, PoFTTrainer  # noqa: E402
from poft.tiny import build_tokenizer  # noqa: E402

CONFIGS = {
    "small": dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4),
    "vocab128k": dict(vocab_size=128256, hidden_size=256, intermediate_size=688, num_hidden_layers=2),
}
VARIANTS = ("sft", "poft", "official")


def build(config_name: str, batch: int, seq_len: int, seed: int = 0):
    """Model from config, a tokenizer for the template, and one collated batch of `batch` conversations."""
    tokenizer = build_tokenizer("chatml")
    cfg = LlamaConfig(
        **CONFIGS[config_name],
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4 * seq_len,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    rows = []
    words = "the quick brown fox jumps over the lazy dog".split()
    for i in range(batch):
        n = seq_len // 2 - 8 - 7 * i  # unequal lengths, about half prompt, half response
        prompt = " ".join(words[(i + k) % len(words)] for k in range(n // 2))
        answer = " ".join(words[(i + 2 * k) % len(words)] for k in range(n // 2))
        rows.append(
            {
                "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                "ref_score": -2.0 - 0.1 * i,
            }
        )
    return model, tokenizer, Dataset.from_list(rows)


def make_step(variant: str, model, tokenizer, dataset, seq_len: int):
    """A closure running forward + backward of one batch for `variant`, and the batch's token count."""
    args = PoFTConfig(
        output_dir="/tmp/poft-bench",
        objective="sft" if variant == "sft" else "poft",
        per_device_train_batch_size=len(dataset),
        max_length=seq_len,
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        dataset_num_proc=None,
    )
    trainer = PoFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(dataset))])
    n_tokens = int(batch["attention_mask"].sum())
    model.train()

    if variant == "official":
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        labels, ref = batch["labels"], batch["poft_ref_score"]

        def step():
            logits = model(**inputs, fused_lm_head=False).logits  # [B, T, V] kept for backward
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

    else:
        num_items = (
            torch.tensor(len(dataset)) if variant == "poft" else (batch["labels"][:, 1:] != -100).sum()
        )

        def step():
            loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
            loss.backward()
            model.zero_grad(set_to_none=True)

    return step, n_tokens


def status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process from /proc/self/status, in MB."""
    with open("/proc/self/status") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    return int(match.group(1)) / 1024.0


def measure_memory(variant: str, config_name: str, batch: int, seq_len: int) -> float:
    """Run in a fresh process: peak RSS growth (MB) during two steps of `variant` (Linux peak-RSS counter)."""
    model, tokenizer, dataset = build(config_name, batch, seq_len)
    step, _ = make_step(variant, model, tokenizer, dataset, seq_len)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = status_mb("VmRSS")
    step()
    step()
    return status_mb("VmHWM") - before


def memory_in_subprocess(variant: str, config_name: str, batch: int, seq_len: int, repeats: int = 3) -> float:
    """Median over `repeats` fresh processes (the peak RSS of one process varies by a few % run to run)."""
    cmd = [sys.executable, __file__, "--memory-of", variant, "--config", config_name]
    cmd += ["--batch", str(batch), "--seq-len", str(seq_len)]
    runs = [subprocess.run(cmd, capture_output=True, text=True, check=True) for _ in range(repeats)]
    return statistics.median(float(done.stdout.strip().splitlines()[-1]) for done in runs)


def time_variants(config_name: str, batch: int, seq_len: int, rounds: int) -> dict[str, dict[str, float]]:
    model, tokenizer, dataset = build(config_name, batch, seq_len)
    steps = {v: make_step(v, model, tokenizer, dataset, seq_len) for v in VARIANTS}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for v in VARIANTS:  # warm-up
        steps[v][0]()
    for _ in range(rounds):
        for v in VARIANTS:
            start = time.perf_counter()
            steps[v][0]()
            times[v].append(time.perf_counter() - start)
    n_tokens = steps["poft"][1]
    return {
        v: {"step_s": statistics.median(t), "tokens_per_s": n_tokens / statistics.median(t)}
        for v, t in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter sequences")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument(
        "--seq-len", type=int, default=None, help="max tokens per sequence (192 quick, 512 full)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="timed rounds per variant (4 quick, 15 full)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", default=None, choices=list(CONFIGS), help="only this config")
    parser.add_argument("--memory-of", default=None, choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seq_len = args.seq_len or (192 if args.quick else 512)
    rounds = args.rounds or (10 if args.quick else 20)
    if args.memory_of:
        print(measure_memory(args.memory_of, args.config, args.batch, seq_len))
        return

    result: dict = {
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "batch": args.batch,
        "seq_len": seq_len,
        "rounds": rounds,
        "configs": {},
    }
    for name in [args.config] if args.config else list(CONFIGS):
        timing = time_variants(name, args.batch, seq_len, rounds)
        memory = {v: memory_in_subprocess(v, name, args.batch, seq_len) for v in VARIANTS}
        entry = {v: {**timing[v], "peak_step_mem_mb": memory[v]} for v in VARIANTS}
        entry["poft_vs_sft_time_ratio"] = timing["poft"]["step_s"] / timing["sft"]["step_s"]
        entry["poft_vs_sft_peak_mem_ratio"] = memory["poft"] / memory["sft"]
        entry["poft_vs_official_peak_mem_ratio"] = memory["poft"] / memory["official"]
        entry["poft_vs_official_time_ratio"] = timing["poft"]["step_s"] / timing["official"]["step_s"]
        result["configs"][name] = entry
        print(f"{name}: " + json.dumps(entry), flush=True)
    # headline ratios: the worst case over configs for the SFT comparison, the large vocabulary for official
    result["poft_vs_sft_time_ratio"] = max(c["poft_vs_sft_time_ratio"] for c in result["configs"].values())
    result["poft_vs_sft_peak_mem_ratio"] = max(
        c["poft_vs_sft_peak_mem_ratio"] for c in result["configs"].values()
    )
    big = result["configs"].get("vocab128k") or next(iter(result["configs"].values()))
    result["poft_vs_official_peak_mem_ratio"] = big["poft_vs_official_peak_mem_ratio"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
