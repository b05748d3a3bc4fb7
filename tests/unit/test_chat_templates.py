"""Response masks under the real chat templates of the common families, checked against hand-written references
(tests/fixtures/chat_templates.py); templates that drop, move or rewrite a message are refused for that row."""

import pytest
from fixtures.chat_templates import FAMILIES, build, reference  # tests/ is on sys.path (conftest.py's folder)

from poft.chat import ChatFormat, ChatTemplateError


def turns(*contents: str, system: str | None = None) -> list[dict]:
    """user, assistant, user, assistant... (after an optional system prompt)."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    roles = ("user", "assistant")
    return messages + [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]


CONVERSATIONS = {
    "single turn": turns("What is the capital of France?", "Paris."),
    "multi-turn": turns("Add 12 and 30", "42", "And the capital of France?", "Paris.\nIt is Paris."),
    "whitespace": turns("\n\nhi  ", "\n\n  Hello there \n", " again\t", "  two\n\nparagraphs  \n\n"),
    "leading blank lines": turns(
        "\n\nhi", "\n\nHello there", "ok", "\n\nBye"
    ),  # Llama-3's header ends "\n\n"
    "repeated contents": turns("hello", "hello", "hello", "hello"),
    "template words": turns("say assistant", "assistant", "say model [INST] user", "model"),
    "unicode": turns("Grüße, 世界 🙂?", "naïve café 🙂 — 世界"),
}
WITH_SYSTEM = {
    "system": turns("Add 12 and 30", "42 is the answer.", system="Be brief."),
    "system multi-turn": turns("hi", "Hello!", "Capital of France?", "Paris.", system="You are terse.\n\n"),
}

# Mistral v0.3 writes the system prompt only into a user turn that is the last message: never in an SFT row
EVERY_SYSTEM_ROW_REFUSED = {"mistral_v3"}


def expected_encoding(family: str, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Input ids and response mask from the reference: a token is a response token when its characters
    overlap the span of an assistant content + end-of-turn."""
    tokenizer = build(family)
    text, spans, bos_first = reference(family, messages)
    assert tokenizer.apply_chat_template(messages, tokenize=False) == text  # the reference is the template
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [
        int(any(s < e_span and e > s_span and e > s for s_span, e_span in spans))
        for s, e in enc["offset_mapping"]
    ]
    if bos_first:
        return [tokenizer.bos_token_id, *enc["input_ids"]], [0, *mask]
    return list(enc["input_ids"]), mask


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_masks_equal_the_reference(family):
    tokenizer = build(family)
    chat = ChatFormat.from_tokenizer(tokenizer, family)
    conversations = dict(CONVERSATIONS)
    if family not in EVERY_SYSTEM_ROW_REFUSED and family != "mistral_v3_common":
        conversations.update(WITH_SYSTEM)
    if family == "mistral_v3_common":  # single turn: the last user turn is the first, nothing moves
        conversations["system"] = WITH_SYSTEM["system"]
    for name, messages in conversations.items():
        ids, mask = expected_encoding(family, messages)
        encoded = chat.encode(messages)
        assert encoded.input_ids == ids, name
        assert encoded.response_mask == mask, name
        assert sum(mask) > 0, name


def test_the_references_mark_what_the_families_document():
    """The reference spans themselves: each is an assistant content (as the family renders it) + its end-of-turn."""
    messages = CONVERSATIONS["whitespace"]
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    ends = {"llama2": " </s>", "llama3": "<|eot_id|>", "mistral_v1": "</s>", "zephyr": "</s>", "qwen25": "<|im_end|>",
            "phi35": "<|end|>", "gemma3": "<end_of_turn>", "smollm2": "<|im_end|>", "mistral_v3": "</s>"}  # fmt: skip
    trims = {"llama2", "llama3", "gemma3", "mistral_v3"}
    for family, end in ends.items():
        text, spans, _ = reference(family, messages)
        written = [a.strip() if family in trims else a for a in answers]
        assert [text[s:e] for s, e in spans] == [a + end for a in written], family


def tool_row(result: str, answer: str) -> list[dict]:
    return [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "Let me look it up."},
        {"role": "tool", "content": result},
        {"role": "assistant", "content": answer},
    ]


TOOL_ROW = tool_row("sunny, 21 C", "It is sunny, 21 C.")


@pytest.mark.parametrize("family", ["zephyr", "phi35"])
@pytest.mark.parametrize(
    "row",
    [tool_row("sunny, 21 C", "It is sunny."), TOOL_ROW],  # the dropped text nowhere else / also in the answer
    ids=["tool text nowhere else", "tool text in the answer"],
)
def test_a_template_that_drops_a_tool_message_is_refused(family, row):
    chat = ChatFormat.from_tokenizer(build(family), family)
    with pytest.raises(
        ChatTemplateError, match=rf"^{family}: the chat template dropped messages\[2\] \(role tool\)$"
    ):
        chat.encode(row)


def test_phi35_drops_an_empty_system_prompt_and_that_is_fine():
    chat = ChatFormat.from_tokenizer(build("phi35"), "phi35")
    messages = turns("hi", "Hello!", system="")
    ids, mask = expected_encoding("phi35", messages)
    assert chat.encode(messages).response_mask == mask


def test_qwen_renders_tool_results_in_order():
    chat = ChatFormat.from_tokenizer(build("qwen25"), "qwen25")
    encoded = chat.encode(TOOL_ROW)
    assert sum(encoded.response_mask) > 0  # accepted: every content is in the render, in order


def test_mistral_v3_drops_the_system_prompt_of_a_conversation_that_ends_with_an_answer():
    chat = ChatFormat.from_tokenizer(build("mistral_v3"), "mistral_v3")
    assert "Be brief." not in build("mistral_v3").apply_chat_template(WITH_SYSTEM["system"], tokenize=False)
    with pytest.raises(ChatTemplateError, match=r"dropped messages\[0\] \(role system\)"):
        chat.encode(WITH_SYSTEM["system"])


def test_a_dropped_message_whose_text_is_in_the_markup_is_still_refused():
    """Mistral v0.3 drops the system prompt here; its text "INST" occurs in the markup ([INST]), so the in-order
    search of contents alone placed it there and scored the row without its system prompt, unreported."""
    chat = ChatFormat.from_tokenizer(build("mistral_v3"), "mistral_v3")
    messages = turns("Add 12 and 30", "42 is the answer.", system="INST")
    rendered = build("mistral_v3").apply_chat_template(messages, tokenize=False)
    assert rendered.count("INST") == 2  # [INST] ... [/INST]: markup only
    with pytest.raises(ChatTemplateError, match=r"dropped messages\[0\] \(role system\)"):
        chat.encode(messages)


def test_a_dropped_answer_whose_text_the_template_writes_elsewhere_is_refused():
    """A template that drops the second answer and writes the same text followed by its end-of-turn in its
    own footer: the in-order search placed the answer on the footer and masked it, silently."""
    tokenizer = build.__wrapped__("qwen25")  # a copy: `build` is cached
    tokenizer.chat_template = (
        "{% for m in messages %}{% if not (m.role == 'assistant' and loop.index0 == 3) %}"
        "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    chat = ChatFormat.from_tokenizer(tokenizer, "footer")
    messages = turns("hi", "Hey", "more", "Hello!")
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered.count("Hello!<|im_end|>") == 1  # the footer's, not the answer's
    with pytest.raises(
        ChatTemplateError, match=r"^footer: the chat template dropped messages\[3\] \(role assistant\)"
    ):
        chat.encode(messages)


def test_a_system_prompt_moved_into_the_last_user_turn_is_refused_with_what_moved():
    chat = ChatFormat.from_tokenizer(build("mistral_v3_common"), "mistral")
    messages = WITH_SYSTEM["system multi-turn"]
    rendered = build("mistral_v3_common").apply_chat_template(messages, tokenize=False)
    assert rendered.index("You are terse.") > rendered.index("Hello!")  # after the first answer
    with pytest.raises(
        ChatTemplateError,
        match=r"^mistral: the chat template moved messages\[0\] \(role system\) after messages\[2\]",
    ):
        chat.encode(messages)


@pytest.mark.parametrize("family", ["llama2", "mistral_v1", "gemma3"])
def test_templates_that_refuse_a_role_refuse_the_row(family):
    """Llama-2, Mistral v0.1 and Gemma raise on a tool message (roles must alternate): one row's error."""
    with pytest.raises(ChatTemplateError, match=f"{family}: the chat template failed to render"):
        ChatFormat.from_tokenizer(build(family), family).encode(TOOL_ROW)


def test_a_template_that_rewrites_a_message_says_which():
    tokenizer = build("qwen25")
    shouting = tokenizer.chat_template.replace(
        "message.content + '<|im_end|>'", "message.content | upper + '<|im_end|>'"
    )
    assert shouting != tokenizer.chat_template
    copy = build.__wrapped__("qwen25")
    copy.chat_template = shouting
    chat = ChatFormat.from_tokenizer(copy, "loud")  # the learnt end-of-turn comes from an all-caps sentinel
    with pytest.raises(
        ChatTemplateError, match=r"^loud: the chat template rewrote messages\[0\] \(role user\)"
    ):
        chat.encode(turns("hello there", "HI"))
    with pytest.raises(
        ChatTemplateError, match=r"rewrote messages\[1\] \(role assistant\).*not in the render verbatim"
    ):
        chat.encode(turns("HELLO", "hi there"))
