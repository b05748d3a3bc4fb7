"""What poft reads from files it is given cannot run code: a chat template renders only in transformers' sandboxed
Jinja environment; a `--config` YAML is read as plain data. Each payload below is live (run outside the sandbox /
by an unsafe loader it writes a marker file, checked here), so each test fails if the protection goes."""

import jinja2
import pytest
import yaml
from jinja2.sandbox import SecurityError
from jinja2.utils import Cycler

from poft.chat import ChatFormat, ChatTemplateError
from poft.cli import parse_command

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MARKED = (  # generation markers: rendered by transformers' render_jinja_template, not apply_chat_template
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}{% generation %}"
    "{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}\n{% endfor %}"
)
CONVERSATION = [
    {"role": "user", "content": "add 2 and 3"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "add 1 and 1"},
    {"role": "assistant", "content": "2"},
]


def escape(marker) -> str:
    """A template expression that, unsandboxed, reaches Python's `open` through jinja's `cycler` global."""
    return "{{ cycler.__init__.__globals__.__builtins__.open('" + str(marker) + "', 'w').close() }}"


def test_the_payload_runs_outside_the_sandbox(tmp_path):
    """The check that the tests below can fail: plain jinja2 runs the escape."""
    marker = tmp_path / "ran"
    jinja2.Environment().from_string(escape(marker)).render(cycler=Cycler)
    assert marker.exists()


@pytest.mark.parametrize("payload", ["escape", "{{ ().__class__.__mro__[1].__subclasses__() }}"])
def test_a_chat_template_cannot_reach_python(tokenizers, tmp_path, payload):
    marker = tmp_path / "ran"
    tokenizer = tokenizers["chatml"]
    saved = tokenizer.chat_template
    tokenizer.chat_template = (escape(marker) if payload == "escape" else payload) + CHATML
    try:
        with pytest.raises(
            ChatTemplateError, match="the chat template failed to render: access to attribute"
        ) as e:
            ChatFormat.from_tokenizer(tokenizer, "evil")
    finally:
        tokenizer.chat_template = saved
    assert isinstance(e.value.__cause__, SecurityError)
    assert not marker.exists()


def test_a_template_with_generation_markers_is_sandboxed_too(tokenizers, tmp_path):
    """Learning the template renders 1-2 messages; the escape waits for a 4-message conversation, which goes
    through render_jinja_template (the generation-marker path)."""
    marker = tmp_path / "ran"
    tokenizer = tokenizers["chatml"]
    saved = tokenizer.chat_template
    tokenizer.chat_template = MARKED + "{% if messages|length > 3 %}" + escape(marker) + "{% endif %}"
    try:
        chat = ChatFormat.from_tokenizer(tokenizer, "evil")
        assert chat.uses_generation_markers
        with pytest.raises(ChatTemplateError, match="access to attribute '__init__'") as e:
            chat.encode(CONVERSATION)
    finally:
        tokenizer.chat_template = saved
    assert isinstance(e.value.__cause__, SecurityError)
    assert not marker.exists()


def test_a_yaml_config_with_a_python_tag_is_refused_not_run(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(
        f'keep_top: !!python/object/apply:builtins.exec ["open({str(marker)!r}, \\"w\\").close()"]\n'
    )
    yaml.unsafe_load(evil.read_text())  # live: an unsafe loader runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(SystemExit) as stopped:
        parse_command(["filter", str(tmp_path), "--output", str(tmp_path / "out"), "--config", str(evil)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"config file {evil} cannot be read as plain YAML" in err and "python/object/apply" in err
    assert not marker.exists()
