"""The pipeline's last two stages on tiny models, offline: `poft dpo` from a checkpoint written by
`poft train`, and `poft eval` (lm-evaluation-harness) on a local task file, checked against log-likelihoods
computed here independently."""

import json
import math
import random

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from poft.cli import main

CPU = ["--bf16", "false", "--gradient_checkpointing", "false", "--report_to", "none", "--save_strategy", "no"]


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model("chatml", seed=3, name="model")


def preference_rows(n: int) -> list[dict]:
    rng, rows = random.Random(0), []
    for i in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        user = {"role": "user", "content": f"add {a} and {b}"}
        good, bad = {"role": "assistant", "content": str(a + b)}, {"role": "assistant", "content": str(a * b)}
        if i % 2:  # UltraFeedback-binarized style: prompt string + full conversations
            rows.append({"prompt": user["content"], "chosen": [user, good], "rejected": [user, bad]})
        else:  # implicit prompt
            rows.append({"chosen": [user, good], "rejected": [user, bad]})
    return rows


@pytest.mark.slow
def test_dpo_from_a_poft_checkpoint(model_dir, tmp_path):
    rng = random.Random(1)
    # ShareGPT rows: `poft train` reads them through the same readers as `poft score`
    sft = [{"conversations": [{"from": "human", "value": f"add {i} and 1"}, {"from": "gpt", "value": str(i + 1)}],
            "ref_score": -rng.uniform(4, 7)} for i in range(16)]  # fmt: skip
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))
    poft = tmp_path / "poft"
    assert main(["train", "--model_name_or_path", str(model_dir), "--dataset_name", str(tmp_path / "sft.jsonl"),
                 "--output_dir", str(poft), "--max_steps", "2", "--per_device_train_batch_size", "8",
                 "--learning_rate", "1e-3", *CPU]) == 0  # fmt: skip
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in preference_rows(16)))
    out = tmp_path / "dpo"
    assert main(["dpo", "--model_name_or_path", str(poft), "--dataset_name", str(tmp_path / "prefs.jsonl"),
                 "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "4",
                 "--learning_rate", "1e-3", "--logging_steps", "1", "--max_length", "64", *CPU]) == 0  # fmt: skip
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 3
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in logged if "loss" in r] == losses and (out / "curves.png").exists()
    # the precomputed reference is the PoFT checkpoint itself, so at the first step policy == reference:
    # every implicit reward is 0 and the sigmoid DPO loss is exactly log 2
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)
    assert history[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    start = AutoModelForCausalLM.from_pretrained(poft).state_dict()
    end = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert any(not torch.equal(start[k], end[k]) for k in start)
    base = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    assert any(not torch.equal(start[k], base[k]) for k in start)  # the checkpoint really was trained


def write_task(folder, docs: list[dict]) -> None:
    folder.mkdir()
    (folder / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "poft_tiny_mc.yaml").write_text(
        "task: poft_tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'docs.jsonl'}\n"
        "test_split: test\nfewshot_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        "doc_to_target: label\n"
        'doc_to_choice: "{{choices}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )


def independent_accuracy(model_dir, docs: list[dict]) -> tuple[float, float]:
    """acc / acc_norm from log p(" " + choice | context), summed over the choice's tokens."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    correct = correct_norm = 0
    for doc in docs:
        context = f"Question: {doc['question']}\nAnswer:"
        context_ids = tokenizer(context, add_special_tokens=False).input_ids
        lls = []
        for choice in doc["choices"]:
            whole = tokenizer(context + " " + choice, add_special_tokens=False).input_ids
            continuation = whole[len(context_ids) :]
            with torch.no_grad():
                logits = model(torch.tensor([whole[:-1]])).logits[0, -len(continuation) :].double()
            lls.append(float(torch.log_softmax(logits, -1)[range(len(continuation)), continuation].sum()))
        correct += int(np.argmax(lls) == doc["label"])
        correct_norm += int(np.argmax(np.array(lls) / [len(c) for c in doc["choices"]]) == doc["label"])
    return correct / len(docs), correct_norm / len(docs)


@pytest.mark.slow
def test_eval_on_a_local_task_matches_independent_loglikelihoods(model_dir, tmp_path, capsys):
    pytest.importorskip("lm_eval", reason="lm-eval is the optional extra poft[eval]")
    rng = random.Random(2)
    docs = []
    for _ in range(10):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        choices = [str(a + b), str(a * b), "the quick brown fox"]
        docs.append({"question": f"What is {a} plus {b}?", "choices": choices, "label": rng.randint(0, 2)})
    write_task(tmp_path / "tasks", docs)
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(model_dir), "--tasks", "poft_tiny_mc:0", "--include-path",
                 str(tmp_path / "tasks"), "--output", str(out), "--batch-size", "4"]) == 0  # fmt: skip
    report = json.loads((out / "results.json").read_text())
    entry = report["tasks"]["poft_tiny_mc"]
    acc, acc_norm = independent_accuracy(model_dir, docs)
    assert entry["num_fewshot"] == 0
    assert entry["metrics"]["acc,none"] == pytest.approx(acc, abs=1e-9)
    assert entry["metrics"]["acc_norm,none"] == pytest.approx(acc_norm, abs=1e-9)
    printed = capsys.readouterr().out
    assert "poft_tiny_mc" in printed and "acc_norm,none" in printed and "results.json" in printed


def test_default_tasks_exist_and_unknown_task_is_a_clear_error(model_dir, tmp_path, capsys):
    pytest.importorskip("lm_eval", reason="lm-eval is the optional extra poft[eval]")
    from lm_eval.tasks import TaskManager

    from poft.evaluation import LEADERBOARD_V1

    assert set(LEADERBOARD_V1) <= set(TaskManager().all_tasks)  # the paper's six are real lm-eval task names
    assert (
        main(["eval", "--model", str(model_dir), "--tasks", "no_such_task", "--output", str(tmp_path)]) == 1
    )
    assert "unknown lm-eval tasks ['no_such_task']" in capsys.readouterr().err


@pytest.mark.slow
def test_train_and_dpo_run_with_trls_defaults_on_a_cpu_only_machine(model_dir, tmp_path, capsys):
    """Regression: with TRL's defaults (bf16 on, no use_cpu) both commands stopped on a CPU-only machine with
    "Your setup doesn't support bf16/gpu"; now the CPU is chosen (bf16 where it has the instructions), said."""
    from poft.device import has_gpu

    rows = [{"messages": [{"role": "user", "content": f"add {i} and 1"}, {"role": "assistant", "content": str(i + 1)}],
             "ref_score": -5.0} for i in range(8)]  # fmt: skip
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    quiet = [
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
    ]
    assert main(["train", "--model_name_or_path", str(model_dir), "--dataset_name", str(tmp_path / "sft.jsonl"),
                 "--output_dir", str(tmp_path / "poft"), *quiet]) == 0  # fmt: skip
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in preference_rows(8)))
    assert main(["dpo", "--model_name_or_path", str(tmp_path / "poft"), "--dataset_name",
                 str(tmp_path / "prefs.jsonl"), "--output_dir", str(tmp_path / "dpo"), *quiet]) == 0  # fmt: skip
    if not has_gpu():
        assert "poft: no GPU: training on the CPU (use_cpu=True)" in capsys.readouterr().out
