"""Response masks decoded back to text equal the assistant contents + end-of-turn, under every template."""

import pytest

from poft.chat import ChatFormat, ChatTemplateError
from poft.readers import RowError, validate_messages
from poft.tiny import CHATML_TEMPLATE, build_tokenizer

EOT = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "zephyr": "</s>"}

CONVERSATIONS = [
    [{"role": "user", "content": "Reverse abc"}, {"role": "assistant", "content": "cba"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add 12 and 30"},
        {"role": "assistant", "content": "42 is the answer."},
        {"role": "user", "content": "And the capital of France?"},
        {"role": "assistant", "content": "Paris.\nIt is Paris."},
    ],
    # the assistant content is also a word of the template's header and of the user turn
    [{"role": "user", "content": "say assistant"}, {"role": "assistant", "content": "assistant"}],
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hello"}],
]


def masked_segments(tokenizer, encoded):
    """Decode each maximal run of response tokens."""
    segments, run = [], []
    for token, bit in zip(encoded.input_ids, encoded.response_mask, strict=True):
        if bit:
            run.append(token)
        elif run:
            segments.append(tokenizer.decode(run))
            run = []
    if run:
        segments.append(tokenizer.decode(run))
    return segments


@pytest.mark.parametrize("family", ["chatml", "llama3", "zephyr"])
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_mask_decodes_to_contents_plus_end_of_turn(tokenizers, family, conversation):
    tokenizer = tokenizers[family]
    chat = ChatFormat.from_tokenizer(tokenizer, family)
    assert chat.end_of_turn == EOT[family]
    encoded = chat.encode(conversation)
    expected = [m["content"] + EOT[family] for m in conversation if m["role"] == "assistant"]
    assert masked_segments(tokenizer, encoded) == expected
    assert encoded.response_bytes == sum(
        len(m["content"].encode()) for m in conversation if m["role"] == "assistant"
    )
    assert not encoded.truncated


@pytest.mark.parametrize("family", ["llama3", "zephyr"])
def test_bos_exactly_once(tokenizers, family):
    """llama3 writes BOS in its template and its tokenizer also adds BOS; zephyr's template has none."""
    tokenizer = tokenizers[family]
    assert tokenizer("x").input_ids[0] == tokenizer.bos_token_id  # the tokenizer adds BOS on its own
    encoded = ChatFormat.from_tokenizer(tokenizer, family).encode(CONVERSATIONS[1])
    assert encoded.input_ids[0] == tokenizer.bos_token_id
    assert encoded.input_ids.count(tokenizer.bos_token_id) == 1


def test_chatml_has_no_bos(tokenizers):
    tokenizer = tokenizers["chatml"]
    assert tokenizer.bos_token_id is None
    assert (
        ChatFormat.from_tokenizer(tokenizer).encode(CONVERSATIONS[0]).input_ids[0] != tokenizer.eos_token_id
    )


def test_markers_and_located_spans_agree(tokenizers):
    """The same ChatML template with and without {% generation %} markers gives the same mask."""
    with_markers = tokenizers["chatml"]
    without = build_tokenizer("chatml")
    without.chat_template = CHATML_TEMPLATE.replace("{%- generation -%}", "").replace(
        "{%- endgeneration -%}", ""
    )
    a, b = ChatFormat.from_tokenizer(with_markers), ChatFormat.from_tokenizer(without)
    assert a.uses_generation_markers and not b.uses_generation_markers
    for conversation in CONVERSATIONS:
        assert a.encode(conversation) == b.encode(conversation)


def test_llama3_trims_content(tokenizers):
    """Llama-3's template trims contents: the mask covers what was rendered (content.strip() + eot)."""
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  padded answer \n"}]
    encoded = ChatFormat.from_tokenizer(tokenizers["llama3"]).encode(conversation)
    assert masked_segments(tokenizers["llama3"], encoded) == ["padded answer<|eot_id|>"]


def test_truncation_keeps_the_start_and_flags(tokenizers):
    chat = ChatFormat.from_tokenizer(tokenizers["chatml"])
    full = chat.encode(CONVERSATIONS[1])
    cut = chat.encode(CONVERSATIONS[1], max_length=len(full.input_ids) - 5)
    assert (
        cut.truncated
        and cut.input_ids == full.input_ids[:-5]
        and cut.response_mask == full.response_mask[:-5]
    )


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"role": "user", "content": "hi"}], "no assistant turn"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}], "empty"),
        ([{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}], "role"),
        ([{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "x"}], "not a string"),
        ([{"role": "user", "content": "hi"}, "assistant: x"], "not an object"),
    ],
)
def test_bad_rows_raise_row_error(messages, match):
    with pytest.raises(RowError, match=match):
        validate_messages(messages)


def test_templates_it_cannot_handle_name_the_model():
    tokenizer = build_tokenizer("chatml")
    tokenizer.chat_template = None
    with pytest.raises(
        ChatTemplateError, match="my-model: the tokenizer has no chat template.*--chat_template_path"
    ):
        ChatFormat.from_tokenizer(tokenizer, "my-model")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] | upper }}<|im_end|>{% endfor %}"
    with pytest.raises(ChatTemplateError, match="my-model: .*not rendered verbatim|my-model: .*verbatim"):
        ChatFormat.from_tokenizer(tokenizer, "my-model").encode(CONVERSATIONS[0])
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ChatTemplateError, match="never learn to stop"):
        ChatFormat.from_tokenizer(tokenizer, "my-model")


def test_double_bos_is_an_error():
    tokenizer = build_tokenizer("llama3")
    tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    with pytest.raises(ChatTemplateError, match="two BOS"):
        ChatFormat.from_tokenizer(tokenizer, "double").encode(CONVERSATIONS[0])


# Llama-3's template, plus a second BOS for conversations whose first content starts with "!": per row
DOUBLE_BOS_IF_BANG = "{% if messages[0]['content'].startswith('!') %}{{ bos_token }}{% endif %}"


@pytest.mark.parametrize("family", ["chatml", "llama3", "zephyr"])
def test_encode_many_equals_encode_row_by_row_with_errors_in_place(family):
    """One tokenizer call for many rows gives each row's `encode` exactly; a row that cannot be encoded (a
    dropped tool message, two BOS tokens) gives its error in its place and the rows after it are unmoved."""
    tokenizer = build_tokenizer(family)
    tokenizer.chat_template = DOUBLE_BOS_IF_BANG + tokenizer.chat_template
    chat = ChatFormat.from_tokenizer(tokenizer, family)
    tool = [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": "looking"},
            {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "sunny"}]  # fmt: skip
    bang = [{"role": "user", "content": "! shout"}, {"role": "assistant", "content": "ok"}]
    rows = [*CONVERSATIONS, tool, bang, *CONVERSATIONS[::-1]]
    for max_length in (None, 9):
        many = chat.encode_many(rows, max_length)
        assert len(many) == len(rows)
        for messages, encoded in zip(rows, many, strict=True):
            try:
                expected = chat.encode(messages, max_length)
            except ChatTemplateError as e:
                assert isinstance(encoded, ChatTemplateError) and str(encoded) == str(e)
            else:
                assert encoded == expected
    errors = [str(e) for e in chat.encode_many(rows) if isinstance(e, ChatTemplateError)]
    if family != "chatml":  # the chat template of chatml adds no BOS at all
        assert any("two BOS" in e for e in errors)
    assert chat.encode_many([]) == []


def test_trimmed_leading_newlines_do_not_take_the_headers_newlines(tokenizers):
    """Regression: Llama-3's template trims contents; an answer starting with "\\n\\n" used to match the
    header's own "\\n\\n", which then counted as response."""
    tokenizer = tokenizers["llama3"]
    chat = ChatFormat.from_tokenizer(tokenizer, "llama3")
    assert chat.trims_content and not ChatFormat.from_tokenizer(tokenizers["zephyr"]).trims_content
    conversation = [
        {"role": "user", "content": "\n\nhi"},
        {"role": "assistant", "content": "\n\nHello there"},
    ]
    assert masked_segments(tokenizer, chat.encode(conversation)) == ["Hello there<|eot_id|>"]


def test_a_template_that_writes_bos_after_other_text_gets_no_second_bos():
    """Regression: text before the template's own BOS made poft prepend another one (not adjacent, so the
    double-BOS check missed it)."""
    tokenizer = build_tokenizer("zephyr")  # its tokenizer adds BOS on its own
    tokenizer.chat_template = "{{ '\\n' }}{{ bos_token }}" + tokenizer.chat_template
    encoded = ChatFormat.from_tokenizer(tokenizer, "late-bos").encode(CONVERSATIONS[0])
    assert encoded.input_ids.count(tokenizer.bos_token_id) == 1


def test_direct_tokenization_equals_transformers_call():
    """`tokenize_with_offsets` calls the Rust tokenizer directly where transformers would pass the texts to it
    unchanged: the ids and offsets are transformers' own, for every family's tokenizer; a tokenizer with
    truncation set on it goes through transformers (which switches that truncation off for the call)."""
    from fixtures.chat_templates import FAMILIES, build

    from poft.chat import tokenize_with_offsets

    texts = [
        "Hello there, world!",
        "  two\n\nparagraphs  ",
        "Grüße, 世界 🙂 naïve",
        "<s> [INST] x [/INST]",
        "",
    ]
    for family in FAMILIES:
        tokenizer = build.__wrapped__(family)
        reference = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        expected = [
            (list(i), [tuple(o) for o in off])
            for i, off in zip(reference["input_ids"], reference["offset_mapping"], strict=True)
        ]
        got = [(list(i), [tuple(o) for o in off]) for i, off in tokenize_with_offsets(tokenizer, texts)]
        assert got == expected, family
    truncating = build.__wrapped__("qwen25")
    truncating._tokenizer.enable_truncation(max_length=3)
    long = tokenize_with_offsets(truncating, ["one two three four five six seven"])
    assert len(long[0][0]) > 3  # transformers' call, which does not truncate unless asked
