"""Property-based: the readers turn any row, in any supported format, into a conversation whose contents are
exactly the input strings, or into a RowError naming the row and the field. Never a silently changed
conversation, never another exception type.

A row is written as a one-line JSON-lines file and read twice, the way the two commands read it: by the
trainer's reader (`load_sft_dataset`, then `validate_messages` as the trainer and scorer check every
conversation) and by the scorer's line-by-line reader (`load_checked_rows`). Both must agree with an
independent statement of the format (`expected`) and with each other.
"""

import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poft.chat import KNOWN_ROLES, RowError, validate_messages
from poft.formats import SHAREGPT_ROLES, conversation_id
from poft.readers import load_sft_dataset
from poft.scoring import load_checked_rows

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
    return items


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
    # what the trainer and scorer then require of every conversation
    if not messages or any(
        m["role"] not in KNOWN_ROLES or not isinstance(m["content"], str) for m in messages
    ):
        raise Invalid
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    if not answers or not all(a.strip() for a in answers):
        raise Invalid
    return messages


FIELDS = ("messages", "conversations", "instruction", "output", "input", "prompt", "completion", "content",
          "no assistant turn")  # fmt: skip


def read_as_trainer(path: str) -> tuple[list[dict], str]:
    data = load_sft_dataset(path)
    assert len(data) == 1
    return validate_messages(data[0]["messages"]), data[0]["id"]


def read_as_scorer(path: str) -> list[dict]:
    checked = load_checked_rows(path, "train", "error", None)
    assert checked.good == [0]
    return validate_messages(checked.dataset[0]["messages"])


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
    for read in (read_as_trainer, lambda p: (read_as_scorer(p), None)):
        try:
            got, row_id = read(str(path))
        except RowError as e:
            assert want is None, f"a valid row was refused: {e}"
            message = str(e)
            assert any(field in message for field in FIELDS), message  # names the field
            read_error = str(path) in message
            assert not read_error or "line 1" in message, message  # a read error names the file and line
            continue
        assert want is not None, f"an invalid row was accepted as {got!r}"
        assert got == want  # contents are exactly the input strings: nothing stripped, joined or decoded
        if row_id is not None:
            assert row_id == (str(row["id"]) if "id" in row else conversation_id(want))
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
