"""Property-based: the reader turns any row, in any supported format, into a conversation whose contents are
exactly the input strings, or into a RowError naming the row and the field. Never a silently changed
conversation, never another exception type.

A row is written as a one-line JSON-lines file and read by the one reader every command uses
(`poft.readers.read_sft`); the result must equal an independent statement of the format (`expected`,
written here from the README's table, not from the code).
"""

import hashlib
import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poft.readers import RowError, load_sft_dataset

KNOWN_ROLES = ("system", "user", "assistant", "tool")  # README: the roles a conversation may use
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
LONG_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF), min_size=2000, max_size=4000)
JSONISH = st.sampled_from(["[1, 3, 2] sort this", "{name} is a placeholder", "[]", '{"a": 1}', "[{}]", "null",
                           "5", "\u202e\u0000\ufeff"])  # fmt: skip
BLANK = st.sampled_from(["", " ", "\n\t ", "\u00a0"])
GOOD = st.one_of(TEXT.filter(str.strip), TEXT.filter(str.strip), JSONISH, LONG_TEXT)  # non-blank text
STRING = st.one_of(GOOD, BLANK)
WRONG = st.one_of(st.none(), st.integers(-5, 5), st.booleans(), st.lists(st.integers(), max_size=2))
VALUE = st.one_of(STRING, WRONG)
ROLE = st.one_of(st.sampled_from(sorted(KNOWN_ROLES)), st.sampled_from(["robot", "", "Assistant", "human"]))
SPEAKER = st.one_of(st.sampled_from(sorted(SHAREGPT_ROLES)), st.sampled_from(["bot", "", "GPT", "model"]))


def mostly_good(draw) -> object:
    """Non-blank text three times in four; otherwise anything (blank, wrong type)."""
    return draw(GOOD) if draw(st.integers(0, 3)) else draw(VALUE)


PART = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": STRING}),
    st.fixed_dictionaries({"type": st.just("text"), "text": WRONG}),
    st.fixed_dictionaries({"type": st.sampled_from(["image_url", "input_audio"]), "image_url": TEXT}),
)


def with_parts(draw, turns_: list, content_key: str) -> list:
    """One time in four, the contents become OpenAI-style parts (mostly text parts; sometimes not)."""
    if content_key != "content" or draw(st.integers(0, 3)):
        return turns_
    out = []
    for turn in turns_:
        if isinstance(turn, dict) and isinstance(turn.get(content_key), str) and draw(st.booleans()):
            text = turn[content_key]
            cut = draw(st.integers(0, len(text)))
            parts = [{"type": "text", "text": text[:cut]}, {"type": "text", "text": text[cut:]}]
            if draw(st.integers(0, 5)) == 0:
                parts.append(draw(PART))
            turn = {**turn, content_key: parts}
        out.append(turn)
    return out


@st.composite
def turns(draw, role_key: str, content_key: str, roles, user: str, assistant: str) -> list:
    """A conversation (optional system prompt, 1-6 exchanges; user and system turns may be blank) with,
    one time in three, one broken turn anywhere (unknown role, blank answer, wrong type)."""
    items = [{role_key: "system", content_key: draw(STRING)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 6))):
        items += [{role_key: user, content_key: draw(STRING)}, {role_key: assistant, content_key: draw(GOOD)}]
    if draw(st.integers(0, 2)) == 0:
        i = draw(st.integers(0, len(items) - 1))
        items[i] = draw(st.one_of(st.fixed_dictionaries({role_key: roles, content_key: VALUE}), WRONG))
    return with_parts(draw, items, content_key)


@st.composite
def rows(draw) -> dict:
    fmt = draw(st.sampled_from(["messages", "sharegpt", "alpaca", "prompt_completion"]))
    if fmt == "messages":
        row = {"messages": draw(turns("role", "content", ROLE, "user", "assistant")) if draw(st.integers(0, 5))
               else draw(WRONG)}  # fmt: skip
    elif fmt == "sharegpt":
        row = {"conversations": draw(turns("from", "value", SPEAKER, "human", "gpt")) if draw(st.integers(0, 5))
               else draw(WRONG)}  # fmt: skip
    elif fmt == "alpaca":
        row = {"instruction": mostly_good(draw), "output": mostly_good(draw)}
        if draw(st.booleans()):
            row["input"] = draw(st.one_of(STRING, STRING, WRONG))
    else:
        conversational = draw(st.booleans())
        prompt = draw(turns("role", "content", ROLE, "user", "assistant")) if conversational else draw(STRING)
        row = {"prompt": prompt, "completion": mostly_good(draw)}
    row_id = draw(st.one_of(st.none(), st.integers(0, 10**6), TEXT.filter(str.strip)))
    if row_id is not None:
        row["id"] = row_id
    return row


class Invalid(Exception):
    """The format's rules (restated below, independently of poft.formats) reject the row."""


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid
    return value


def _content(value: object) -> str:
    """A content: text, or a non-empty list of {"type": "text", "text": str} parts, read as their joined text."""
    if isinstance(value, list) and value and all(isinstance(p, dict) for p in value):
        if not all(p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
            raise Invalid
        return "".join(p["text"] for p in value)
    return _text(value)


def _turns(value: object, role: str) -> list[dict]:
    """A prompt or completion: text is one turn, unless it is a JSON list of {role, content} (a CSV cell)."""
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = None
        if not (isinstance(decoded, list) and decoded and all(isinstance(m, dict) for m in decoded)
                and all({"role", "content"} <= m.keys() for m in decoded)):  # fmt: skip
            return [{"role": role, "content": value}]
        value = decoded
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        raise Invalid
    return [{"role": m.get("role"), "content": m.get("content")} for m in value]


def expected(row: dict) -> list[dict]:
    """The conversation the documented format defines for `row`, or Invalid."""
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise Invalid
        messages = [{"role": m.get("role"), "content": m.get("content")} for m in messages]
    elif "conversations" in row:
        turns_ = row["conversations"]
        if not isinstance(turns_, list) or not all(isinstance(t, dict) for t in turns_):
            raise Invalid
        if not all(t.get("from") in SHAREGPT_ROLES for t in turns_):
            raise Invalid
        messages = [{"role": SHAREGPT_ROLES[t["from"]], "content": _text(t.get("value"))} for t in turns_]
    elif "instruction" in row:
        instruction, output, extra = _text(row["instruction"]), _text(row["output"]), row.get("input")
        if not instruction.strip() or not output.strip() or not isinstance(extra, (str, type(None))):
            raise Invalid
        user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    else:
        messages = _turns(row["prompt"], "user") + _turns(row["completion"], "assistant")
    # what every conversation must then be
    if not messages or any(m["role"] not in KNOWN_ROLES for m in messages):
        raise Invalid
    messages = [{"role": m["role"], "content": _content(m["content"])} for m in messages]
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    if not answers or not all(a.strip() for a in answers):
        raise Invalid
    return messages


FIELDS = ("messages", "conversations", "instruction", "output", "input", "prompt", "completion", "content",
          "no assistant turn")  # fmt: skip


def read(path: str) -> tuple[list[dict], str]:
    data = load_sft_dataset(path)
    assert len(data) == 1
    return data[0]["messages"], data[0]["id"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])  # fmt: skip
@given(row=rows())
def test_any_row_reads_exactly_or_is_a_named_row_error(row, tmp_path, capsys):
    path = tmp_path / f"{uuid.uuid4().hex}.jsonl"  # a new name each time: no cached read of an older row
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    try:
        want = expected(row)
    except Invalid:
        want = None
    try:
        got, row_id = read(str(path))
    except RowError as e:
        assert want is None, f"a valid row was refused: {e}"
        message = str(e)
        assert any(field in message for field in FIELDS), message  # names the field
        assert str(path) in message and "line 1" in message, message  # names the file and line
    else:
        assert want is not None, f"an invalid row was accepted as {got!r}"
        assert got == want  # contents are exactly the input strings: nothing stripped, decoded or re-typed
        canonical = json.dumps(
            [[m["role"], m["content"]] for m in want], ensure_ascii=False, separators=(",", ":")
        )
        digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        assert row_id == (str(row["id"]) if "id" in row else digest[:16])
    capsys.readouterr()


@pytest.mark.parametrize(
    "prompt, completion",
    [("[1, 3, 2] sort this", "[1, 2, 3]"), ("{name}: fill in", "{Ada}"), ("null", "5"), ("[]", '{"a": 1}')],
)
def test_prompt_and_completion_text_that_looks_like_json_stays_text(tmp_path, prompt, completion):
    path = tmp_path / "pc.jsonl"
    path.write_text(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    assert load_sft_dataset(str(path))["messages"] == [
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    ]
