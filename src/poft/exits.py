"""How a `poft` command ends: one line for an error, one line for Ctrl-C, and a clean end of a multi-process run.

A user error is one line on stderr, `poft <command>: error: ...`, exit 2 for options that cannot be used
(argparse's convention) and 1 for a failure (a missing file, a bad row, a model without a chat template,
...); an error poft does not expect is one line too, marked internal. Ctrl-C says what was kept and how to
resume, exit 130. `poft --debug <command>` (or POFT_DEBUG=1) shows tracebacks and the library warnings that
are otherwise filtered (`quiet_libraries`).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import warnings

from .io_errors import WRITE_ERRNOS, write_failed


def not_deepspeed_cpu_fallback(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Setting accelerator to CPU")


def quiet_libraries() -> None:
    """Filter the warnings every run printed that a user can do nothing about, before the libraries load.
    Only these lines, by their text: poft's own warnings and every other library warning stay."""
    # DeepSpeed (imported by transformers / accelerate when installed) on any machine without a GPU
    logging.getLogger("DeepSpeed").addFilter(not_deepspeed_cpu_fallback)
    # TRL's configs default `gradient_checkpointing=True`: transformers' deprecated name for
    # `activation_checkpointing`, so every run warned (poft's recipes use the new name)
    warnings.filterwarnings("ignore", "`gradient_checkpointing` is deprecated", FutureWarning)
    # transformers' own PEFT integration asks for `is_gradient_checkpointing` (deprecated) on LoRA runs
    warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
    # transformers asks the DataLoader to pin memory; torch warns when there is no GPU to pin it for
    warnings.filterwarnings("ignore", "'pin_memory' argument is set as true but no accelerator", UserWarning)


def unreadable(path: str) -> bool:
    """Whether a permission error on `path` was a read: the file is there and this process cannot read it."""
    return os.path.exists(path) and not os.access(path, os.R_OK)


def os_error_line(error: OSError) -> str:
    """ "[Errno 13] Permission denied: 'out'" -> "cannot write out: Permission denied (...)", saying the
    operation where the error tells it (the errnos only a write meets; a permission error on a file that is
    there and unreadable is a read). poft's own OSErrors (OutputWriteError, CheckpointWriteError) keep their
    sentence, without "[Errno 28]"; a library's error without a file name says so."""
    denied = isinstance(error, PermissionError) or error.errno == errno.EROFS
    read = denied and bool(error.filename) and unreadable(str(error.filename))
    if error.filename:
        operation = (
            "cannot read " if read else "cannot write " if denied or error.errno in WRITE_ERRNOS else ""
        )
        message = f"{operation}{error.filename}: {error.strerror}"
    elif type(error).__module__.startswith("poft."):
        message = error.strerror
    elif error.errno in WRITE_ERRNOS:
        message = (
            f"a write failed: {error.strerror} (the library did not name the file; `poft --debug` shows it)"
        )
    else:
        message = (
            f"{error.strerror} (a read or write whose file the library did not name; `poft --debug` shows it)"
        )
    if read:
        message += " (give a file you can read)"
    elif denied:
        message += " (choose a folder you can write to)"
    elif error.errno == errno.ENOSPC and "run" not in error.strerror:  # unless poft said what to do
        message += " (free some space, then run the same command again)"
    return message


def error_line(error: Exception, model: str | None = None) -> str:
    """The one line a user sees for an error: the message of poft's own errors and of the errors that name
    what is wrong (ValueError, OSError, ImportError); any other error is marked internal. `model`: the model
    the command loads, for library errors that do not name it (a read of its weights; a failed write of
    weights is the output's, never blamed on the input model)."""
    message = " ".join(str(error).split())  # library messages span lines
    if isinstance(error, OSError) and error.errno is not None and error.strerror:
        return os_error_line(error)
    if type(error).__name__ == "SafetensorError" and write_failed(error):
        return (
            f"writing model weights failed ({message}): the output's disk is full or refused the write; "
            "free some space (or choose another output folder), then run the same command again"
        )
    if type(error).__name__ == "SafetensorError":  # a weight file cut short or damaged
        return (
            f"the weights of {model or 'the model'} cannot be read ({message}): copy or download them again"
        )
    if type(error).__name__ == "OutOfMemoryError":
        return (
            f"out of memory ({message}): use smaller batches (--per_device_train_batch_size, --batch-tokens)"
        )
    if type(error).__module__.startswith("poft.") or isinstance(error, (ValueError, OSError, ImportError)):
        return message
    if write_failed(error):  # torch.save's "unexpected pos ..." on a full disk
        return f"a write failed ({message}): is the output's disk full? Free some space, then run the same command again"
    return (
        f"internal error: {type(error).__name__}: {message} (run `poft --debug ...` for the traceback; "
        "please report it)"
    )


def model_of(name: str, options: tuple | None) -> str | None:
    """The model `train`, `dpo` and `eval` load (`score` names its aligned models itself)."""
    if options and name in ("train", "dpo"):
        return options[2].model_name_or_path
    return options[0].model if options and name == "eval" else None


def interrupted_line(name: str, options: tuple | None) -> str:
    """What Ctrl-C leaves and how to go on, per command."""
    if name == "score" and options:
        return (
            f"interrupted; the finished shards in {options[0].output} are kept: run the same command again "
            "to resume"
        )
    if name in ("train", "dpo") and options:
        config = options[1]
        if getattr(config.save_strategy, "value", config.save_strategy) == "no":
            return (
                "interrupted; save_strategy is 'no', so no checkpoint was saved: the same command starts over"
            )
        return (
            f"interrupted; the checkpoints saved so far in {config.output_dir} are kept: run the same "
            "command with --resume_from_checkpoint last to resume"
        )
    return "interrupted; nothing to resume: run the same command again"


def end_run(code: int) -> int:
    """End a multi-process run (`poft.distributed.end_distributed`): the process group is destroyed and gloo's
    threads joined now, while the interpreter is whole, once the command's trainer is out of reach.

    If a library poft does not know still holds the group, it would be torn down at interpreter exit, which
    can abort a finished rank (pytorch/pytorch#190489): only then, and after flushing, leave at once.
    """
    from .distributed import end_distributed

    try:
        end_distributed()
    except RuntimeError as e:
        print(f"poft: warning: {e}; leaving without interpreter teardown", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def interrupted(name: str, options: tuple | None) -> int:
    """Ctrl-C: one line (from one process of a multi-process run), exit 130. A multi-process run leaves at
    once: its peers are interrupted too, and waiting for the process group could hang."""
    if os.environ.get("RANK", "0") == "0":
        print(f"\npoft {name}: {interrupted_line(name, options)}", file=sys.stderr)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return 130
