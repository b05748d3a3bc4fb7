"""Read SFT data in the formats users actually have and normalise every row to `messages` + `id`.

Why one reader: `poft score`, `poft train` and `poft filter` must see the same conversations, or the
scores computed by one do not describe the rows trained on by another. The format is detected from the
columns (or forced) and printed once:

    messages           `messages` of {role, content} (UltraChat, TRL conversational); kept as is
    sharegpt           `conversations` of {from, value}; from in human/user, gpt/assistant, system
                       (ShareGPT dumps, OpenHermes-2.5)
    alpaca             `instruction`, optional `input`, `output`; the user turn is the instruction, then
                       a blank line and the input when the input is not empty
    prompt_completion  `prompt` + `completion`, each a string (user / assistant turn) or a list of messages
                       (in CSV, a JSON list of {role, content}; any other text, JSON-looking or not, is text)

Other columns are kept (scores computed elsewhere, a KTO-style boolean `label` for bi-PoFT). `id` is the
row's `id` (or `prompt_id`) as a string, else a hash of the conversation, the same one `poft score` uses,
so a conversation has the same id whatever format it came in.

File errors name the file and line: a malformed line, or a file that ends mid-line (a cut download), stops
the read instead of silently giving a short dataset. Row errors name file, row, id and field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from datasets import Dataset

from .chat import RowError

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
_SOURCE_COLUMNS = {
    "messages": (),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "input", "output"),
    "prompt_completion": ("prompt", "completion"),
}
_DESCRIPTIONS = {
    "messages": "`messages` of {role, content}",
    "sharegpt": "ShareGPT `conversations` of {from, value}",
    "alpaca": "Alpaca `instruction`/`input`/`output`",
    "prompt_completion": "`prompt`/`completion`",
}


def conversation_id(messages: list[dict]) -> str:
    """16 hex chars of the hash `poft score` stores as `fingerprint` (roles and contents only)."""
    canonical = json.dumps(
        [[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def detect_format(columns: list[str]) -> str:
    """The SFT format a dataset is in, from its column names alone (rows are never guessed from)."""
    names = set(columns)
    if "messages" in names:
        return "messages"
    if "conversations" in names:
        return "sharegpt"
    if {"instruction", "output"} <= names:
        return "alpaca"
    if {"prompt", "completion"} <= names:
        return "prompt_completion"
    if {"chosen", "rejected"} <= names:
        raise ValueError(
            f"columns {sorted(names)} are preference pairs (chosen/rejected): use `poft dpo`, not SFT readers"
        )
    raise ValueError(
        f"cannot tell the data format from the columns {sorted(names)}; expected `messages`, `conversations` "
        "(ShareGPT), `instruction`+`output` (Alpaca) or `prompt`+`completion`"
    )


def json_cell(value: object, field: str) -> object:
    """CSV cells hold lists as JSON text; parse them so a CSV file reads like its JSON twin."""
    if isinstance(value, str) and value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise RowError(f"{field} is text that is not valid JSON ({e.msg})") from e
    return value


def _sharegpt(row: dict) -> list[dict]:
    turns = json_cell(row.get("conversations"), "conversations")
    if not isinstance(turns, list) or not turns:
        raise RowError("conversations must be a non-empty list of {from, value} objects")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError(f"conversations[{i}] is a {type(turn).__name__}, not an object")
        speaker, value = turn.get("from"), turn.get("value")
        if speaker not in SHAREGPT_ROLES:
            raise RowError(
                f"conversations[{i}].from is {speaker!r}; expected one of {sorted(SHAREGPT_ROLES)}"
            )
        if not isinstance(value, str):
            raise RowError(f"conversations[{i}].value is {type(value).__name__}, not a string")
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": value})
    return messages


def _alpaca(row: dict) -> list[dict]:
    instruction, extra, output = row.get("instruction"), row.get("input"), row.get("output")
    for field, value in (("instruction", instruction), ("output", output)):
        if not isinstance(value, str) or not value.strip():
            raise RowError(f"{field} is {value!r}; expected a non-empty string")
    if extra is not None and not isinstance(extra, str):
        raise RowError(f"input is {type(extra).__name__}, not a string")
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def message_list_from_text(text: str) -> list[dict] | None:
    """The messages a CSV cell holds as JSON text, or None: a prompt or completion is often plain text that
    merely looks like JSON ("[1, 3, 2] sort this", "{name}"), and that text is the turn, not an error."""
    if not text.lstrip().startswith("["):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    is_messages = isinstance(value, list) and value and all(isinstance(m, dict) for m in value)
    return value if is_messages and all({"role", "content"} <= m.keys() for m in value) else None


def _turns(value: object, field: str, role: str) -> list[dict]:
    if isinstance(value, str):
        value = message_list_from_text(value) or value
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return [{"role": m.get("role"), "content": m.get("content")} for m in value]
    raise RowError(f"{field} is {type(value).__name__}; expected a string or a list of {{role, content}}")


def _prompt_completion(row: dict) -> list[dict]:
    return _turns(row.get("prompt"), "prompt", "user") + _turns(
        row.get("completion"), "completion", "assistant"
    )


def _messages(row: dict) -> list[dict] | None:
    messages = json_cell(row.get("messages"), "messages")
    if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
        return [{"role": m.get("role"), "content": m.get("content")} for m in messages]
    return messages  # left for the scorer / trainer to reject with their own row messages


_CONVERTERS: dict[str, Callable[[dict], list[dict] | None]] = {
    "messages": _messages,
    "sharegpt": _sharegpt,
    "alpaca": _alpaca,
    "prompt_completion": _prompt_completion,
}


def _row_id(row: dict, messages: object, index: int) -> str:
    for key in ("id", "prompt_id"):
        if row.get(key) is not None:
            return str(row[key])
    try:
        return conversation_id(messages)
    except (KeyError, TypeError):
        return f"row-{index}"


def _label(value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, (int, float)) and value in (1, 0, -1):
        return value == 1
    raise RowError(f"label is {value!r}; expected true/false (KTO style: true = desirable) or +1/-1")


def normalize_conversations(
    dataset: Dataset,
    format: str | None = None,
    *,
    source: str = "dataset",
    where: Callable[[int], str] | None = None,
    on_bad_row: str = "error",
) -> Dataset:
    """Return `dataset` with `messages` (+ `id`, + boolean `label` when present), format detected or forced.

    `where(i)` names row i in errors (e.g. "line 12" for a JSON-lines file). A row that cannot be converted
    stops the read naming source, row, id and field (on_bad_row="error"), or keeps messages=None so the
    scorer / trainer drop it and count it (on_bad_row="skip"). Rows already in `messages` form pass
    through unchanged (no copy when they have an `id`): validating conversations is the scorer's and
    trainer's job.
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    fmt = format or detect_format(dataset.column_names)
    needed = ["messages"] if fmt == "messages" else [c for c in _SOURCE_COLUMNS[fmt] if c != "input"]
    missing = [c for c in needed if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{source}: format {fmt!r} needs columns {missing} (columns: {dataset.column_names})"
        )
    print(f"poft: {source}: {_DESCRIPTIONS[fmt]} ({'forced' if format else 'detected'}), {len(dataset)} rows")
    has_label = "label" in dataset.column_names
    text_messages = getattr(dataset.features.get("messages"), "dtype", None) in ("string", "large_string")
    rewrite = fmt != "messages" or text_messages  # CSV keeps `messages` as JSON text
    text_id = getattr(dataset.features.get("id"), "dtype", None) in ("string", "large_string")
    if not rewrite and not has_label and text_id:
        return dataset
    convert = _CONVERTERS[fmt] if rewrite else (lambda row: row["messages"])
    where = where or (lambda i: f"row {i}")

    def normalise(row: dict, index: int) -> dict:
        out: dict = {"poft_read_problem": ""}
        messages = None
        try:
            messages = convert(row)
            if has_label:
                out["label"] = _label(row.get("label"))
        except RowError as e:
            out["poft_read_problem"] = f"{where(index)} (id={_row_id(row, None, index)}): {e}"
            if has_label:
                out["label"] = None
        if rewrite:
            out["messages"] = messages
        out["poft_id"] = _row_id(row, messages, index)
        return out

    # `id` is re-created as text (map would otherwise keep an integer id column's type)
    drop = [c for c in (*_SOURCE_COLUMNS[fmt], "id", "label") if c in dataset.column_names]
    normalised = dataset.map(normalise, with_indices=True, remove_columns=drop, desc=f"Reading {fmt} rows")
    problems = [p for p in normalised["poft_read_problem"] if p]
    normalised = normalised.remove_columns("poft_read_problem").rename_column("poft_id", "id")
    if problems:
        named = "; ".join(problems[:5]) + (f"; ... {len(problems) - 5} more" if len(problems) > 5 else "")
        if "Json(" in repr(dataset.features):
            named += (
                " (note: some rows of this file have a different JSON type in the same field, so `datasets` "
                'decoded JSON-looking strings such as "5" too; fix the rows with non-string values first)'
            )
        if on_bad_row == "error":
            raise RowError(f"{source}: {len(problems)} rows cannot be read as {fmt}: {named}")
        print(f"poft: {source}: {len(problems)} rows cannot be read as {fmt} and will be dropped: {named}")
    return normalised


def check_json_file(path: Path) -> list[int] | None:
    """Parse a JSON / JSON-lines file once to find malformed or cut lines; return each row's line number
    (None for a JSON array file, whose rows are named by position).

    Raises ValueError naming the file and line. The datasets JSON builder alone may accept a file cut in the
    middle of its last line, silently returning a short dataset.
    """
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}, column {e.colno}: malformed JSON ({e.msg})") from e
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{path}: a JSON array file must hold objects, one per row")
        return None
    lines = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            cut = line_no == text.count("\n") + 1 and not text.endswith("\n")
            why = (
                "the file ends in the middle of this line (cut download?)"
                if cut
                else f"malformed JSON ({e.msg})"
            )
            raise ValueError(f"{path}: line {line_no}: {why}") from e
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {line_no}: a JSON {type(row).__name__}, not an object")
        lines.append(line_no)
    return lines
