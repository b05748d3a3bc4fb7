"""The one reader: a file, a folder or a Hub id -> rows of `messages` + `id` + `fingerprint` (+ `label`).

`poft score`, `poft train`, `poft filter`, `poft inspect` and `poft dpo` all read data here, so the
conversations scored by one are exactly the conversations trained on by another. Route, top to bottom:

    read_rows      source -> raw rows. JSON / JSON-lines files are parsed here, each line exactly once, by
                   `json` (never by `datasets`, whose JSON builder guesses one type per field and then
                   decodes JSON-looking strings such as "5" into numbers); lines are split on "\\n" only
                   (a raw U+2028 or U+0085 inside a string is text, not a line break). Parquet / CSV files,
                   `save_to_disk` folders, dataset folders and Hub ids are read by `datasets` (Arrow keeps
                   one type per column, so nothing is guessed).
    detect_format  the format, from the column names alone (or forced), printed once:
                     messages           `messages` of {role, content} (UltraChat, TRL); content may also be
                                        OpenAI-style parts [{"type": "text", "text": ...}] (text parts joined)
                     sharegpt           `conversations` of {from, value}; from in human/user, gpt/assistant,
                                        system (ShareGPT dumps, OpenHermes-2.5)
                     alpaca             `instruction`, optional `input`, `output`: user = instruction, then a
                                        blank line and the input when it is not empty
                     prompt_completion  `prompt` + `completion`, each a string (a user / assistant turn) or a
                                        list of messages (in CSV: a JSON list of {role, content}; any other
                                        text, JSON-looking or not, is text)
    sft_messages   one row -> a validated conversation, or RowError naming the field (`validate_messages`
                   is the only place a conversation is checked);
    read_sft       every row: conversation, `id` (the row's `id` or `prompt_id` as text, else the first 16
                   hex digits of its fingerprint), `fingerprint` (`fingerprint()`: a hash of roles and
                   contents; a stored one, written by `poft score`, is kept so the trainer can tell a row
                   edited after scoring), `label` (`parse_label`); `on_bad_row` applied once: "error" stops
                   naming source, line/row, id and field, "skip" drops and records the rows.

Other columns are kept with their values and types (scores from IFD / Deita / Instag, `ref_score`...).
No reader ever changes a value's type; the only conversions are the documented ones above.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, concatenate_datasets, load_dataset, load_from_disk

from .arrow_rows import ChunkedRows, RowPlaces
from .configs import FORMATS, ON_BAD_ROW  # choices are typed once, where --help reads them
from .console import BadRow, input_order, refuse_or_skip, say
from .model_files import check_not_model_folder

KNOWN_ROLES = frozenset({"system", "user", "assistant", "tool"})
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
SOURCE_COLUMNS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "input", "output"),
    "prompt_completion": ("prompt", "completion"),
}
FINGERPRINT_COLUMN = "fingerprint"
_DESCRIPTIONS = {
    "messages": "`messages` of {role, content}",
    "sharegpt": "ShareGPT `conversations` of {from, value}",
    "alpaca": "Alpaca `instruction`/`input`/`output`",
    "prompt_completion": "`prompt`/`completion`",
}
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


class RowError(ValueError):
    """A row (or line) that cannot be read; the message names the field and why (and source, line, id)."""


# ------------------------------------------------------------------------------------------- one row


def fingerprint(messages: list[dict]) -> str:
    """Stable hash of a conversation's roles and contents (32 hex digits); other message keys are ignored.

    `poft score` stores it per row; training refuses a row whose text no longer has it, so scores can never
    be joined to an edited, re-ordered or different conversation.
    """
    canonical = json.dumps(
        [[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def _content_text(content: object, where: str) -> str:
    """Message content as text: a string, or OpenAI-style content parts whose text parts are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(isinstance(p, dict) for p in content):
        texts = []
        for j, part in enumerate(content):
            if part.get("type") != "text":
                raise RowError(
                    f"{where}.content[{j}] is a {part.get('type')!r} part; only text parts can be read"
                )
            if not isinstance(part.get("text"), str):
                raise RowError(
                    f"{where}.content[{j}].text is {type(part.get('text')).__name__}, not a string"
                )
            texts.append(part["text"])
        return "".join(texts)  # chat templates render consecutive text parts without a separator
    raise RowError(f"{where}.content is {type(content).__name__}, not a string (or a list of text parts)")


def validate_messages(messages: object) -> list[dict]:
    """A conversation as a list of {role, content} strings, or RowError naming the field.

    Known roles only, every content text (content parts joined), every assistant turn non-empty, at least
    one assistant turn. Other message keys are dropped.
    """
    if not isinstance(messages, list) or not messages:
        raise RowError("`messages` must be a non-empty list of {role, content} objects")
    out = [read_message(message, f"messages[{i}]") for i, message in enumerate(messages)]
    if not any(m["role"] == "assistant" for m in out):
        raise RowError("no assistant turn")
    return out


def read_message(message: object, where: str) -> dict:
    """One message as {role, content} text (a known role; content parts joined; an assistant turn not empty),
    or RowError naming `where` ("messages[2]", "chosen[0]")."""
    if not isinstance(message, dict):
        raise RowError(f"{where} is a {type(message).__name__}, not an object")
    role = message.get("role")
    if role not in KNOWN_ROLES:
        raise RowError(f"{where}.role is {role!r}; expected one of {sorted(KNOWN_ROLES)}")
    content = _content_text(message.get("content"), where)
    if role == "assistant" and not content.strip():
        raise RowError(f"{where}.content (assistant) is empty")
    return {"role": role, "content": content}


def sharegpt_turns(turns: object, field_name: str) -> list[dict]:
    """ShareGPT turns ({from, value}, a list of them or one) -> messages; RowError names the turn."""
    turns = [turns] if isinstance(turns, dict) else _json_list_cell(turns, field_name)
    if not isinstance(turns, list) or not turns:
        raise RowError(f"{field_name} must be a non-empty list of {{from, value}} objects")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError(f"{field_name}[{i}] is a {type(turn).__name__}, not an object")
        speaker, value = turn.get("from"), turn.get("value")
        if speaker not in SHAREGPT_ROLES:
            raise RowError(f"{field_name}[{i}].from is {speaker!r}; expected one of {sorted(SHAREGPT_ROLES)}")
        if not isinstance(value, str):
            raise RowError(f"{field_name}[{i}].value is {type(value).__name__}, not a string")
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": value})
    return messages


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


def _json_list_cell(value: object, field_name: str) -> object:
    """A list column stored as JSON text (CSV cells) -> the list; anything else is returned as is."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise RowError(f"{field_name} is text that is not valid JSON ({e.msg})") from e
    return value


def text_or_messages(value: object, field_name: str, role: str) -> list[dict]:
    """A prompt, completion, chosen or rejected field: text is one turn of `role` (unless it is a JSON list of
    {role, content}, as CSV cells hold them), a list is messages (each message checked by the caller)."""
    if isinstance(value, str):
        value = message_list_from_text(value) or value
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return list(value)
    raise RowError(
        f"{field_name} is {type(value).__name__}; expected a string or a list of {{role, content}}"
    )


def sft_messages(row: dict, fmt: str) -> list[dict]:
    """One row in format `fmt` -> its validated conversation (RowError names the field)."""
    if fmt in ("messages", "sharegpt") and row.get(SOURCE_COLUMNS[fmt][0]) is None:
        raise RowError(f"no `{SOURCE_COLUMNS[fmt][0]}`")
    if fmt == "messages":
        return validate_messages(_json_list_cell(row.get("messages"), "messages"))
    if fmt == "sharegpt":
        if isinstance(row["conversations"], dict):
            raise RowError("conversations must be a non-empty list of {from, value} objects")
        return validate_messages(sharegpt_turns(row["conversations"], "conversations"))
    if fmt == "alpaca":
        instruction, extra, output = row.get("instruction"), row.get("input"), row.get("output")
        for name, value in (("instruction", instruction), ("output", output)):
            if not isinstance(value, str) or not value.strip():
                raise RowError(f"{name} is {value!r}; expected a non-empty string")
        if extra is not None and not isinstance(extra, str):
            raise RowError(f"input is {type(extra).__name__}, not a string")
        user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        return validate_messages(
            [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        )
    prompt = text_or_messages(row.get("prompt"), "prompt", "user")
    return validate_messages(prompt + text_or_messages(row.get("completion"), "completion", "assistant"))


def parse_label(value: object, field_name: str = "label") -> bool | None:
    """A KTO-style label: true = desirable. Accepts booleans, "true"/"false", 1 / 0 / -1; None stays None."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, (int, float)) and value in (1, 0, -1):
        return value == 1
    raise RowError(f"{field_name} is {value!r}; expected true/false (KTO style: true = desirable) or +1/-1")


def row_id(row: dict) -> str | None:
    """The row's own id (`id`, else `prompt_id`) as text, or None."""
    for key in ("id", "prompt_id"):
        if row.get(key) is not None:
            return str(row[key])
    return None


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


# ------------------------------------------------------------------------------------------ raw rows


@dataclass
class RawRows:
    """Rows as stored, read a pass at a time: a JSON array's parsed objects (`rows`), a JSON-lines file parsed
    again on each pass (`path`; only its line numbers are kept between passes), or an Arrow-backed dataset
    (`table`, memory-mapped where it comes from files).

    `lines[i]` is the file line of row i for JSON-lines files; `bad` lists lines that are not rows at all
    (malformed JSON, a JSON value that is not an object), as `console.BadRow`s.
    """

    source: str
    columns: list[str]
    rows: list[dict] | None = None
    table: Dataset | None = None
    path: Path | None = None
    lines: np.ndarray | None = None
    bad: list[BadRow] = field(default_factory=list)
    stamp: tuple[int, int] | None = None  # size and mtime of a JSON-lines file when its lines were counted

    def __len__(self) -> int:
        if self.rows is not None:
            return len(self.rows)
        return len(self.lines) if self.lines is not None else len(self.table)

    def where(self, i: int) -> str:
        return f"line {self.lines[i]}" if self.lines is not None else f"row {i}"

    def places(self, indices: np.ndarray) -> RowPlaces:
        """Where the rows at `indices` are in the input."""
        if self.lines is not None:
            return RowPlaces(self.lines[indices], "line")
        return RowPlaces(indices, "row")

    def iter_rows(self, columns: list[str] | None) -> Iterator[dict]:
        """Each row in order: a dict of `columns` (a missing key is None), or, with columns=None, every key
        the row has (JSON rows: the parsed object itself; Arrow rows: every column)."""
        if self.rows is not None or self.path is not None:
            values = (
                self.rows if self.rows is not None else _json_line_rows(self.path, self.source, self.stamp)
            )
            for row in values:
                yield row if columns is None else {c: row.get(c) for c in columns}
            return
        columns = self.table.column_names if columns is None else columns
        present = [c for c in columns if c in self.table.column_names]
        if not present:
            yield from ({c: None for c in columns} for _ in range(len(self.table)))
            return
        for batch in self.table.select_columns(present).iter(batch_size=1024):
            for k in range(len(batch[present[0]])):
                yield {c: batch[c][k] if c in batch else None for c in columns}

    def column_order(self, replaced: list[str], new: list[str]) -> list[str]:
        """The columns of the rows read: the first replaced column's place takes the first new column, a new
        column with the name of an existing one takes its place, the other new columns come last."""
        order: list[str] = []
        for column in self.columns:
            if column in new:
                order.append(column)
            elif column in replaced:
                order.extend(c for c in new if c not in self.columns and c not in order)
            else:
                order.append(column)
        order.extend(c for c in new if c not in order)
        return order

    def assemble(self, kept: np.ndarray, order: list[str], new: Dataset) -> Dataset:
        """The kept rows of an Arrow source with the `new` columns (one row per kept row) in `order`."""
        others = [c for c in order if c not in new.column_names]
        if not others:
            return new.select_columns(order)
        table = self.table.select_columns(others)
        table = table if len(kept) == len(table) else table.select(kept)
        return concatenate_datasets([table, new], axis=1).select_columns(order)


def _dataset_from_columns(columns: dict[str, list], source: str, where: Sequence[str]) -> Dataset:
    """Arrow columns from Python values; a column whose rows hold different types is named, not guessed."""
    try:
        return Dataset.from_dict(columns)
    except Exception as e:  # pyarrow raises ArrowInvalid / ArrowTypeError without naming the column
        import pyarrow as pa

        for name, values in columns.items():
            try:
                pa.array(values)
            except Exception:
                kinds = [type(v).__name__ for v in values]
                first = next((k for k in kinds if k != "NoneType"), "NoneType")
                odd = next((i for i, k in enumerate(kinds) if k not in (first, "NoneType")), None)
                if odd is None:  # same Python type, different contents (a list of numbers, a list of text)
                    raise ValueError(
                        f"{source}: column {name!r} holds values of different shapes across rows ({e}); "
                        "a column needs one type"
                    ) from e
                raise ValueError(
                    f"{source}: column {name!r} holds a {first} in some rows and a {kinds[odd]} in others "
                    f"(first at {where[odd]}); a column needs one type"
                ) from e
        raise


def _read_json_file(path: Path) -> RawRows:
    """A JSON array file (parsed whole) or a JSON-lines file (one pass now for its columns, row lines and bad
    lines; the rows themselves are parsed again, a chunk at a time, when they are read)."""
    with path.open("rb") as f:
        start = f.read(4096).decode("utf-8", errors="ignore").removeprefix("\ufeff")
    if start.lstrip().startswith("["):
        return _read_json_array(path, _utf8_text(path))
    stamp = _stamp(path)
    columns: dict[str, None] = {}
    lines = array("q")
    bad = []
    for line_no, value in _json_lines(path):
        if isinstance(value, _BadLine):
            bad.append(value.bad)
            continue
        columns.update(dict.fromkeys(value))
        lines.append(line_no)
    numbers = np.frombuffer(lines, dtype=np.int64)
    return RawRows(str(path), list(columns), path=path, lines=numbers, bad=bad, stamp=stamp)


def _utf8_text(path: Path) -> str:
    """The file as text (a leading byte-order mark dropped); a byte that is not UTF-8 is named by line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line}: not valid UTF-8 text ({e.reason})") from e
    return text.removeprefix("\ufeff")


def _read_json_array(path: Path, text: str) -> RawRows:
    """A JSON array of objects, one per row; anything else in it stops the read."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}, column {e.colno}: malformed JSON ({e.msg})") from e
    odd = next((i for i, value in enumerate(values) if not isinstance(value, dict)), None)
    if odd is not None:  # rows of an array are named by position: leaving one out would shift the names
        raise ValueError(
            f"{path}: row {odd} is a JSON {type(values[odd]).__name__}; a JSON array file must hold "
            "objects, one per row"
        )
    return RawRows(str(path), _union_columns(values), rows=values)


@dataclass(frozen=True)
class _BadLine:
    bad: BadRow


def _json_lines(path: Path) -> Iterator[tuple[int, dict | _BadLine]]:
    """Each non-blank line of a JSON-lines file: (line number, its object, or a BadRow saying why it is not
    one, as a `_BadLine`). Lines end at "\n" only (a raw U+2028 or U+0085 inside a string is text); a byte that is not UTF-8
    stops the read naming its line."""
    with path.open("rb") as f:
        line_no = 0
        for line_no, raw in enumerate(f, start=1):  # noqa: B007 - line_no is read after the loop
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: line {line_no}: not valid UTF-8 text ({e.reason})") from e
            if line_no == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            yield line_no, _json_line(line, line_no, cut=not raw.endswith(b"\n"))


def _json_line(line: str, line_no: int, *, cut: bool) -> dict | _BadLine:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        problem = (
            "the file ends in the middle of this line (cut download?)" if cut else f"malformed JSON ({e.msg})"
        )
        return _BadLine(BadRow(row=f"line {line_no}", id=None, problem=problem))
    if not isinstance(value, dict):
        problem = f"a JSON {type(value).__name__}, not an object"
        return _BadLine(BadRow(row=f"line {line_no}", id=None, problem=problem))
    return value


def _json_line_rows(path: Path, source: str, stamp: tuple[int, int]) -> Iterator[dict]:
    """The rows of a JSON-lines file, parsed again (the first pass kept only their line numbers); a file
    changed since that pass is refused (its rows would not match the lines counted)."""
    changed = ValueError(f"{source}: the file changed while it was read; read it again once it is complete")
    if _stamp(path) != stamp:
        raise changed
    for _, value in _json_lines(path):
        if not isinstance(value, _BadLine):
            yield value
    if _stamp(path) != stamp:
        raise changed


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _union_columns(rows: list[dict]) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def _check_score_folder(path: Path) -> None:
    if (path / "scoring_config.json").exists() and not (path / "manifest.json").exists():
        raise ValueError(  # `poft score` writes manifest.json last, once the scored dataset is complete
            f"{path}: `poft score` did not finish this folder (no manifest.json; killed or out of disk?). "
            "Re-run the same `poft score` command: it resumes from the finished shards and completes it"
        )


def read_rows(source: str | Path | Dataset, split: str = "train", config: str | None = None) -> RawRows:
    """Rows as stored in a file, a `save_to_disk` folder, a dataset folder, a Hub dataset or a Dataset."""
    if isinstance(source, Dataset):
        return RawRows("dataset", list(source.column_names), table=source)
    name = str(source)
    path = Path(name)
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(_FILE_BUILDERS)}"
            )
        if builder == "json":
            return _read_json_file(path)
        table = load_dataset(builder, data_files=str(path), split="train")
        return RawRows(name, list(table.column_names), table=table)
    if path.is_dir():
        _check_score_folder(path)
        check_not_model_folder(path)
        if any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
            loaded = load_from_disk(str(path))
            if isinstance(loaded, DatasetDict):
                if split not in loaded:
                    raise ValueError(f"{path}: no split {split!r}; it has {sorted(loaded)}")
                loaded = loaded[split]
        else:  # a dataset repository on disk (a Hub clone: data files, README `configs:`)
            loaded = load_dataset(str(path), name=config, split=split)
        return RawRows(name, list(loaded.column_names), table=loaded)
    if path.suffix.lower() in _FILE_BUILDERS or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"{name}: no such file or folder")
    try:
        table = load_dataset(name, name=config, split=split)
    except ConnectionError as e:  # datasets: "Couldn't reach 'x' on the Hub (OfflineModeIsEnabled)"
        offline = "the Hub is offline: HF_HUB_OFFLINE=1" if "OfflineModeIsEnabled" in str(e) else str(e)
        raise FileNotFoundError(
            f"{name}: no such file or folder here, and no Hub dataset of that name ({offline})"
        ) from e
    return RawRows(name, list(table.column_names), table=table)


# ------------------------------------------------------------------------------------------ SFT rows


@dataclass
class SFTRows:
    """What `read_sft` read: the conversations, and the rows it left out (on_bad_row="skip")."""

    dataset: Dataset  # messages, id, fingerprint (+ label), other columns; in input order
    source: str
    format: str
    bad: list[BadRow]  # the rows left out, in input order
    n_rows_in: int  # rows (and non-empty lines) in the input, bad ones included
    where: RowPlaces  # where each row of `dataset` is in the input ("line 12" / "row 3"), for messages


def read_sft(
    source: str | Path | Dataset,
    split: str = "train",
    config: str | None = None,
    *,
    format: str | None = None,
    on_bad_row: str = "error",
    name: str | None = None,
    report: bool = True,
    keep_fingerprints: bool = True,
) -> SFTRows:
    """Read SFT data in any supported format; every row validated once, bad rows handled once.

    `name` names a Dataset source in messages (default "dataset"). Raises RowError (on_bad_row="error")
    naming source, line/row, id and field for the first bad rows; ValueError for file-level problems.
    report=False leaves saying which rows were skipped to the caller (the trainer adds the rows it cannot
    train on and says it once). keep_fingerprints=False fingerprints the text as read now even where the
    source stores one (`poft score`, which scores that text); by default a stored one is kept, for the
    trainer to compare with the text it trains on.
    """
    _check_choices(format, on_bad_row)
    raw = read_rows(source, split, config)
    source_name = name or raw.source
    fmt = _sft_format(raw, source_name, format)
    if not isinstance(source, Dataset) or fmt != "messages":
        say(f"{source_name}: {_DESCRIPTIONS[fmt]} ({'forced' if format else 'detected'}), {len(raw)} rows")
    stored = keep_fingerprints and FINGERPRINT_COLUMN in raw.columns
    kept, dataset, bad = _conversations(raw, fmt, stored, source_name, on_bad_row)
    n_rows_in = len(raw) + len(raw.bad)
    if report or on_bad_row == "error":
        what = f"{source_name}: {len(bad)} of {n_rows_in} rows cannot be read as {fmt}"
        refuse_or_skip(bad, what, on_bad_row, RowError)
    if not len(kept):
        raise ValueError(f"{source_name}: none of its {n_rows_in} rows can be read as {fmt}")
    return SFTRows(dataset, source_name, fmt, bad, n_rows_in, raw.places(kept))


def _check_choices(format: str | None, on_bad_row: str) -> None:
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, got {on_bad_row!r}")


def _sft_format(raw: RawRows, source_name: str, format: str | None) -> str:
    """The format given, or the one the columns say; refuses rows without the columns it needs."""
    if len(raw) == 0 and not raw.bad:
        raise ValueError(f"{source_name}: no rows")
    try:
        fmt = format or detect_format(raw.columns or ["messages"])
    except ValueError as e:  # name the file: the message is the only line a command prints
        raise ValueError(f"{source_name}: {e}") from e
    missing = [c for c in SOURCE_COLUMNS[fmt] if c != "input" and c not in raw.columns]
    if missing and len(raw):
        raise ValueError(f"{source_name}: format {fmt!r} needs columns {missing} (columns: {raw.columns})")
    return fmt


CHUNK_ROWS = 8192  # rows converted at a time: what a reader holds in Python (`arrow_rows.ChunkedRows`)


def _conversations(
    raw: RawRows, fmt: str, stored_fingerprints: bool, source: str, on_bad_row: str
) -> tuple[np.ndarray, Dataset | None, list[BadRow]]:
    """Every row read as `fmt`, a chunk at a time: the indices of the rows kept, the kept rows (messages, id,
    fingerprint, label when there is a `label` column, in place of the source's conversation columns; the
    other columns as they are) and the bad rows (unparsable lines included), in input order. With
    on_bad_row="error", once a row is bad the others are only checked (the read will be refused)."""
    new_columns = ["messages", "id", FINGERPRINT_COLUMN, *(["label"] if "label" in raw.columns else [])]
    order = raw.column_order(list(SOURCE_COLUMNS[fmt]), new_columns)
    from_json = (
        raw.table is None
    )  # the other columns come from the parsed rows (an Arrow source keeps its own)
    wanted = None if from_json else [*SOURCE_COLUMNS[fmt], "id", "prompt_id", "label", FINGERPRINT_COLUMN]
    kept, bad, parts = array("q"), list(raw.bad), ChunkedRows(source)
    chunk: list[tuple[int, dict, dict]] = []
    for i, row in enumerate(raw.iter_rows(wanted)):
        values = _conversation(row, fmt, stored_fingerprints, "label" in new_columns)
        if isinstance(values, RowError):
            bad.append(BadRow(row=raw.where(i), id=row_id(row), problem=str(values)))
        elif not (bad and on_bad_row == "error"):  # once the read will be refused, rows are only checked
            chunk.append((i, row, values))
        if len(chunk) == CHUNK_ROWS:
            _add_chunk(parts, chunk, kept, raw, order if from_json else new_columns)
            chunk = []
    _add_chunk(parts, chunk, kept, raw, order if from_json else new_columns)
    kept_rows = np.frombuffer(kept, dtype=np.int64)
    dataset = parts.finish()
    if dataset is not None and not from_json:
        dataset = raw.assemble(kept_rows, order, dataset)
    return kept_rows, dataset, input_order(bad)


def _conversation(row: dict, fmt: str, stored_fingerprints: bool, labelled: bool) -> dict | RowError:
    """One row's new columns (messages, id, fingerprint, label), or the RowError that says why it has none."""
    try:
        messages = sft_messages(row, fmt)
        label = parse_label(row.get("label")) if labelled else None
    except RowError as e:
        return e
    digest = fingerprint(messages)
    values = {"messages": messages, "id": row_id(row) or digest[:16], "label": label}
    # a stored fingerprint is kept as it is, a missing one as "" (never replaced by the text's own: the
    # trainer's stale-score check must see that the row's scores cannot be tied to the text scored)
    values[FINGERPRINT_COLUMN] = digest if not stored_fingerprints else (row.get(FINGERPRINT_COLUMN) or "")
    return values


def _add_chunk(
    parts: ChunkedRows, chunk: list[tuple[int, dict, dict]], kept: array, raw: RawRows, columns: list[str]
) -> None:
    """The chunk's rows as columns (new values first, then the row's own) into `parts`; their indices to
    `kept`."""
    if not chunk:
        return
    data = {c: [values[c] if c in values else row.get(c) for _, row, values in chunk] for c in columns}
    indices = [i for i, _, _ in chunk]
    parts.add(
        _dataset_from_columns(data, parts.source, raw.places(np.asarray(indices))), raw.where(indices[0])
    )
    kept.extend(indices)


def load_sft_dataset(
    source: str | Path | Dataset,
    split: str = "train",
    config: str | None = None,
    *,
    format: str | None = None,
    on_bad_row: str = "error",
) -> Dataset:
    """`read_sft(...).dataset`: the rows as `messages` + `id` + `fingerprint` (+ `label`) + other columns."""
    return read_sft(source, split, config, format=format, on_bad_row=on_bad_row).dataset
