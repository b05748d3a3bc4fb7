"""PEFT adapters wherever a model goes: the folder `poft train --use_peft` writes is read as the model it stands
for, its base model with the adapter applied, by `poft dpo`, `poft eval`, `poft score` and `poft merge`.

An adapter folder holds `adapter_config.json` (which names the base model in `base_model_name_or_path`), the
adapter weights and, when poft wrote it, the tokenizer with the chat template training used. transformers reads
such a folder as a model only in part (the tokenizer it finds is the base's, without that template) or not at
all ("Unrecognized model ... model_type"), and a missing base model must be named together with the adapter
that points at it: both are decided here once, for every command. `model_kind` tells a model folder, an adapter
folder and a GGUF file apart, and says what a folder that is none of them lacks.

Nothing heavy is imported at module level: `poft merge --help` reads the command table without torch.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # `name` or `org/name`


class AdapterError(ValueError):
    """An adapter folder that cannot be used (its base model missing, no adapter weights); names both."""


class NotAModelError(ValueError):
    """A path that is neither a model folder, nor an adapter folder, nor a GGUF file; says what it lacks."""


def _cached(hub_id: str, filename: str) -> bool:
    """Whether the HF cache holds `filename` of the Hub repository `hub_id`."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, filename), str)


def model_kind(path: str) -> str:
    """What `path` is: "model" (a folder with config.json, or a Hub id), "adapter" (a folder, or a Hub id in the
    HF cache, with adapter_config.json and no config.json) or "gguf" (a .gguf file). A local path that is none of them is a
    `NotAModelError` saying what it lacks; a path that does not exist at all is a FileNotFoundError."""
    local = Path(path).expanduser()
    if local.is_file():
        if local.suffix.lower() == ".gguf":
            return "gguf"
        from .model_files import is_gguf

        if is_gguf(local):  # transformers would read it as a JSON config ("not a valid JSON file")
            raise NotAModelError(
                f"{path} is a GGUF file, but only files named *.gguf are read as GGUF: rename it to end in "
                f".gguf (e.g. {local.stem}.gguf)"
            )
        raise NotAModelError(
            f"{path} is a file, neither a model nor an adapter: give a model folder (config.json and weights), "
            f"an adapter folder ({ADAPTER_CONFIG}) or a .gguf file"
        )
    if local.is_dir():
        if (local / "config.json").is_file():
            return "model"
        if (local / ADAPTER_CONFIG).is_file():
            return "adapter"
        held = sorted(p.name for p in local.iterdir())
        listing = ", ".join(held[:8]) + (f", ... {len(held) - 8} more" if len(held) > 8 else "")
        raise NotAModelError(
            f"{path} is neither a model nor an adapter: it has no config.json (a model folder's) and no "
            f"{ADAPTER_CONFIG} (a PEFT adapter folder's); it holds: {listing or 'nothing'}"
        )
    if not HUB_ID.fullmatch(path) or path.lower().endswith(".gguf"):
        raise FileNotFoundError(f"{path}: no such file or folder")
    return "adapter" if _cached(path, ADAPTER_CONFIG) and not _cached(path, "config.json") else "model"


def is_adapter(path: str) -> bool:
    """`model_kind(path) == "adapter"`, False for anything `model_kind` refuses."""
    try:
        return model_kind(path) == "adapter"
    except (NotAModelError, FileNotFoundError):
        return False


def _adapter_file(adapter: str, filename: str) -> Path | None:
    """A file of an adapter folder, or of a Hub adapter (downloaded, or from the HF cache offline)."""
    local = Path(adapter).expanduser()
    if local.is_dir():
        return local / filename if (local / filename).is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(adapter, filename))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None


def adapter_config(adapter: str) -> dict:
    """The adapter's adapter_config.json, read."""
    file = _adapter_file(adapter, ADAPTER_CONFIG)
    if file is None:
        raise AdapterError(f"{adapter}: no {ADAPTER_CONFIG}: not a PEFT adapter")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AdapterError(f"{file}: not valid JSON ({e})") from e


def _missing(model: str) -> str | None:
    """Why `model` cannot be found here (None when it can, or when the Hub will be asked)."""
    if Path(model).expanduser().exists():
        return None
    if not HUB_ID.fullmatch(model):
        return "does not exist"
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE and not _cached(model, "config.json"):
        return "is neither a folder here nor a Hub model in the HF cache (the Hub is offline)"
    return None


def base_model(adapter: str, base: str | None = None) -> str:
    """The base model the adapter applies to: `base` when given, else the `base_model_name_or_path` of its
    adapter_config.json; checked to be a model folder here or a Hub id, with an error naming the adapter and
    the base when it is not."""
    where = "given for it"
    if base is None:
        base = adapter_config(adapter).get("base_model_name_or_path")
        where = f"base_model_name_or_path in its {ADAPTER_CONFIG}"
        if not base:
            raise AdapterError(
                f"adapter {adapter}: its {ADAPTER_CONFIG} names no base model (base_model_name_or_path is empty): "
                "write the base model's folder or Hub id there"
            )
    problem = _missing(base)
    if problem is None and Path(base).expanduser().exists():
        try:
            kind = model_kind(base)
        except NotAModelError:
            kind = "folder without config.json"
        problem = None if kind == "model" else f"is a {kind}, not a model folder"
    if problem:
        raise AdapterError(
            f"adapter {adapter}: its base model {base} ({where}) {problem}: put the base model there, or write "
            f"its folder or Hub id in base_model_name_or_path of {Path(adapter) / ADAPTER_CONFIG}"
        )
    return base


def adapter_sha256(adapter: str) -> str:
    """A hash of the adapter: its adapter_config.json and its weight file, byte for byte."""
    digest = hashlib.sha256()
    for name in (ADAPTER_CONFIG, *ADAPTER_WEIGHTS):
        file = _adapter_file(adapter, name)
        if file is not None:
            digest.update(name.encode())
            with open(file, "rb") as f:
                while block := f.read(1 << 24):
                    digest.update(block)
    return digest.hexdigest()


def load_adapter_model(adapter: str, *, trainable: bool = False, base: str | None = None, **kwargs):
    """The base model with the adapter applied, as a PeftModel (`trainable`: the adapter's weights train).
    `kwargs` go to the base model's from_pretrained (dtype, attn_implementation, ...)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if isinstance(kwargs.get("dtype"), str) and kwargs["dtype"] != "auto":  # "float32" -> torch.float32
        kwargs["dtype"] = getattr(torch, kwargs["dtype"])
    kwargs.setdefault("trust_remote_code", False)  # code shipped with a model runs only when asked for
    network = AutoModelForCausalLM.from_pretrained(base_model(adapter, base), **kwargs)
    return PeftModel.from_pretrained(network, adapter, is_trainable=trainable)


def load_merged(adapter: str, *, base: str | None = None, **kwargs):
    """The base model with the adapter merged into its weights (`merge_and_unload`): a plain transformers
    model, computing what the adapter model computes, every weight trainable as after from_pretrained (peft
    froze the base's)."""
    return load_adapter_model(adapter, base=base, **kwargs).merge_and_unload().requires_grad_(True)


def load_tokenizer(adapter: str, base: str | None = None):
    """The adapter's tokenizer (and chat template) where its folder has one, as `poft train` leaves it;
    else its base model's."""
    from transformers import AutoTokenizer

    own = any(_adapter_file(adapter, name) is not None for name in TOKENIZER_FILES)
    return AutoTokenizer.from_pretrained(
        adapter if own else base_model(adapter, base), trust_remote_code=False
    )


def merge_adapter(adapter: str, output: str | Path, dtype: str = "auto", base: str | None = None) -> Path:
    """Write base + adapter as one full model to `output`: safetensors weights in `dtype` ("auto": the base's
    saved dtype), config, generation config, and the adapter's tokenizer with its chat template. A
    `poft_merge.json` beside them records the adapter, its hash and the base."""
    output = Path(output)
    if output.resolve() == Path(adapter).expanduser().resolve():
        raise ValueError(f"--output {output} is the adapter folder: write the merged model to another folder")
    base = base_model(adapter, base)
    model = load_merged(adapter, base=base, dtype=dtype)
    tokenizer = load_tokenizer(adapter, base)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    record = {"adapter": str(adapter), "adapter_sha256": adapter_sha256(adapter), "base_model": base,
              "dtype": str(model.dtype).removeprefix("torch.")}  # fmt: skip
    (output / "poft_merge.json").write_text(json.dumps(record, indent=2) + "\n")
    return output
