"""Where a run computes and in which precision, when the user did not say.

TRL's configs default to bf16 mixed precision, and transformers refuses bf16 without a GPU unless
`use_cpu` is set ("Your setup doesn't support bf16/gpu"), so `poft train` and `poft dpo` with their
defaults stopped on a CPU-only machine. Here, before TRL's checks run:
- no GPU (CUDA, MPS or XPU) and `use_cpu` not set: train on the CPU (`use_cpu=True`);
- `bf16` not set (TRL's None) on the CPU: bf16 autocast where the CPU has bf16 instructions (AMX or
  AVX512-BF16: 2-3x faster matmuls), float32 elsewhere.
What was chosen is printed once. Values the user set are never changed.
"""

from __future__ import annotations

import os
from pathlib import Path

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bf16 instructions (Linux: the flags of /proc/cpuinfo; False where unknown).

    POFT_CPU_BF16=0 or 1 overrides the detection (the test suite sets 0, so that every machine runs it in the
    same precision)."""
    override = os.environ.get("POFT_CPU_BF16", "")
    if cpuinfo is None and override in ("0", "1"):
        return override == "1"
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split()}
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def has_gpu() -> bool:
    import torch

    return (
        torch.cuda.is_available()
        or torch.backends.mps.is_available()
        or (hasattr(torch, "xpu") and torch.xpu.is_available())
    )


def fit_training_args(args, gpu: bool | None = None, bf16_cpu: bool | None = None) -> str | None:
    """Set `use_cpu` and `bf16` on a TrainingArguments-like config where the user left them at their defaults
    and no GPU is present; return the sentence saying so (None when nothing was chosen)."""
    gpu = has_gpu() if gpu is None else gpu
    if gpu or (args.use_cpu and args.bf16 is not None):
        return None
    chosen = []
    if not args.use_cpu:
        args.use_cpu = True
        chosen.append("no GPU: training on the CPU (use_cpu=True)")
    if args.bf16 is None and not args.fp16:
        args.bf16 = cpu_has_bf16() if bf16_cpu is None else bf16_cpu
        chosen.append(
            "bf16 autocast (this CPU has bf16 instructions; --bf16 false for float32)"
            if args.bf16
            else "float32 (this CPU has no bf16 instructions)"
        )
    return "; ".join(chosen) or None


_SAID: set[str] = set()


def say_once(text: str | None) -> None:
    """Print a decision once per process (and only on the main process of a multi-process run)."""
    if text and text not in _SAID and os.environ.get("RANK", "0") == "0":
        _SAID.add(text)
        print(f"poft: {text}")
