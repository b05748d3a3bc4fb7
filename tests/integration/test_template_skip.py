"""A row some model's chat template cannot render verbatim (here: Zephyr's template drops `tool` messages) is
left out with --on-bad-row skip, or named in the error, at every stage: `poft score`, `poft train`, `poft dpo`."""

import json
import re

import pytest
from datasets import Dataset
from fixtures.scoring import score  # tests/ is on sys.path

from poft.chat import ChatTemplateError
from poft.dpo import PoFTDPOTrainer
from poft.shards import shard_files
from poft.trainer import PoFTTrainer
from poft.training_configs import PoFTConfig, PoFTDPOConfig

pytestmark = pytest.mark.usefixtures("one_thread")

TOOL_TURN = [
    {"role": "user", "content": "what is the weather in paris"},
    {"role": "assistant", "content": "let me look it up"},
    {"role": "tool", "content": "sunny and 21 degrees"},
    {"role": "assistant", "content": "it is sunny"},
]
DROPPED = r"zephyr: the chat template dropped messages\[2\] \(role tool\)"
CPU = dict(bf16=False, gradient_checkpointing=False, report_to=[], save_strategy="no", max_steps=1)


def sft_rows() -> list[dict]:
    plain = [{"role": "user", "content": "add 12 and 30"}, {"role": "assistant", "content": "42"}]
    return [
        {"id": "r0", "messages": plain, "ref_score": -1.0},
        {"id": "r1", "messages": TOOL_TURN, "ref_score": -2.0},
        {
            "id": "r2",
            "messages": plain[:1] + [{"role": "assistant", "content": "forty two"}],
            "ref_score": -3.0,
        },
    ]


@pytest.fixture(scope="module")
def models(tiny_model) -> dict[str, str]:
    corpus = [json.dumps(sft_rows())]
    return {
        f: tiny_model(f, corpus, vocab_size=300, hidden_size=16, num_layers=1) for f in ("chatml", "zephyr")
    }


@pytest.fixture
def data(tmp_path) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sft_rows()))
    return str(path)


def test_score_leaves_the_row_out_for_every_model_and_records_it(models, data, tmp_path, capsys):
    out = tmp_path / "scored"
    scored = score(data, [models["chatml"], models["zephyr"]], out, on_bad_row="skip", progress=False)
    assert scored["id"] == ["r0", "r2"]  # chatml renders the row fine; it is left out for both models
    assert "1 of 3 rows cannot be scored under the chat templates, left out: line 2 (id=r1): zephyr:" in (
        capsys.readouterr().out
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["dropped"] == 1 and manifest["dataset"]["n_rows_in"] == 3
    [record] = manifest["bad_rows"]
    assert record["row"] == "line 2" and record["id"] == "r1"
    assert "dropped messages[2] (role tool)" in record["problem"]


def test_score_error_names_row_id_and_model(models, data, tmp_path):
    with pytest.raises(
        ChatTemplateError, match=rf"1 of 3 rows .*line 2 \(id=r1\): {DROPPED}.*--on-bad-row skip"
    ):
        score(data, [models["chatml"], models["zephyr"]], tmp_path / "out", progress=False)


def test_train_drops_the_row_with_the_others(models, tmp_path, capsys):
    args = PoFTConfig(output_dir=str(tmp_path / "out"), **CPU)
    trainer = PoFTTrainer(model=models["zephyr"], args=args, train_dataset=Dataset.from_list(sft_rows()))
    assert len(trainer.train_dataset) == 2
    line = next(x for x in capsys.readouterr().out.splitlines() if "cannot be trained on" in x)
    assert line.startswith(
        "poft: train dataset: 1 of 3 rows cannot be trained on (1 the chat template refused it)"
    )
    assert re.search(rf"left out: row 1 \(id=r1\): the chat template refused it \(.*{DROPPED}", line)
    args = PoFTConfig(output_dir=str(tmp_path / "out"), on_bad_row="error", **CPU)
    with pytest.raises(
        ValueError, match=rf"1 of 3 rows cannot be trained on \(.*\): row 1 \(id=r1\): .*{DROPPED}"
    ):
        PoFTTrainer(model=models["zephyr"], args=args, train_dataset=Dataset.from_list(sft_rows()))


def test_dpo_drops_the_pair_or_names_it(models, tmp_path, capsys):
    good = {
        "prompt": TOOL_TURN[:1],
        "chosen": [TOOL_TURN[1]],
        "rejected": [{"role": "assistant", "content": "no"}],
    }
    pairs = Dataset.from_list([good, {**good, "prompt": TOOL_TURN[:3]}, good])
    args = PoFTDPOConfig(output_dir=str(tmp_path / "dpo"), max_length=64, **CPU)
    trainer = PoFTDPOTrainer(model=models["zephyr"], args=args, train_dataset=pairs)
    assert len(trainer.train_dataset) == 2
    said = capsys.readouterr().out
    assert "train dataset: 1 of 3 preference pairs cannot be rendered verbatim by the chat template" in said
    assert "left out: pair 1: prompt + chosen: " in said
    args = PoFTDPOConfig(output_dir=str(tmp_path / "dpo"), max_length=64, on_bad_row="error", **CPU)
    with pytest.raises(
        ChatTemplateError, match=r"pair 1: prompt \+ chosen: .*dropped messages\[2\] \(role tool\)"
    ):
        PoFTDPOTrainer(model=models["zephyr"], args=args, train_dataset=pairs)
    every = Dataset.from_list([{**good, "prompt": TOOL_TURN[:3]}] * 2)  # skip would leave no pair
    args = PoFTDPOConfig(output_dir=str(tmp_path / "dpo"), max_length=64, **CPU)
    with pytest.raises(
        ChatTemplateError, match=r"2 of 2 preference pairs .*pair 0: .*; pair 1: .*use a model"
    ):
        PoFTDPOTrainer(model=models["zephyr"], args=args, train_dataset=every)


def test_score_skips_a_row_that_encodes_to_two_bos_tokens(tiny_model, tmp_path, capsys):
    """Two BOS tokens at the start of one row (here a template adding a second BOS to some rows) stopped the
    run when that model's rows were encoded (after the models before it had scored), even under skip; it is
    now a bad row like the others: named before anything is scored, or left out for every model."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "bang"
    shutil.copytree(tiny_model("llama3", vocab_size=300, hidden_size=16, num_layers=1), folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = (
        "{% if messages[0]['content'].startswith('!') %}{{ bos_token }}{% endif %}" + tokenizer.chat_template
    )
    tokenizer.save_pretrained(folder)
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]}
            for i, text in enumerate(["hello", "! hello", "bye"])]  # fmt: skip
    with pytest.raises(ChatTemplateError, match=r"1 of 3 rows .*row 1 \(id=r1\): bang: .*two BOS"):
        score(Dataset.from_list(rows), [str(folder)], tmp_path / "error", progress=False)
    assert shard_files(tmp_path / "error", "bang") == []  # refused before anything was scored
    scored = score(
        Dataset.from_list(rows), [str(folder)], tmp_path / "skip", on_bad_row="skip", progress=False
    )
    assert scored["id"] == ["r0", "r2"]
    manifest = json.loads((tmp_path / "skip" / "manifest.json").read_text())
    [record] = manifest["bad_rows"]
    assert record["id"] == "r1" and "two BOS" in record["problem"]
