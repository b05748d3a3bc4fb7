"""An aligned model as `poft score` sees it: where it comes from, what its template does, how it is loaded.

A model is an HF folder, a Hub id, a single `.gguf` file (transformers dequantises it; the file's
sha256 is its revision), or a LoRA adapter folder (`poft.adapters`: scored as base + adapter merged, with the
adapter folder's tokenizer and template; its revision holds the adapter's hash and its base's revision). Its chat template is its tokenizer's, or one given for it (`ALIAS=NAME_OR_FILE`: a
poft.templates name or a .jinja file), which lets a base model, saved without a template, be scored. Its
identity (`AlignedModel.identity`: path, revision, chat-template and tokenizer hashes) goes into the run
identity of a score folder (`shards.check_run_config`), so a resumed run never mixes scores of two
different models or templates; the manifest also records the template name or file given. Weights are
loaded only when the model has rows left to score, and the chunked LM-head path the scorer uses is checked
against the model's own logits once at load time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .adapters import AdapterError, adapter_sha256, base_model, is_adapter, load_merged, load_tokenizer
from .chat import ChatFormat
from .configs import DTYPES
from .console import say
from .logprobs import chunked_token_log_probs, softcap
from .model_files import gguf_problem
from .templates import resolve_chat_template

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
assert set(TORCH_DTYPES) == set(DTYPES) - {"auto"}, "configs.DTYPES and the dtypes poft can load differ"


class AlignedModelError(ValueError):
    """An aligned model's folder or Hub id cannot be used (no tokenizer, for example); names the model."""


@dataclass
class AlignedModel:
    """One aligned model as the scorer sees it: where it comes from and what its template does."""

    alias: str
    path: str
    chat: ChatFormat
    revision: str
    template_hash: str
    tokenizer_hash: str
    file_sha256: str | None = None  # a .gguf file's full hash (its revision is the first 16 hex digits)
    chat_template: str | None = None  # the template name or file given for it; None: its tokenizer's own
    base_model: str | None = None  # a LoRA adapter's base model (its weights are base + adapter)

    def identity(self) -> dict:
        return {
            "alias": self.alias,
            "path": self.path,
            "revision": self.revision,
            "template_hash": self.template_hash,
            "tokenizer_hash": self.tokenizer_hash,
            **({"base_model": self.base_model} if self.base_model else {}),
        }

    def manifest_entry(self) -> dict:
        """The identity plus what the template does (recorded in manifest.json)."""
        return {
            **self.identity(),
            "uses_generation_markers": self.chat.uses_generation_markers,
            "end_of_turn": self.chat.end_of_turn,
            "chat_template": self.chat_template,
            **({"file_sha256": self.file_sha256} if self.file_sha256 else {}),
        }

    def from_pretrained_args(self) -> tuple[str, dict]:
        """(name_or_path, kwargs) for transformers' from_pretrained: a .gguf file is its folder + gguf_file."""
        return gguf_location(self.path) or (self.path, {})


def parse_model_spec(spec: str) -> tuple[str, str]:
    """`path/to/llama3` -> ("llama3", "path/to/llama3"); `alias=path` -> ("alias", "path")."""
    alias, sep, path = spec.partition("=")
    if not sep:
        path, alias = spec, Path(spec.rstrip("/\\")).name
    if not alias or not path:
        raise ValueError(f"--model {spec!r}: expected PATH_OR_HUB_ID or ALIAS=PATH_OR_HUB_ID")
    return alias, path


def alias_clashes(specs: Sequence[str]) -> list[str]:
    aliases = [parse_model_spec(s)[0] for s in specs]
    return sorted({a for a in aliases if aliases.count(a) > 1})


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def gguf_location(path: str) -> tuple[str, dict] | None:
    """`dir/model.gguf` -> ("dir", {"gguf_file": "model.gguf"}); None for anything that is not a .gguf path."""
    if not path.lower().endswith(".gguf"):
        return None
    file = Path(path)
    if not file.is_file():
        raise AlignedModelError(f"{path}: no such GGUF file")
    return str(file.parent), {"gguf_file": file.name}


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def _revision(path: str) -> str:
    """The Hub commit a model resolves to, or for a local folder a hash of its config and weight file sizes."""
    from transformers.utils import cached_file

    config_file = Path(cached_file(path, "config.json"))
    parts = config_file.parts
    if "snapshots" in parts:
        return parts[parts.index("snapshots") + 1]
    weights = sorted((p.name, p.stat().st_size) for p in config_file.parent.glob("*.safetensors"))
    weights += sorted((p.name, p.stat().st_size) for p in config_file.parent.glob("*.bin"))
    return "local-" + short_hash(config_file.read_text() + repr(weights))


def parse_template_specs(entries: Sequence[str], aliases: Sequence[str]) -> dict[str, str]:
    """`ALIAS=NAME_OR_FILE` entries (a bare `NAME_OR_FILE` when there is one model) -> {alias: name or file}."""
    chosen: dict[str, str] = {}
    for entry in entries:
        alias, sep, value = entry.partition("=")
        if not sep:
            if len(aliases) != 1:
                raise ValueError(
                    f"--chat_template {entry!r}: with {len(aliases)} models, write ALIAS=NAME_OR_FILE "
                    f"(aliases: {', '.join(aliases)})"
                )
            alias, value = aliases[0], entry
        if alias not in aliases:
            raise ValueError(
                f"--chat_template {entry!r}: no aligned model is called {alias!r} (aliases: {', '.join(aliases)})"
            )
        if alias in chosen:
            raise ValueError(f"--chat_template: two templates for {alias} ({chosen[alias]!r} and {value!r})")
        chosen[alias] = value
    return chosen


def read_chat_template(value: str) -> str:
    """The text of a template given by name (poft.templates) or as a file."""
    path = Path(resolve_chat_template(value))
    if not path.is_file():
        raise ValueError(f"chat template {value!r} is a folder: give a template name or a .jinja file")
    return path.read_text(encoding="utf-8")


def load_aligned_models(
    specs: Sequence[str], chat_templates: Sequence[str] | None = None
) -> list[AlignedModel]:
    """Tokenizers, chat formats and identities of the aligned models (weights are loaded later, if needed).

    `chat_templates`: `ALIAS=NAME_OR_FILE` entries (a bare `NAME_OR_FILE` when there is one model); each
    replaces that model's tokenizer template, and so its template hash."""
    from transformers import AutoTokenizer

    parsed = [parse_model_spec(s) for s in specs]
    given = parse_template_specs(chat_templates or (), [alias for alias, _ in parsed])
    texts = {}
    for alias, value in given.items():  # read before any tokenizer is loaded: a typo fails at once
        try:
            texts[alias] = read_chat_template(value)
        except (OSError, ValueError) as e:
            raise ValueError(f"--chat_template for aligned model {alias}: {e}") from e
    models = []
    for alias, path in parsed:
        try:
            gguf = gguf_location(path)
        except AlignedModelError as e:
            raise AlignedModelError(f"aligned model {alias}: {e}") from e
        base = _base_model(alias, path) if not gguf else None
        if not gguf:
            _refuse_remote_code(alias, path)
        try:  # trust_remote_code=False: never run code shipped with a model (nor ask whether to)
            if gguf:
                tokenizer = AutoTokenizer.from_pretrained(gguf[0], trust_remote_code=False, **gguf[1])
            elif base:
                tokenizer = load_tokenizer(path, base)
            else:
                tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        except Exception as e:  # transformers raises OSError, ValueError, ...: keep the cause, name the model
            cause = load_failure(path, bool(gguf), e)
            raise AlignedModelError(
                f"aligned model {alias} ({path}): could not load its tokenizer: {cause}"
            ) from e
        if alias in texts:
            tokenizer.chat_template = texts[alias]
        chat = ChatFormat.from_tokenizer(tokenizer, alias)
        template = repr(
            (tokenizer.chat_template, chat.end_of_turn, chat.prepend_bos, chat.uses_generation_markers)
        )
        tokenizer_hash = short_hash(tokenizer.backend_tokenizer.to_str())
        sha = file_sha256(path) if gguf else None
        if sha:
            revision = f"gguf-sha256-{sha[:16]}"
        elif base:  # the adapter's own hash and its base's revision: either changing changes the scores
            revision = f"adapter-sha256-{adapter_sha256(path)[:16]}+{_revision(base)}"
        else:
            revision = _revision(path)
        models.append(
            AlignedModel(
                alias, path, chat, revision, short_hash(template), tokenizer_hash, sha, given.get(alias), base
            )
        )
    return models


def _refuse_remote_code(alias: str, path: str) -> None:
    """`poft score` runs no Python code shipped with a model: a local folder whose config.json maps a class to
    its own code (`auto_map`) for a model_type transformers does not know is refused here, in words that fit
    `poft score` (which has no --trust_remote_code); transformers refuses a Hub id the same way."""
    import json

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = Path(path) / "config.json"
    try:
        settings = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    except (OSError, ValueError):  # transformers names a config.json it cannot read
        return
    if (
        isinstance(settings, dict)
        and settings.get("auto_map")
        and settings.get("model_type") not in CONFIG_MAPPING
    ):
        raise AlignedModelError(
            f"aligned model {alias} ({path}): its config.json needs Python code shipped with the model "
            f"(auto_map {sorted(settings['auto_map'])} for model_type {settings.get('model_type')!r}, which "
            "transformers does not have); poft score never runs code that comes with a model: convert it to a "
            "transformers architecture"
        )


def load_failure(path: str, gguf: bool, error: Exception) -> str:
    """Why a model could not be loaded, on one line: a GGUF file cut short is said to be, with its size
    (transformers' own error is numpy's "cannot reshape array of size ..."); otherwise the library's message."""
    if gguf and (problem := gguf_problem(path)):
        return f"{path} {problem}: download it again"
    return " ".join(str(error).split())  # transformers' messages span lines; the CLI prints one


def _base_model(alias: str, path: str) -> str | None:
    """A LoRA adapter's base model (checked to be there), None for a model."""
    if not is_adapter(path):
        return None
    try:
        base = base_model(path)
    except AdapterError as e:
        raise AlignedModelError(f"aligned model {alias}: {e}") from e
    say(f"aligned model {alias}: a LoRA adapter on {base}, scored as base + adapter (merged)")
    return base


def load_weights(model: AlignedModel, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    path, kwargs = model.from_pretrained_args()
    if "gguf_file" in kwargs:
        kwargs.update(_dequantized())
    try:
        if model.base_model:  # a LoRA adapter: base + adapter, merged
            network = load_merged(path, base=model.base_model, dtype=dtype).to(device).eval()
        else:
            network = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, trust_remote_code=False, **kwargs
            )
            network = network.to(device).eval()
    except Exception as e:  # a weight file cut short or damaged (safetensors' own error type), ...
        cause = load_failure(model.path, "gguf_file" in kwargs, e)
        raise AlignedModelError(
            f"aligned model {model.alias} ({model.path}): could not load its weights: {cause}"
        ) from e
    _check_chunked_head(network, model.alias)
    return network


def _dequantized() -> dict:
    """GGUF weights unpacked to plain tensors in the scoring dtype: the chunked LM head reads `head.weight`,
    which transformers' packed GGUF layers (used when the `kernels` package is installed) keep as raw blocks."""
    try:
        from transformers import GgufConfig
    except ImportError:  # transformers before packed GGUF layers always unpacks
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _check_chunked_head(network: torch.nn.Module, alias: str) -> None:
    """The chunked path (decoder -> output embeddings) must give the model's own logits: some models scale
    or soft-cap logits after the head, which this scorer does not reproduce; refuse those loudly."""
    ids = torch.arange(3, 19, device=network.device)[None] % network.config.vocab_size
    with torch.inference_mode():
        full = network(input_ids=ids).logits.float()
        hidden = network.get_decoder()(input_ids=ids).last_hidden_state[0]
        labels = torch.arange(hidden.shape[0], device=network.device) % network.config.vocab_size
        head = network.get_output_embeddings()
        ours = chunked_token_log_probs(hidden, head.weight, labels, head.bias, softcap(network), 4)
        full = torch.log_softmax(full[0], dim=-1).gather(-1, labels[:, None]).squeeze(-1)
    if not torch.isfinite(full).all():
        raise ValueError(f"{alias}: the model's logits are NaN or infinite: its weights hold NaN/inf (a damaged or "
                         "diverged checkpoint)")  # fmt: skip
    if not torch.allclose(full, ours, rtol=1e-2, atol=5e-2):  # loose for bf16; a missed scale is far off
        raise ValueError(
            f"{alias}: the model transforms its logits after the LM head (scaling or soft-capping); "
            "the chunked scorer would give wrong log-probs for it"
        )


def resolve_dtype(dtype: str, device: torch.device, bf16_cpu: bool | None = None) -> torch.dtype:
    """ "auto": bf16 on CUDA and on CPUs with bf16 instructions (AMX / AVX512-BF16, 2-3x faster there),
    float32 elsewhere; the choice is printed once. Any other value is taken as given."""
    if dtype == "auto":
        from .console import say_once
        from .device import cpu_has_bf16

        if device.type == "cuda":
            chosen, why = torch.bfloat16, "a CUDA GPU"
        elif device.type == "cpu" and (cpu_has_bf16() if bf16_cpu is None else bf16_cpu):
            chosen, why = torch.bfloat16, "this CPU has bf16 instructions"
        else:
            chosen, why = torch.float32, f"no bf16 hardware on {device.type}"
        name = str(chosen).removeprefix("torch.")
        say_once(f"--dtype auto: scoring in {name} ({why}; --dtype float32 for full-precision scores)")
        return chosen
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return TORCH_DTYPES[dtype]
