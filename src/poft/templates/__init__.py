"""Chat templates shipped with poft, by name, for models whose tokenizer has none (a base model) or the wrong one.

A base model (gemma-3-270m, Llama-3-8B, Mistral-7B-v0.1, ...) has no chat template, and poft needs one both
to score rows with it and to train it: the template decides which tokens are the response (assistant
contents + end-of-turn). Each file here is the `chat_template` of its family's tokenizer_config.json, byte
for byte, so a model given its own family's template renders (and hashes) as with its own; where the
official text writes the BOS or EOS token, it does so through `bos_token` / `eos_token`, which transformers
fills in from the tokenizer.

Name, whose tokenizer_config.json the text is from, end-of-turn token, where a system prompt goes:
- `gemma`: google/gemma-3-*-it (Gemma 3). `<end_of_turn>`. Before the first user turn's text; contents
  trimmed; the template writes `bos_token`.
- `llama3`: meta-llama/Meta-Llama-3-8B-Instruct (Llama 3.0). `<|eot_id|>`. Its own turn; contents trimmed;
  the template writes `bos_token`.
- `mistral`: mistralai/Mistral-7B-Instruct-v0.1 and Mixtral-8x7B-Instruct-v0.1 (` [INST] ... [/INST]`).
  `eos_token` (`</s>`). Before the first user turn's text; the template writes `bos_token`.
- `zephyr`: HuggingFaceH4/zephyr-7b-beta (`<|user|>`, `<|assistant|>` tags). `eos_token` (`</s>`) closes
  every turn. Its own `<|system|>` turn.
- `chatml`: teknium/OpenHermes-2.5-Mistral-7B (plain ChatML, `<|im_start|>role`). `<|im_end|>`. Its own
  turn; none when the row has none.
- `qwen2.5`: Qwen/Qwen2.5-7B-Instruct (ChatML). `<|im_end|>`. Its own turn; Qwen's default system prompt
  when the row has none.
- `phi3.5`: microsoft/Phi-3.5-mini-instruct (the Phi-3 format). `<|end|>`. Its own turn; an empty one is
  left out.

Which to use: the template of the model's family, the one its vocabulary has the marker tokens for
(`<start_of_turn>`/`<end_of_turn>` are single tokens in Gemma's vocabulary and nowhere else); under another
family's template those markers are split into pieces of ordinary text: it works, but no model was
trained on it. To train a base model: its family's template (`gemma` for a Gemma base). To score with an
aligned model: the template it was aligned with, which is normally already in its tokenizer; give one only
for a model saved without it. `chatml` is the usual format to teach a base model whose family has none
(its `<|im_start|>`/`<|im_end|>` are then new: added as tokens, or split as text). Newer releases of these families ship other templates: Llama 3.1+ (a dated system
header), Mistral v0.3 (`[INST]` without the leading space; its system prompt only in a last user turn, so
an SFT row loses it), Gemma 1/2 (no system role): use their own tokenizers' templates.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

TEMPLATE_NAMES = ("chatml", "gemma", "llama3", "mistral", "phi3.5", "qwen2.5", "zephyr")


def template_path(name: str) -> Path:
    """The packaged `.jinja` file of the template called `name` (one of TEMPLATE_NAMES)."""
    if name not in TEMPLATE_NAMES:
        raise ValueError(
            f"no chat template is called {name!r}; the named ones are {', '.join(TEMPLATE_NAMES)}"
        )
    return Path(str(files(__name__).joinpath(f"{name}.jinja")))


def resolve_chat_template(value: str | None) -> str | None:
    """A template name -> its packaged file's path; an existing file or folder -> unchanged; None -> None.

    A name wins over a file or folder of the same name in the working directory (write `./gemma` for that).
    Anything else is refused, naming the value and the known names."""
    if value is None:
        return None
    if value in TEMPLATE_NAMES:
        return str(template_path(value))
    if value and Path(value).exists():
        return value
    raise ValueError(
        f"chat template {value!r}: neither a template name ({', '.join(TEMPLATE_NAMES)}) "
        "nor an existing file or folder"
    )
