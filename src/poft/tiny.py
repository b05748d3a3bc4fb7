"""Tiny offline models and tokenizers, built from a config and a few KB of text (no Hub download).

Used by the tests, the demo and the benchmarks. Three chat-template families cover what real aligned
models do: ChatML with `{% generation %}` markers (Qwen-like), a Llama-3-style template that writes BOS
itself and has no markers, and a Zephyr-style template (plain-text role tags, `</s>` closes every turn,
the tokenizer adds BOS, SentencePiece-like metaspace pre-tokenizer).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}{{- '\\n' -}}"
    "{%- else -%}{{- message['content'] + '<|im_end|>' + '\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

LLAMA3_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)

ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)


@dataclass(frozen=True)
class TemplateFamily:
    """Special tokens and template of one chat family."""

    template: str
    bos: str | None
    eos: str
    pad: str
    extra_special: tuple[str, ...]
    adds_bos: bool
    metaspace: bool


FAMILIES: dict[str, TemplateFamily] = {
    "chatml": TemplateFamily(
        CHATML_TEMPLATE, None, "<|im_end|>", "<|endoftext|>", ("<|im_start|>",), False, False
    ),
    "llama3": TemplateFamily(
        LLAMA3_TEMPLATE,
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|finetune_pad|>",
        ("<|start_header_id|>", "<|end_header_id|>"),
        True,
        False,
    ),
    "zephyr": TemplateFamily(ZEPHYR_TEMPLATE, "<s>", "</s>", "<unk>", (), True, True),
}

DEFAULT_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Answer the question in one word. "
    "Reverse the string, sort the numbers, add 12 and 30, what is the capital of France? Paris. "
    "user assistant system: hello, how are you? I am fine, thank you. 0123456789 +-*/=()[]{}<>.,;:!?'\"\n"
)


def build_tokenizer(
    family: str = "chatml", corpus: Iterable[str] | None = None, vocab_size: int = 512
) -> PreTrainedTokenizerFast:
    """Train a small BPE tokenizer for `family` on `corpus` (defaults to a built-in text); offline, ~ms."""
    fam = FAMILIES[family]
    specials = [t for t in (fam.bos, fam.eos, fam.pad, *fam.extra_special) if t]
    tok = Tokenizer(models.BPE(unk_token="<unk>" if fam.metaspace else None))
    if fam.metaspace:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
        alphabet = sorted({*map(chr, range(32, 127)), "\n", "\t", *"".join(corpus or [])})
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    tok.train_from_iterator([DEFAULT_CORPUS, *(corpus or [])], trainer=trainer)
    if fam.adds_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{fam.bos} $A",
            pair=f"{fam.bos} $A $B",
            special_tokens=[(fam.bos, tok.token_to_id(fam.bos))],
        )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=fam.bos,
        eos_token=fam.eos,
        pad_token=fam.pad,
        unk_token="<unk>" if fam.metaspace else None,
        additional_special_tokens=list(fam.extra_special) or None,
    )
    hf.chat_template = fam.template
    return hf


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 1024,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised Llama-architecture causal LM sized for CPU tests, matched to `tokenizer`."""
    import torch

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
