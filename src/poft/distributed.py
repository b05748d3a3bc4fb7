"""End a multi-process run so that its process groups are really gone before the interpreter exits.

`torch.distributed.destroy_process_group()` only removes a group from torch's tables: the group object, and
with it gloo's threads (`gloo_tcp_loop`, `pt_gloo_runloop`), lives as long as Python references it. After
`trainer.end()` every rank of a multi-process `poft train` still references it from:
  - the DDP wrapper (`DistributedDataParallel.process_group`), kept by the trainer (`model_wrapped`,
    accelerate's `Accelerator._models`); under DeepSpeed, the engine, its ZeRO optimizer, every trained
    parameter (`_dp_group`) and `deepspeed.utils.groups`' module globals hold DeepSpeed's own group;
  - DeepSpeed's `TorchBackend.barrier` / `monitored_barrier`, whose default argument
    `group=torch.distributed.GroupMember.WORLD` is evaluated when `deepspeed.comm.torch` is imported. The
    Trainer imports DeepSpeed (accelerate's `extract_model_from_parallel`) after the group exists, so those
    defaults hold the live group for the life of the process. `torch.distributed.nn.functional` does the
    same with ten collectives when it is imported after the group (as `poft score` does, through
    transformers' lazily imported model modules).
Left alone, the groups are destroyed during interpreter finalization, where a rank that has finished and
saved sometimes aborts ("terminate called without an active exception", exit -6): tearing gloo down while
the interpreter is being torn down is a known crash (pytorch/pytorch#190489). `end_distributed` releases
every holder instead, so gloo's threads are joined at the end of the run while the interpreter is whole.
"""

from __future__ import annotations

import gc
import os
import sys
import types
import weakref


def end_distributed() -> None:
    """The last call of a run, once its trainers and models are out of reach (returned from, or deleted):
    destroy the process groups and release what still references them, so that gloo's threads are joined
    now. Call it instead of `trainer.end()` / `destroy_process_group()`, not after them (a group already
    destroyed cannot be found any more). Under DeepSpeed, call `trainer.accelerator.free_memory()` first,
    while the group works: without `engine.destroy()` the engine, its optimizer and the model outlive the
    trainer (its hooks hold them). Does nothing in a single-process run.

    Raises RuntimeError if a group is still referenced afterwards: exiting with it alive risks the abort
    described in this module's docstring.
    """
    # torch.distributed never imported: no group, and a light command (`poft inspect`) does not import torch
    distributed = sys.modules.get("torch.distributed")
    if distributed is None or not (distributed.is_available() and distributed.is_initialized()):
        return
    from torch.distributed.distributed_c10d import _world

    groups = [weakref.ref(group) for group in _world.pg_names]
    gc.collect()  # trainers, DDP wrappers and DeepSpeed engines sit in cycles: free them while the group works
    deepspeed_comm = sys.modules.get("deepspeed.comm")  # the Trainer imports it when DeepSpeed is installed
    if deepspeed_comm is not None and deepspeed_comm.is_initialized():
        deepspeed_comm.destroy_process_group()  # also drops DeepSpeed's module-level references to its groups
    else:
        distributed.destroy_process_group()
    gc.collect()
    if any(group() is not None for group in groups):
        _unbind_default_arguments([group() for group in groups if group() is not None])
        gc.collect()
    alive = sum(group() is not None for group in groups)
    if alive:
        raise RuntimeError(
            f"{alive} destroyed process group(s) still referenced at the end of the run (a trainer or model "
            "still in reach?): their threads would be torn down at interpreter exit, which can abort "
            "(pytorch/pytorch#190489)"
        )


def _unbind_default_arguments(groups: list) -> None:
    """`def f(group=torch.distributed.group.WORLD)` binds the group live at import time. For a destroyed
    group None is always the better default: these collectives read None as "the default group", and the
    destroyed one cannot be used anyway."""
    for function in gc.get_objects():
        if type(function) is not types.FunctionType or not function.__defaults__:
            continue
        defaults = function.__defaults__
        if any(value is group for value in defaults for group in groups):
            function.__defaults__ = tuple(
                None if any(value is group for group in groups) else value for value in defaults
            )


def gloo_threads() -> list[str]:
    """Names of this process's live gloo threads (`gloo_tcp_loop`, `pt_gloo_runloop`; Linux /proc), to check
    that a run really released its process group."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:  # a thread that ended while we listed
            pass
    return [name for name in names if name.startswith(("gloo", "pt_gloo"))]
