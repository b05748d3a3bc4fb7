"""Where a run computes and in which precision, when the user did not say.

TRL's configs default to bf16 mixed precision, and transformers refuses bf16 without a GPU unless
`use_cpu` is set ("Your setup doesn't support bf16/gpu"), so `poft train` and `poft dpo` with their
defaults would stop on a CPU-only machine. Here, before TRL's checks run:
- no GPU (CUDA, MPS or XPU) and `use_cpu` not set: train on the CPU (`use_cpu=True`);
- `bf16` not set (TRL's None) on the CPU: bf16 autocast where the CPU has bf16 instructions (AMX or
  AVX512-BF16: 2-3x faster matmuls), float32 elsewhere.
On the CPU, `poft score`, `train` and `dpo` also set torch's threads from the CPUs this process may use
(`cpu_threads`: affinity, cgroup quota, processes per node), not from the machine's core count, and say
when other work already loads the CPU (`shared_cpu`): timings are then slower than the figures poft quotes.
What was chosen is printed once. Values the user set are never changed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from .console import say_once

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


@dataclass(frozen=True)
class CpuThreads:
    """The intra-op threads for this process and where the number comes from (`cpu_threads`)."""

    threads: int
    affinity: int  # CPUs this process may run on (sched_getaffinity)
    quota: float | None  # CPUs the cgroup's quota allows (None: no quota)
    processes: int  # processes on this node (torchrun's LOCAL_WORLD_SIZE)
    user: str | None = None  # the user's own setting (OMP_NUM_THREADS=...), which is kept

    def sentence(self) -> str:
        quota = "none" if self.quota is None else f"{self.quota:g} CPUs"
        source = f"{self.user}, the user's setting" if self.user else f"affinity {self.affinity}"
        plural = "es" if self.processes != 1 else ""
        threads = "thread" if self.threads == 1 else "threads"
        return (
            f"{self.threads} CPU {threads} ({source}, cgroup quota {quota}, {self.processes} process{plural})"
        )

    def cores(self) -> int:
        """CPUs the poft processes of this node keep busy: threads x processes, at most the CPUs allowed."""
        return max(1, min(self.threads * self.processes, _allowed_cpus(self.affinity, self.quota)))


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the cgroup's quota allows (quota / period), None when none is set or none can be read.

    cgroup v2: `cpu.max` ("max 100000" = none, "200000 100000" = 2 CPUs); v1: `cpu/cpu.cfs_quota_us` (-1 =
    none) over `cpu/cpu.cfs_period_us` (also under `cpu,cpuacct/`)."""
    try:
        fields = (root / "cpu.max").read_text().split()
        if len(fields) == 2 and fields[0] != "max":
            return _quota(int(fields[0]), int(fields[1]))
        if fields:
            return None
    except (OSError, ValueError):
        pass
    for folder in ("cpu", "cpu,cpuacct"):
        try:
            quota = int((root / folder / "cpu.cfs_quota_us").read_text())
            period = int((root / folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return _quota(quota, period)
    return None


def _quota(quota: int, period: int) -> float | None:
    return quota / period if quota > 0 and period > 0 else None


def cpu_threads(
    affinity: Collection[int] | None = None,
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    environ: Mapping[str, str] | None = None,
    torch_threads: int | None = None,
    machine_defaults: Collection[int] = (),
) -> CpuThreads:
    """Threads for this process: the CPUs it may run on (`os.sched_getaffinity`), capped by the cgroup's CPU
    quota when one is set, shared by the processes on this node (torchrun's LOCAL_WORLD_SIZE); at least 1.

    torch's own default counts the machine's cores, so in a container limited to 2 CPUs of 64, or under
    `taskset`, or with 8 processes per node, it runs many times more threads than there are CPUs to run
    them (every op then waits for the slowest, preempted thread). The user's choice wins: OMP_NUM_THREADS,
    or torch's current count (`torch_threads`) when it is none of the counts torch itself starts with on
    this machine (`machine_defaults`: `machine_core_counts`; then the user called torch.set_num_threads).
    The arguments default to this process's affinity, the system's cgroup files and os.environ."""
    environ = os.environ if environ is None else environ
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    n_affinity = max(1, len(affinity))
    quota = cgroup_cpu_quota(cgroup_root)
    processes = max(1, _int(environ.get("LOCAL_WORLD_SIZE")) or 1)
    user = _int(environ.get("OMP_NUM_THREADS"))
    if user is not None and user >= 1:
        return CpuThreads(user, n_affinity, quota, processes, user=f"OMP_NUM_THREADS={user}")
    if torch_threads is not None and machine_defaults and torch_threads not in machine_defaults:
        return CpuThreads(
            torch_threads, n_affinity, quota, processes, user=f"torch.set_num_threads({torch_threads})"
        )
    return CpuThreads(max(1, _allowed_cpus(n_affinity, quota) // processes), n_affinity, quota, processes)


def _allowed_cpus(affinity: int, quota: float | None) -> int:
    return affinity if quota is None else min(affinity, max(1, math.floor(quota)))


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def machine_core_counts() -> set[int]:
    """The thread counts torch may start with here when nobody chose one: the machine's physical cores
    (cpuinfo; psutil reads the same), its logical CPUs, or the CPUs of this process's affinity (OpenMP
    counts those: under `taskset -c 0` torch starts with 1)."""
    counts = {os.cpu_count() or 1}
    if hasattr(os, "sched_getaffinity"):
        counts.add(len(os.sched_getaffinity(0)))
    try:
        import psutil  # accelerate's dependency

        counts.add(psutil.cpu_count(logical=False) or 1)
    except ImportError:
        pass
    return counts


_SET_BY_POFT: set[int] = set()


def fit_cpu_threads(plan: CpuThreads | None = None) -> CpuThreads:
    """Set torch's intra-op threads for a process that computes on the CPU (`cpu_threads`), and say so once.

    `poft score`, `poft train` and `poft dpo` call it when they start; a count the user set (OMP_NUM_THREADS,
    or torch.set_num_threads before calling `poft.cli.main` in-process) is kept. With several
    processes on the node it also sets OMP_NUM_THREADS (the user did not), because accelerate's multi-process
    CPU default (physical cores / processes, blind to affinity and quotas) would otherwise replace it."""
    import torch

    if plan is None:
        defaults = machine_core_counts() | _SET_BY_POFT  # a count poft set earlier is not the user's
        plan = cpu_threads(torch_threads=torch.get_num_threads(), machine_defaults=defaults)
    if plan.user is None:
        torch.set_num_threads(plan.threads)
        _SET_BY_POFT.add(plan.threads)
        if plan.processes > 1:
            os.environ["OMP_NUM_THREADS"] = str(plan.threads)
    say_once(plan.sentence())
    say_once(shared_cpu(plan, cpu_load()))
    return plan


def cpu_load() -> float | None:
    """The machine's 1-minute load average (runnable tasks), None where the system keeps none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def shared_cpu(plan: CpuThreads, load: float | None, machine_cpus: int | None = None) -> str | None:
    """The sentence saying that other work already loads the CPU this run computes on, or None.

    Said when the 1-minute load average, taken as a run starts (before its own work counts), is above the
    cores poft uses (`CpuThreads.cores`): other work then competes for them. On a machine with many more CPUs
    than poft uses the load may sit on the others, so there it must also exceed those others.
    `machine_cpus` defaults to os.cpu_count()."""
    machine = max(1, machine_cpus or os.cpu_count() or 1)
    cores = plan.cores()
    if load is None or load <= max(cores, machine - cores):
        return None
    of = f" of {machine}" if machine > cores else ""
    plural = "s" if cores != 1 else ""
    return f"the CPU is shared (load {load:.1f} on the {cores} core{plural}{of} poft uses): timings will be slower"
