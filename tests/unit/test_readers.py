"""Readers: every format and file type normalises to the same `messages` + `id`; bad files and rows are
named errors (file, line/row, id, field), never a silently short dataset."""

import json

import pandas as pd
import pytest
from datasets import Dataset

from poft.dpo import normalize_preference_row
from poft.evaluation import LEADERBOARD_V1, parse_tasks
from poft.readers import RowError, detect_format, fingerprint, load_sft_dataset, read_sft

CONVERSATIONS = [
    [{"role": "user", "content": "add 2 and 3"}, {"role": "assistant", "content": "5"}],
    [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "and Italy?"},
        {"role": "assistant", "content": "Rome."},
    ],
]
SHAREGPT_ROLE = {"system": "system", "user": "human", "assistant": "gpt"}


def sharegpt_rows():
    return [
        {"conversations": [{"from": SHAREGPT_ROLE[m["role"]], "value": m["content"]} for m in c]}
        for c in CONVERSATIONS
    ]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    "columns, expected",
    [
        (["messages", "id"], "messages"),
        (["conversations", "id"], "sharegpt"),
        (["instruction", "input", "output"], "alpaca"),
        (["instruction", "output"], "alpaca"),
        (["prompt", "completion", "label"], "prompt_completion"),
    ],
)
def test_format_is_detected_from_columns(columns, expected):
    assert detect_format(columns) == expected


def test_preference_and_unknown_columns_are_refused():
    with pytest.raises(ValueError, match="poft dpo"):
        detect_format(["prompt", "chosen", "rejected"])
    with pytest.raises(ValueError, match="cannot tell the data format.*'text'"):
        detect_format(["text"])


def test_sharegpt_jsonl_reads_like_messages_and_says_so(tmp_path, capsys):
    rows = sharegpt_rows()
    rows[1]["conversations"][1]["from"] = "user"  # the user/assistant spelling is accepted too
    rows[1]["conversations"][2]["from"] = "assistant"
    data = load_sft_dataset(write_jsonl(tmp_path / "sg.jsonl", rows))
    assert "ShareGPT `conversations` of {from, value} (detected), 2 rows" in capsys.readouterr().out
    assert data["messages"] == CONVERSATIONS
    assert "conversations" not in data.column_names
    assert data["id"] == [fingerprint(c)[:16] for c in CONVERSATIONS]


def test_id_label_and_other_columns_are_carried_through(tmp_path):
    rows = [dict(r, id=i, label=i == 0, ifd=0.5 + i) for i, r in enumerate(sharegpt_rows())]
    data = load_sft_dataset(write_jsonl(tmp_path / "sg.jsonl", rows))
    assert data["id"] == ["0", "1"]
    assert data["label"] == [True, False]
    assert data["ifd"] == [0.5, 1.5]


def test_alpaca_joins_instruction_and_input():
    rows = [
        {"instruction": "Add the numbers.", "input": "2 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
    ]
    data = load_sft_dataset(Dataset.from_list(rows))
    assert data["messages"] == [
        [{"role": "user", "content": "Add the numbers.\n\n2 3"}, {"role": "assistant", "content": "5"}],
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}],
    ]


def test_prompt_completion_strings_and_conversational(tmp_path):
    c = CONVERSATIONS[1]
    rows = [
        {"prompt": "add 2 and 3", "completion": "5", "label": True},
        {"prompt": json.dumps(c[:3]), "completion": json.dumps(c[3:]), "label": False},
    ]
    path = tmp_path / "pc.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    data = load_sft_dataset(str(path))
    assert data["messages"][0] == CONVERSATIONS[0]
    assert data["messages"][1] == c[:3] + c[3:]
    assert data["label"] == [True, False]


def test_every_file_type_gives_the_same_rows(tmp_path):
    messages_rows = [{"messages": c} for c in CONVERSATIONS]
    jsonl = write_jsonl(tmp_path / "m.jsonl", messages_rows)
    array = tmp_path / "m.json"
    array.write_text(json.dumps(messages_rows, indent=1))
    parquet = tmp_path / "sg.parquet"
    Dataset.from_list(sharegpt_rows()).to_parquet(str(parquet))
    csv = tmp_path / "m.csv"
    pd.DataFrame([{"messages": json.dumps(c)} for c in CONVERSATIONS]).to_csv(csv, index=False)
    folder = tmp_path / "saved"
    Dataset.from_list(sharegpt_rows()).save_to_disk(str(folder))
    for source in (jsonl, str(array), str(parquet), str(csv), str(folder)):
        data = load_sft_dataset(source)
        assert data["messages"] == CONVERSATIONS, source
        assert data["id"] == [fingerprint(c)[:16] for c in CONVERSATIONS], source


def test_format_can_be_forced(tmp_path, capsys):
    rows = [{"messages": "ignored", "prompt": "hi", "completion": "hello"}]
    data = load_sft_dataset(write_jsonl(tmp_path / "x.jsonl", rows), format="prompt_completion")
    assert "(forced)" in capsys.readouterr().out
    assert data["messages"] == [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    ]
    with pytest.raises(ValueError, match="needs columns \\['conversations'\\]"):
        load_sft_dataset(write_jsonl(tmp_path / "y.jsonl", rows), format="sharegpt")


def test_file_cut_mid_line_is_an_error(tmp_path):
    path = tmp_path / "cut.jsonl"
    text = "".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS)
    path.write_text(text[:-15])  # a download cut inside the last row
    with pytest.raises(RowError, match=r"cut\.jsonl: .*line 2: the file ends in the middle of this line"):
        load_sft_dataset(str(path))


def test_malformed_middle_line_and_json_array_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"messages": CONVERSATIONS[0]})
        + "\n{not json}\n"
        + json.dumps({"messages": CONVERSATIONS[1]})
        + "\n"
    )
    with pytest.raises(RowError, match=r"bad\.jsonl: 1 of 3 rows .*line 2: malformed JSON"):
        load_sft_dataset(str(path))
    array = tmp_path / "bad.json"
    array.write_text('[\n {"messages": []},\n {"messages": [}\n]')
    with pytest.raises(ValueError, match=r"bad\.json: line 3, column \d+: malformed JSON"):
        load_sft_dataset(str(array))


def test_bad_rows_name_file_line_id_and_field(tmp_path, capsys):
    rows = sharegpt_rows() + [
        {"id": "u7", "conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]},
        {"id": "u8", "conversations": [{"from": "human", "value": None}]},
    ]
    path = write_jsonl(tmp_path / "sg.jsonl", rows)
    with pytest.raises(RowError) as error:
        load_sft_dataset(path)
    message = str(error.value)
    assert "sg.jsonl: 2 of 4 rows cannot be read as sharegpt" in message
    assert "line 3 (id=u7): conversations[1].from is 'bot'" in message
    assert "line 4 (id=u8): conversations[0].value is NoneType, not a string" in message
    capsys.readouterr()
    skipped = read_sft(path, on_bad_row="skip")  # left out, and recorded for the scorer's manifest
    assert skipped.dataset["messages"] == CONVERSATIONS and skipped.n_rows_in == 4
    said = capsys.readouterr().out
    assert (
        "sg.jsonl: 2 of 4 rows cannot be read as sharegpt, left out: line 3 (id=u7): conversations[1]" in said
    )
    assert [(b["row"], b["id"]) for b in skipped.bad] == [("line 3", "u7"), ("line 4", "u8")]


def test_integer_labels_become_booleans():
    rows = [{"messages": CONVERSATIONS[0], "label": v} for v in (1, -1, 0)]
    assert load_sft_dataset(Dataset.from_list(rows))["label"] == [True, False, False]


def test_bad_alpaca_row_and_bad_label(tmp_path):
    with pytest.raises(RowError, match=r"a\.jsonl: 1 of 1 rows .*: line 1: output is None"):
        load_sft_dataset(write_jsonl(tmp_path / "a.jsonl", [{"instruction": "x", "output": None}]))
    rows = [{"messages": CONVERSATIONS[0], "label": "maybe"}]
    with pytest.raises(RowError, match="label is 'maybe'"):
        load_sft_dataset(write_jsonl(tmp_path / "l.jsonl", rows))


def test_messages_rows_with_ids_pass_through_untouched(capsys):
    rows = [{"messages": c, "id": f"x{i}", "ref_score": -1.0} for i, c in enumerate(CONVERSATIONS)]
    data = load_sft_dataset(Dataset.from_list(rows))
    assert data.column_names == ["messages", "id", "ref_score", "fingerprint"]  # order kept, one column added
    assert data.to_list() == [dict(r, fingerprint=fingerprint(r["messages"])) for r in rows]
    assert capsys.readouterr().out == ""  # nothing converted, nothing dropped: nothing to say


@pytest.mark.parametrize(
    "row",
    [
        {
            "prompt": "add 2 and 3",
            "chosen": CONVERSATIONS[0],
            "rejected": [CONVERSATIONS[0][0], {"role": "assistant", "content": "6"}],
        },
        {
            "chosen": CONVERSATIONS[0],
            "rejected": [CONVERSATIONS[0][0], {"role": "assistant", "content": "6"}],
        },
        {"prompt": "add 2 and 3", "chosen": "5", "rejected": "6"},
        {
            "prompt": [CONVERSATIONS[0][0]],
            "chosen": [CONVERSATIONS[0][1]],
            "rejected": [{"role": "assistant", "content": "6"}],
        },
    ],
    ids=["ultrafeedback", "implicit-prompt", "strings", "conversational"],
)
def test_preference_rows_become_conversational_prompt_chosen_rejected(row):
    assert normalize_preference_row(row) == {
        "prompt": [{"role": "user", "content": "add 2 and 3"}],
        "chosen": [{"role": "assistant", "content": "5"}],
        "rejected": [{"role": "assistant", "content": "6"}],
    }


def test_preference_row_without_prompt_is_an_error():
    with pytest.raises(RowError, match="no prompt"):
        normalize_preference_row({"chosen": "5", "rejected": "6"})


def test_eval_task_specs():
    assert parse_tasks(None) == {t: shots for t, (shots, _) in LEADERBOARD_V1.items()}
    assert parse_tasks(None)["arc_challenge"] == 25 and parse_tasks(None)["truthfulqa_mc2"] == 0
    assert parse_tasks(["a:3,b", "c"], num_fewshot=1) == {"a": 3, "b": 1, "c": 1}
    with pytest.raises(ValueError, match="whole number"):
        parse_tasks(["a:x"])


def test_dataset_repository_folder_with_config_and_split(tmp_path):
    """The Hub-id code path (load_dataset with config and split), offline: a Hub-style folder on disk."""
    repo = tmp_path / "repo"
    (repo / "sg").mkdir(parents=True)
    (repo / "al").mkdir()
    write_jsonl(repo / "sg" / "train.jsonl", sharegpt_rows())
    write_jsonl(repo / "sg" / "test.jsonl", sharegpt_rows()[:1])
    write_jsonl(repo / "al" / "train.jsonl", [{"instruction": "add 2 and 3", "input": "", "output": "5"}])
    (repo / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: sharegpt\n  data_files:\n  - split: train\n    path: sg/train.jsonl\n"
        "  - split: test\n    path: sg/test.jsonl\n"
        "- config_name: alpaca\n  data_files:\n  - split: train\n    path: al/train.jsonl\n---\n"
    )
    assert load_sft_dataset(str(repo), "train", "sharegpt")["messages"] == CONVERSATIONS
    assert load_sft_dataset(str(repo), "test", "sharegpt")["messages"] == CONVERSATIONS[:1]
    assert load_sft_dataset(str(repo), "train", "alpaca")["messages"] == CONVERSATIONS[:1]


def test_preference_text_that_looks_like_json_is_text():
    row = {"prompt": "sort [3, 1, 2]", "chosen": "[1, 2, 3]", "rejected": "{3, 2, 1}"}
    assert normalize_preference_row(row) == {
        "prompt": [{"role": "user", "content": "sort [3, 1, 2]"}],
        "chosen": [{"role": "assistant", "content": "[1, 2, 3]"}],
        "rejected": [{"role": "assistant", "content": "{3, 2, 1}"}],
    }


def numbers_rows(n: int = 64) -> list[dict]:
    """Arithmetic answers that look like JSON numbers ("5"): a reader that re-types values turns them into 5."""
    return [
        {
            "messages": [
                {"role": "user", "content": f"add {i} and 3"},
                {"role": "assistant", "content": str(i + 3)},
            ]
        }
        for i in range(n)
    ]


def test_openai_content_parts_are_text_and_no_other_row_changes(tmp_path, capsys):
    """Regression: one row with OpenAI-style content parts used to make `datasets` decode the whole field as
    JSON, so 29 of 64 valid rows (answers like "5") became numbers and were dropped with only a count."""
    rows = numbers_rows()
    rows[10]["messages"][0]["content"] = [
        {"type": "text", "text": "add 10 "},
        {"type": "text", "text": "and 3"},
    ]
    data = read_sft(write_jsonl(tmp_path / "parts.jsonl", rows))
    assert data.bad == [] and len(data.dataset) == 64
    answers = [m[1]["content"] for m in data.dataset["messages"]]
    assert answers == [str(i + 3) for i in range(64)]  # text stays text
    assert data.dataset["messages"][10][0] == {"role": "user", "content": "add 10 and 3"}
    assert "cannot be read" not in capsys.readouterr().out


def test_non_text_content_part_is_a_named_error(tmp_path):
    rows = numbers_rows(3)
    rows[1]["id"] = "img"
    rows[1]["messages"][0]["content"] = [{"type": "image_url", "image_url": {"url": "x.png"}}]
    with pytest.raises(
        RowError, match=r"line 2 \(id=img\): messages\[0\]\.content\[0\] is a 'image_url' part"
    ):
        load_sft_dataset(write_jsonl(tmp_path / "img.jsonl", rows))


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085", "\x1c", "\r"])
def test_unicode_line_separators_inside_strings_are_text(tmp_path, separator):
    """Regression: a raw U+2028 / U+0085 inside a JSON string (what json.dumps(ensure_ascii=False) writes) was
    refused as malformed JSON, because str.splitlines() splits on it."""
    rows = numbers_rows(3)
    rows[1]["messages"][1]["content"] = f"4{separator}five"
    path = tmp_path / "sep.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    data = load_sft_dataset(str(path))
    assert data["messages"][1][1]["content"] == f"4{separator}five" and len(data) == 3


def test_a_column_with_two_types_is_named_with_its_line(tmp_path):
    rows = [dict(r, quality=0.5) for r in numbers_rows(4)]
    rows[2]["quality"] = "high"
    with pytest.raises(ValueError, match=r"column 'quality' holds a float in some rows and a str .*line 3"):
        load_sft_dataset(write_jsonl(tmp_path / "q.jsonl", rows))
    rows = [dict(r, tags=[1, 2]) for r in numbers_rows(4)]
    rows[1]["tags"] = ["a", "b"]
    with pytest.raises(ValueError, match=r"column 'tags' holds values of different shapes"):
        load_sft_dataset(write_jsonl(tmp_path / "t.jsonl", rows))


def test_file_level_problems_are_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl: no such file"):
        load_sft_dataset(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty.jsonl: no rows"):
        load_sft_dataset(str(tmp_path / "empty.jsonl"))
    (tmp_path / "latin1.jsonl").write_bytes(b'{"messages": []}\n{"x": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"latin1.jsonl: line 2: not valid UTF-8"):
        load_sft_dataset(str(tmp_path / "latin1.jsonl"))


def test_a_stored_fingerprint_is_kept_for_the_trainer_to_check(tmp_path):
    rows = [dict(r, fingerprint="0" * 32) for r in numbers_rows(2)]
    data = load_sft_dataset(Dataset.from_list(rows))
    assert data["fingerprint"] == ["0" * 32] * 2  # poft score's record of what was scored is not overwritten


def test_fingerprint_is_stable_and_content_only():
    a = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert fingerprint(a) == fingerprint([{**m, "name": None} for m in a])
    assert len(fingerprint(a)) == 32 and int(fingerprint(a), 16) >= 0
    assert fingerprint(a) != fingerprint([{"role": "system", "content": "hi"}, a[1]])
    assert fingerprint(a) != fingerprint([a[0], {"role": "assistant", "content": "yo "}])


def test_json_array_of_non_objects_names_the_row(tmp_path):
    path = tmp_path / "array.json"
    path.write_text(json.dumps([{"messages": CONVERSATIONS[0]}, ["not", "an", "object"]]))
    with pytest.raises(
        ValueError, match=r"array\.json: row 1 is a JSON list; a JSON array file must hold objects"
    ):
        load_sft_dataset(str(path))


def test_llama_factory_sharegpt_preference_rows_are_read(tmp_path):
    """LLaMA-Factory's preference layout (its dpo_en_demo.json): ShareGPT `conversations` up to the reply,
    `chosen` / `rejected` as one {from, value} reply, optional `system`; it used to stop with a traceback."""
    from poft.dpo import load_preferences

    rows = [
        {
            "conversations": [{"from": "human", "value": "add 2 and 3"}],
            "chosen": {"from": "gpt", "value": "5"},
            "rejected": {"from": "gpt", "value": "6"},
        },
        {
            "system": "be brief",
            "conversations": [
                {"from": "human", "value": "capital of France?"},
                {"from": "gpt", "value": "Paris."},
                {"from": "human", "value": "and Italy?"},
            ],
            "chosen": {"from": "gpt", "value": "Rome."},
            "rejected": {"from": "gpt", "value": "Paris."},
        },
    ]
    path = tmp_path / "dpo_en_demo.json"
    path.write_text(json.dumps(rows, indent=1))
    pairs = load_preferences(str(path))
    assert pairs[0] == {
        "prompt": [{"role": "user", "content": "add 2 and 3"}],
        "chosen": [{"role": "assistant", "content": "5"}],
        "rejected": [{"role": "assistant", "content": "6"}],
    }
    assert pairs[1]["prompt"] == CONVERSATIONS[1][:4] and pairs[1]["chosen"] == [CONVERSATIONS[1][4]]
    rows[1]["chosen"] = {"from": "bot", "value": "Rome."}
    rows[1]["id"] = "it"
    path.write_text(json.dumps(rows, indent=1))
    with pytest.raises(
        RowError,
        match=r"dpo_en_demo\.json: 1 of 2 rows cannot be read as preference pairs: row 1 \(id=it\): chosen\[0\]\.from is 'bot'",
    ):
        load_preferences(str(path))
