"""Every input format and file type poft reads gives the same conversations on the same real rows.

The first N real Alpaca rows (multi-line answers, quotes, emoji, empty and non-empty `input`) are written
here in every format `readers.detect_format` knows (Alpaca, messages with string and OpenAI-part contents,
ShareGPT, prompt/completion as strings and as message lists) and every file type it reads (JSON array,
JSON lines, Parquet, CSV, a save_to_disk folder), each by the ordinary writer of that type (json, datasets).
`read_sft` must return identical conversations, ids and fingerprints from all of them. Needs no model.
"""

from __future__ import annotations

import json

import pytest
from conftest import CLEAN
from datasets import Dataset

from poft.readers import read_sft

N = 20


def conversation(row: dict) -> list[dict]:
    user = f"{row['instruction']}\n\n{row['input']}" if row["input"].strip() else row["instruction"]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]


def layouts(rows: list[dict]) -> dict[str, list[dict]]:
    """Format name -> the rows in that format (each keeps its `id`)."""

    def parts(text: str) -> list[dict]:  # OpenAI content parts, the text split in two
        return [
            {"type": "text", "text": text[: len(text) // 2]},
            {"type": "text", "text": text[len(text) // 2 :]},
        ]

    sharegpt = {"user": "human", "assistant": "gpt"}
    return {
        "alpaca": [{"id": r["id"], "instruction": r["instruction"], "input": r["input"], "output": r["output"]}
                   for r in rows],
        "messages": [{"id": r["id"], "messages": conversation(r)} for r in rows],
        "messages_parts": [{"id": r["id"], "messages": [{"role": m["role"], "content": parts(m["content"])}
                                                        for m in conversation(r)]} for r in rows],
        "sharegpt": [{"id": r["id"], "conversations": [{"from": sharegpt[m["role"]], "value": m["content"]}
                                                       for m in conversation(r)]} for r in rows],
        "prompt_completion": [{"id": r["id"], "prompt": conversation(r)[0]["content"], "completion": r["output"]}
                              for r in rows],
        "prompt_completion_messages": [{"id": r["id"], "prompt": conversation(r)[:1],
                                        "completion": conversation(r)[1:]} for r in rows],
    }  # fmt: skip


def write(rows: list[dict], path, kind: str) -> str:
    if kind == "json":
        path = path.with_suffix(".json")
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    elif kind == "jsonl":
        path = path.with_suffix(".jsonl")
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif kind == "parquet":
        path = path.with_suffix(".parquet")
        Dataset.from_list(rows).to_parquet(str(path))
    elif kind == "csv":
        path = path.with_suffix(".csv")
        Dataset.from_list(rows).to_csv(str(path), index=False)
    else:
        Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


CASES = [
    (fmt, kind)
    for fmt in (
        "alpaca",
        "messages",
        "messages_parts",
        "sharegpt",
        "prompt_completion",
        "prompt_completion_messages",
    )
    for kind in ("json", "jsonl", "parquet", "disk")
]
CASES += [("alpaca", "csv"), ("prompt_completion", "csv")]  # CSV holds text cells only  # fmt: skip


@pytest.fixture(scope="module")
def real_rows() -> list[dict]:
    rows = json.loads(CLEAN.read_text(encoding="utf-8"))[:N]
    assert any(r["input"].strip() for r in rows) and any("\n" in r["output"] for r in rows)
    return rows


@pytest.mark.parametrize("fmt,kind", CASES)
def test_every_format_reads_the_same_real_conversations(fmt, kind, real_rows, tmp_path):
    source = write(layouts(real_rows)[fmt], tmp_path / f"{fmt}-{kind}", kind)
    read = read_sft(source)
    assert read.format == fmt.removesuffix("_parts").removesuffix("_messages")
    assert read.bad == [] and len(read.dataset) == N
    assert read.dataset["id"] == [r["id"] for r in real_rows]
    assert read.dataset["messages"] == [conversation(r) for r in real_rows]
    reference = read_sft(write(layouts(real_rows)["messages"], tmp_path / "reference", "jsonl")).dataset
    assert read.dataset["fingerprint"] == reference["fingerprint"]
