"""An aligned model as `poft score` sees it: where it comes from, what its template does, how it is loaded.

Its identity (`AlignedModel.identity`: path, revision, chat-template and tokenizer hashes) goes into the
run identity of a score folder (`shards.check_run_config`), so a resumed run never mixes scores of two
different models or templates. Weights are loaded only when the model has rows left to score, and the
chunked LM-head path the scorer uses is checked against the model's own logits once at load time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .chat import ChatFormat
from .configs import DTYPES
from .logprobs import chunked_token_log_probs, softcap

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

    def identity(self) -> dict:
        return {
            "alias": self.alias,
            "path": self.path,
            "revision": self.revision,
            "template_hash": self.template_hash,
            "tokenizer_hash": self.tokenizer_hash,
        }

    def manifest_entry(self) -> dict:
        """The identity plus what the template does (recorded in manifest.json)."""
        return {
            **self.identity(),
            "uses_generation_markers": self.chat.uses_generation_markers,
            "end_of_turn": self.chat.end_of_turn,
        }


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


def load_aligned_models(specs: Sequence[str]) -> list[AlignedModel]:
    """Tokenizers, chat formats and identities of the aligned models (weights are loaded later, if needed)."""
    from transformers import AutoTokenizer

    models = []
    for alias, path in map(parse_model_spec, specs):
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as e:  # transformers raises OSError, ValueError, ...: keep the cause, name the model
            cause = " ".join(str(e).split())  # transformers' messages span lines; the CLI prints one
            raise AlignedModelError(
                f"aligned model {alias} ({path}): could not load its tokenizer: {cause}"
            ) from e
        chat = ChatFormat.from_tokenizer(tokenizer, alias)
        template = repr(
            (tokenizer.chat_template, chat.end_of_turn, chat.prepend_bos, chat.uses_generation_markers)
        )
        tokenizer_hash = short_hash(tokenizer.backend_tokenizer.to_str())
        models.append(AlignedModel(alias, path, chat, _revision(path), short_hash(template), tokenizer_hash))
    return models


def load_weights(model: AlignedModel, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    network = AutoModelForCausalLM.from_pretrained(model.path, dtype=dtype).to(device).eval()
    _check_chunked_head(network, model.alias)
    return network


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
    if not torch.allclose(full, ours, rtol=1e-2, atol=5e-2):  # loose for bf16; a missed scale is far off
        raise ValueError(
            f"{alias}: the model transforms its logits after the LM head (scaling or soft-capping); "
            "the chunked scorer would give wrong log-probs for it"
        )


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return TORCH_DTYPES[dtype]
