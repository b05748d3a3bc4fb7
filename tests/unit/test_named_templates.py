"""The chat templates shipped with poft (poft.templates): each is its family's official text, renders what the
family's documented format says (hand-written references in tests/fixtures/chat_templates.py), and gives
poft.chat the response mask of the reference; names resolve to the packaged files; `poft score` can give
an aligned model one (load_aligned_models), so a base model saved without a template can be scored."""

import json
import re
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
from fixtures.chat_templates import FAMILIES, _chatml, _Writer, build, reference  # tests/ is on sys.path

from poft.aligned import load_aligned_models
from poft.chat import ChatFormat, ChatTemplateError
from poft.templates import TEMPLATE_NAMES, resolve_chat_template, template_path
from poft.tiny import build_tokenizer

ROOT = Path(__file__).resolve().parents[2]

# name -> the fixture family whose official text and tiny tokenizer it uses (chatml: SmolLM2's ChatML
# tokenizer, whose template adds a default system prompt that plain ChatML does not)
FAMILY = {"gemma": "gemma3", "llama3": "llama3", "mistral": "mistral_v1", "zephyr": "zephyr",
          "qwen2.5": "qwen25", "phi3.5": "phi35", "chatml": "smollm2"}  # fmt: skip

# teknium/OpenHermes-2.5-Mistral-7B, tokenizer_config.json: ChatML with no default system prompt
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def official(name: str) -> str:
    return CHATML if name == "chatml" else FAMILIES[FAMILY[name]].template


def turns(*contents: str, system: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    return messages + [{"role": ("user", "assistant")[i % 2], "content": c} for i, c in enumerate(contents)]


CONVERSATIONS = {
    "single turn": turns("What is the capital of France?", "Paris."),
    "multi-turn": turns("Add 12 and 30", "42", "And the capital of France?", "Paris.\nIt is Paris."),
    "whitespace": turns("\n\nhi  ", "\n\n  Hello there \n", " again\t", "  two\n\nparagraphs  \n\n"),
    "unicode": turns("Grüße, 世界 🙂?", "naïve café 🙂 — 世界"),
    "system": turns("Add 12 and 30", "42 is the answer.", system="Be brief."),  # every family here has one
    "system multi-turn": turns("hi", "Hello!", "Capital of France?", "Paris.", system="You are terse.\n\n"),
}


def chatml_reference(messages: list[dict]) -> tuple[str, list[tuple[int, int]], bool]:
    """Plain ChatML (OpenHermes): Qwen's and SmolLM2's format without a default system turn."""
    w = _Writer()
    _chatml(messages, w, default_system=None)
    return w.text, w.spans, False


def expected(name: str, messages: list[dict]) -> tuple[str, list[tuple[int, int]], bool]:
    """(render, response spans, whether the model sees a BOS the render does not hold), by hand."""
    return chatml_reference(messages) if name == "chatml" else reference(FAMILY[name], messages)


@pytest.fixture(scope="module")
def tokenizers() -> dict:
    """name -> a fresh tiny tokenizer of the family whose template is the packaged file's text."""
    made = {}
    for name in TEMPLATE_NAMES:
        tokenizer = build.__wrapped__(FAMILY[name])  # not the cached one: other tests share it
        tokenizer.chat_template = template_path(name).read_text(encoding="utf-8")
        made[name] = tokenizer
    return made


def test_the_names_are_the_packaged_files_and_the_families_above():
    assert sorted(FAMILY) == sorted(TEMPLATE_NAMES)
    packaged = sorted(p.name for p in files("poft.templates").iterdir() if p.name.endswith(".jinja"))
    assert packaged == sorted(f"{name}.jinja" for name in TEMPLATE_NAMES)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_each_file_is_the_official_text_byte_for_byte(name):
    """The template hash of a model given its own family's template equals that of its own template."""
    assert template_path(name).read_text(encoding="utf-8") == official(name)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_renders_equal_the_reference(name, tokenizers):
    tokenizer = tokenizers[name]
    for what, messages in CONVERSATIONS.items():
        text, spans, _ = expected(name, messages)
        assert tokenizer.apply_chat_template(messages, tokenize=False) == text, what
        # the generation prompt: the reference up to the last answer (Mistral writes none: the space
        # before an answer is the answer's first piece)
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        cut = text[: spans[-1][0]]
        assert prompt == (cut.removesuffix(" ") if name == "mistral" else cut), what


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_chat_format_masks_exactly_the_answers_and_their_end_of_turn(name, tokenizers):
    tokenizer = tokenizers[name]
    chat = ChatFormat.from_tokenizer(tokenizer, name)
    for what, messages in CONVERSATIONS.items():
        text, spans, bos_first = expected(name, messages)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        mask = [
            int(any(s < end and e > start and e > s for start, end in spans))
            for s, e in enc["offset_mapping"]
        ]
        ids = list(enc["input_ids"])
        if bos_first:
            ids, mask = [tokenizer.bos_token_id, *ids], [0, *mask]
        encoded = chat.encode(messages)
        assert (encoded.input_ids, encoded.response_mask) == (ids, mask), what
        assert sum(mask) > 0, what


def test_names_resolve_to_the_packaged_files_and_paths_stay(tmp_path, monkeypatch):
    for name in TEMPLATE_NAMES:
        assert resolve_chat_template(name) == str(template_path(name))
        assert Path(resolve_chat_template(name)).is_file()
    file = tmp_path / "mine.jinja"
    file.write_text("{{ messages }}")
    assert resolve_chat_template(str(file)) == str(file)
    folder = str(tmp_path)  # a tokenizer folder: TRL's --chat_template_path copies its template
    assert resolve_chat_template(folder) == folder
    assert resolve_chat_template(None) is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gemma").mkdir()
    assert resolve_chat_template("gemma") == str(template_path("gemma"))  # a name wins
    assert resolve_chat_template("./gemma") == "./gemma"


@pytest.mark.parametrize("value", ["gemma3", "no/such/file.jinja", ""])
def test_anything_else_is_refused_naming_the_value_and_the_names(value):
    with pytest.raises(
        ValueError, match=re.escape(f"chat template {value!r}: neither a template name (chatml, ")
    ):
        resolve_chat_template(value)
    with pytest.raises(ValueError, match="the named ones are chatml, gemma"):
        template_path(value)


def test_the_names_load_without_torch_and_the_wheel_carries_the_files():
    """TEMPLATE_NAMES is read by --help, which must not import torch; pyproject ships the .jinja files."""
    code = "import sys, poft.templates; assert not {'torch', 'transformers', 'trl'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert package_data["poft.templates"] == ["*.jinja"]


# ------------------------------------------------------------------ the score side: load_aligned_models


@pytest.fixture(scope="module")
def base_and_instruct(tmp_path_factory) -> tuple[Path, Path]:
    """One tiny Llama-3-style model saved twice: without a chat template (a base model) and with the
    official Llama-3 one (as an instruct model ships it)."""
    from poft.tiny import build_model

    root = tmp_path_factory.mktemp("named-templates")
    tokenizer = build_tokenizer("llama3")
    model = build_model(tokenizer, hidden_size=16, num_layers=1)
    folders = root / "base", root / "instruct"
    for folder, template in zip(folders, (None, official("llama3")), strict=True):
        tokenizer.chat_template = template
        tokenizer.save_pretrained(folder)
        model.save_pretrained(folder)
    return folders


def test_a_base_model_is_scored_with_a_named_template(base_and_instruct):
    base, instruct = base_and_instruct
    with pytest.raises(ChatTemplateError, match="base: the tokenizer has no chat template"):
        load_aligned_models([f"base={base}"])
    (given,) = load_aligned_models([f"base={base}"], ["llama3"])  # bare: the only model
    (own,) = load_aligned_models([f"base={instruct}"])
    assert given.template_hash == own.template_hash  # the official text: the same template identity
    assert given.chat.end_of_turn == "<|eot_id|>"
    for messages in CONVERSATIONS.values():
        assert given.chat.encode(messages) == own.chat.encode(messages)
    entry = given.manifest_entry()
    assert entry["chat_template"] == "llama3" and own.manifest_entry()["chat_template"] is None
    json.dumps(entry)  # goes into manifest.json


def test_a_template_per_alias_replaces_the_tokenizers(base_and_instruct, tmp_path):
    base, instruct = base_and_instruct
    file = tmp_path / "plain.jinja"
    file.write_text(official("chatml"))
    a, b = load_aligned_models([f"a={instruct}", f"b={base}"], [f"b={file}"])
    assert (a.chat_template, b.chat_template) == (None, str(file))  # a keeps its tokenizer's own
    assert (a.chat.end_of_turn, b.chat.end_of_turn) == ("<|eot_id|>", "<|im_end|>")
    assert b.chat.render(CONVERSATIONS["single turn"])[0].startswith("<|im_start|>user\n")


def test_template_specs_are_checked_before_any_tokenizer_loads(base_and_instruct, tmp_path):
    base, instruct = base_and_instruct
    specs = [f"a={base}", f"b={instruct}"]
    with pytest.raises(ValueError, match=r"'c=gemma': no aligned model is called 'c' \(aliases: a, b\)"):
        load_aligned_models(specs, ["c=gemma"])
    with pytest.raises(
        ValueError, match=r"'gemma': with 2 models, write ALIAS=NAME_OR_FILE \(aliases: a, b\)"
    ):
        load_aligned_models(specs, ["gemma"])
    with pytest.raises(ValueError, match="two templates for a"):
        load_aligned_models(specs, ["a=gemma", "a=llama3"])
    with pytest.raises(ValueError, match=r"aligned model a: chat template 'gema': neither a template name"):
        load_aligned_models(specs, ["a=gema"])
    with pytest.raises(ValueError, match="is a folder: give a template name or a .jinja file"):
        load_aligned_models(specs, [f"a={tmp_path}"])
    with pytest.raises(ValueError, match="no aligned model is called 'a'"):  # nothing was loaded first
        load_aligned_models([f"b={tmp_path / 'missing'}"], ["a=gemma"])


def test_poft_score_takes_a_named_template_on_the_command_line(base_and_instruct, tmp_path, capsys):
    """`poft score --chat_template NAME` scores a base model exactly as the same weights with that template."""
    from datasets import load_from_disk

    from poft.cli import main

    base, instruct = base_and_instruct
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CONVERSATIONS.values()))
    common = ["--dataset", str(data), "--dtype", "float32", "--no-progress"]
    assert main(["score", *common, "--model", f"m={base}", "--output", str(tmp_path / "b")]) == 1
    assert "no chat template" in capsys.readouterr().err
    argv = [
        "score",
        *common,
        "--model",
        f"m={base}",
        "--chat_template",
        "llama3",
        "--output",
        str(tmp_path / "b"),
    ]
    assert main(argv) == 0
    assert main(["score", *common, "--model", f"m={instruct}", "--output", str(tmp_path / "i")]) == 0
    given, own = load_from_disk(str(tmp_path / "b")), load_from_disk(str(tmp_path / "i"))
    assert given["m_logp_sum"] == own["m_logp_sum"] and given["m_n_tokens"] == own["m_n_tokens"]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["models"][0]["chat_template"] == "llama3"
