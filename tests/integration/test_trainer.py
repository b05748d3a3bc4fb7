"""PoFTTrainer end to end on a tiny model: training, metrics, accumulation / multi-process equivalence,
LoRA, dropped rows, and the `poft train` CLI."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from poft import PoFTConfig, PoFTTrainer
from poft.example import make_rows

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
POFT_METRICS = [
    "poft/policy_score",
    "poft/ref_score",
    "poft/margin",
    "poft/win_rate",
    "poft/weight",
    "poft/nll",
]


def cpu_config(tmp_path, config_class=PoFTConfig, **overrides) -> PoFTConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-3,
        logging_steps=1,
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        seed=0,
    )
    settings.update(overrides)
    return config_class(**settings)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model):
    """A saved tiny model folder and 8 rows of varied lengths (so token- and example-means differ)."""
    root = tmp_path_factory.mktemp("tiny")
    rows = make_rows(8, seed=1)
    rows[2]["messages"][1]["content"] = "a much longer answer than the others, to vary the lengths"
    rows[5]["messages"] = rows[5]["messages"] + [
        {"role": "user", "content": "and again"},
        {"role": "assistant", "content": "again: " + rows[5]["messages"][1]["content"]},
    ]
    corpus = [m["content"] for r in rows for m in r["messages"]]
    model = tiny_model("chatml", corpus, vocab_size=320, hidden_size=32, name="model")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"model": model, "data": str(root / "train.jsonl"), "rows": rows, "root": root}


def test_poft_trains_and_logs_metrics(tiny, tmp_path):
    trainer = PoFTTrainer(
        model=tiny["model"], args=cpu_config(tmp_path), train_dataset=Dataset.from_list(tiny["rows"])
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 4
    for entry in logs:
        assert math.isfinite(entry["loss"])
        for key in POFT_METRICS:
            assert key in entry and math.isfinite(entry[key]), key
        assert 0.0 < entry["poft/weight"] < 1.0
        assert 0.0 <= entry["poft/win_rate"] <= 1.0
        assert entry["poft/margin"] == pytest.approx(
            entry["poft/policy_score"] - entry["poft/ref_score"], abs=1e-4
        )
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)


def test_loss_equals_mean_poft_loss_over_examples(tiny, tmp_path):
    """With beta=1, gamma=0 and one full batch, the logged loss is mean(-logsigmoid(r_theta - r_ref))."""
    args = cpu_config(tmp_path, per_device_train_batch_size=8, max_steps=1, learning_rate=0.0)
    trainer = PoFTTrainer(model=tiny["model"], args=args, train_dataset=Dataset.from_list(tiny["rows"]))
    trainer.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    with torch.no_grad():
        out = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        lp = torch.log_softmax(out.logits[:, :-1].float(), -1)
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        token_lp = lp.gather(-1, labels.clamp(min=0)[..., None])[..., 0] * mask
        r = token_lp.sum(-1) / mask.sum(-1)
        expected = -torch.nn.functional.logsigmoid(r - batch["poft_ref_score"]).mean()
    assert trainer.state.log_history[0]["loss"] == pytest.approx(expected.item(), rel=1e-4)


def test_sft_is_trls_token_level_cross_entropy(tiny, tmp_path):
    args = cpu_config(
        tmp_path, objective="sft", per_device_train_batch_size=8, max_steps=1, learning_rate=0.0
    )
    rows = [{k: v for k, v in r.items() if k != "ref_score"} for r in tiny["rows"]]  # SFT needs no scores
    trainer = PoFTTrainer(model=tiny["model"], args=args, train_dataset=Dataset.from_list(rows))
    trainer.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    assert "poft_ref_score" not in batch
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=-100
        )
    assert trainer.state.log_history[0]["loss"] == pytest.approx(expected.item(), rel=1e-4)
    assert "poft/weight" not in trainer.state.log_history[0]


def first_batch_loss_and_grads(trainer) -> tuple[float, dict[str, torch.Tensor]]:
    """compute_loss on the trainer's first training batch (no optimizer step) and the gradients it gives."""
    model = trainer.model
    model.train()
    model.zero_grad()
    batch = next(iter(trainer.get_train_dataloader()))
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return loss.item(), grads


def test_sft_with_dft_is_trls_dft_on_the_same_response_tokens(tiny, tmp_path):
    """objective='sft', loss_type='dft' == TRL's SFTTrainer(loss_type='dft'): same labels, loss, gradients.

    TRL masks with the template's {% generation %} markers (assistant_only_loss=True); the tiny ChatML
    template puts the end-of-turn inside them, so TRL's labels are poft.chat's response tokens exactly
    (checked first). Without markers TRL needs a training template of its own for the model's family.
    """
    from trl import SFTConfig, SFTTrainer

    rows = [{k: v for k, v in r.items() if k != "ref_score"} for r in tiny["rows"]]
    settings = dict(per_device_train_batch_size=8, max_steps=1, learning_rate=0.0)
    ours = PoFTTrainer(
        model=tiny["model"],
        args=cpu_config(tmp_path, objective="sft", loss_type="dft", **settings),
        train_dataset=Dataset.from_list(rows),
    )
    trls = SFTTrainer(
        model=tiny["model"],
        args=cpu_config(tmp_path, SFTConfig, loss_type="dft", assistant_only_loss=True, **settings),
        train_dataset=Dataset.from_list(rows),
    )
    assert ours.train_dataset["labels"] == trls.train_dataset["labels"]
    assert ours.train_dataset["input_ids"] == trls.train_dataset["input_ids"]

    loss, grads = first_batch_loss_and_grads(ours)
    trl_loss, trl_grads = first_batch_loss_and_grads(trls)
    assert loss == pytest.approx(trl_loss, rel=1e-6)
    assert grads.keys() == trl_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        torch.testing.assert_close(grad, trl_grads[name], rtol=1e-5, atol=1e-7)

    # and it is DFT, not NLL: -mean over response tokens of p.detach() * log p (arXiv 2508.05629)
    batch = ours.data_collator([ours.train_dataset[i] for i in range(8)])
    with torch.no_grad():
        logits = ours.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        dft = -(lp.exp() * lp)[mask].sum() / mask.sum()
        nll = -lp[mask].mean()
    assert loss == pytest.approx(dft.item(), rel=1e-4)
    assert abs(dft.item() - nll.item()) > 0.1 * nll.item()

    ours.train()
    trls.train()
    for key in ("loss", "grad_norm"):
        assert ours.state.log_history[0][key] == pytest.approx(trls.state.log_history[0][key], rel=1e-5), key


@pytest.mark.parametrize("objective", ["bi_poft", "sft"])
def test_deprecated_loss_type_spelling_warns_and_trains_like_objective(tiny, tmp_path, objective):
    with pytest.warns(FutureWarning, match=f"use objective='{objective}'"):
        old = cpu_config(tmp_path / "old", loss_type=objective, max_steps=2)
    new = cpu_config(tmp_path / "new", objective=objective, max_steps=2)
    assert (old.objective, old.loss_type) == (new.objective, new.loss_type) == (objective, "nll")
    runs = []
    for args in (old, new):
        trainer = PoFTTrainer(model=tiny["model"], args=args, train_dataset=Dataset.from_list(tiny["rows"]))
        trainer.train()
        runs.append((trainer.state.log_history, trainer.model.state_dict()))
    (old_log, old_state), (new_log, new_state) = runs
    assert [h["loss"] for h in old_log if "loss" in h] == [h["loss"] for h in new_log if "loss" in h]
    assert ("poft/weight" in old_log[0]) == (objective != "sft")
    for name, value in new_state.items():
        assert torch.equal(old_state[name], value), name


@pytest.mark.parametrize(
    ("objective", "loss_type", "message"),
    [
        ("poft", "dft", "loss_type='dft' is a token loss and objective='poft'"),
        ("bi_poft", "dft", "loss_type='dft' is a token loss and objective='bi_poft'"),
        ("sft", "poft", "objective='sft' and loss_type='poft' disagree"),
        ("bi_poft", "sft", "objective='bi_poft' and loss_type='sft' disagree"),
    ],
)
def test_objective_and_loss_type_that_disagree_are_an_error(tmp_path, objective, loss_type, message):
    with pytest.raises(ValueError, match=message):
        cpu_config(tmp_path, objective=objective, loss_type=loss_type)


def test_objective_sft_with_default_loss_type_is_trls_nll(tmp_path):
    args = cpu_config(tmp_path, objective="sft")
    assert (args.objective, args.loss_type, args.uses_scores) == ("sft", "nll", False)
    assert cpu_config(tmp_path).uses_scores and cpu_config(tmp_path, objective="bi_poft").uses_scores


def run_one_step(
    tiny,
    out: Path,
    batch: int,
    accum: int,
    nproc: int = 1,
    objective: str = "poft",
    deepspeed: str | None = None,
) -> dict:
    script = [
        str(HERE / "ddp_train.py"),
        tiny["model"],
        tiny["data"],
        str(out),
        str(batch),
        str(accum),
        objective,
    ]
    script += [deepspeed] if deepspeed else []
    if nproc == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            *script,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out / "weights.pt")


def assert_same_update(a: dict, b: dict, initial: dict) -> None:
    moved = 0
    for name, start in initial.items():
        assert torch.allclose(a["state"][name], b["state"][name], rtol=1e-4, atol=1e-6), name
        moved += int(not torch.equal(a["state"][name], start))
    assert moved > 0  # the step really changed the weights


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["poft", "bi_poft"])
def test_gradient_accumulation_and_two_processes_give_one_update(tiny, tmp_path, objective):
    """1 process x 8 rows, 1 process x 4 micro-batches of 2, and 2 processes x 4 rows: the same SGD update."""
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(tiny["model"]).state_dict()
    big = run_one_step(tiny, tmp_path / "big", batch=8, accum=1, objective=objective)
    accumulated = run_one_step(tiny, tmp_path / "accum", batch=2, accum=4, objective=objective)
    assert_same_update(big, accumulated, initial)
    assert big["log"][0]["loss"] == pytest.approx(accumulated["log"][0]["loss"], rel=1e-5)
    if objective == "poft":
        two = run_one_step(tiny, tmp_path / "ddp", batch=4, accum=1, nproc=2, objective=objective)
        assert_same_update(big, two, initial)
        assert big["log"][0]["loss"] == pytest.approx(two["log"][0]["loss"], rel=1e-5)
        assert big["log"][0]["poft/weight"] == pytest.approx(two["log"][0]["poft/weight"], rel=1e-5)


@pytest.mark.slow
def test_deepspeed_zero2_two_processes_give_the_same_update(tiny, tmp_path):
    """DeepSpeed ZeRO-2 on CPU, 2 processes x 4 rows == 1 process x 8 rows (same loss, same weights)."""
    pytest.importorskip("deepspeed")
    from transformers import AutoModelForCausalLM

    config = tmp_path / "zero2.json"
    config.write_text(
        json.dumps(
            {
                "zero_optimization": {"stage": 2},
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto",
                "bf16": {"enabled": False},
            }
        )
    )
    initial = AutoModelForCausalLM.from_pretrained(tiny["model"]).state_dict()
    big = run_one_step(tiny, tmp_path / "big", batch=8, accum=1)
    zero2 = run_one_step(tiny, tmp_path / "zero2", batch=4, accum=1, nproc=2, deepspeed=str(config))
    assert zero2["log"][0]["loss"] == pytest.approx(big["log"][0]["loss"], rel=1e-5)
    assert "poft/weight" in zero2["log"][0]
    assert_same_update(big, zero2, initial)


def test_lora_trains_adapters_only(tiny, tmp_path):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = PoFTTrainer(
        model=tiny["model"],
        args=cpu_config(tmp_path, learning_rate=1e-2),
        train_dataset=Dataset.from_list(tiny["rows"]),
        peft_config=peft_config,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    lora_changed = [n for n in before if "lora_B" in n and not torch.equal(before[n], after[n])]
    base_changed = [n for n in before if "lora_" not in n and not torch.equal(before[n], after[n])]
    assert lora_changed and not base_changed
    assert all(
        math.isfinite(h["loss"]) and "poft/weight" in h for h in trainer.state.log_history if "loss" in h
    )


def bad_rows(tiny) -> list[dict]:
    rows = [dict(r) for r in tiny["rows"]]
    rows[0] = {**rows[0], "ref_score": float("nan")}
    rows[1] = {**rows[1], "ref_score": None}
    rows[2] = {
        **rows[2],
        "messages": [{"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "y"}],
    }
    rows[3] = {**rows[3], "messages": [{"role": "user", "content": "no answer"}]}
    return rows


def test_bad_rows_are_dropped_with_one_line(tiny, tmp_path, capsys):
    args = cpu_config(tmp_path, max_length=48, max_steps=1)
    trainer = PoFTTrainer(model=tiny["model"], args=args, train_dataset=Dataset.from_list(bad_rows(tiny)))
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if "cannot be trained on" in x)
    assert line.startswith("poft: train dataset: 4 of 8 rows cannot be trained on (")
    assert "left out: row 0 (id=tiny-0): missing or non-finite ref_score" in line
    assert "2 missing or non-finite ref_score" in line
    assert "1 no response token after truncation to max_length=48" in line
    assert "1 bad conversation" in line
    assert len(trainer.train_dataset) == 4
    trainer.train()
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)


def test_cli_reads_the_file_once_and_names_bad_lines_with_the_rest(tiny, tmp_path, capsys, monkeypatch):
    """`poft train` reads its file once (the trainer does not read the rows again) and says in one line what
    it dropped: the unreadable JSON line and the rows it cannot train on, named by file line on error."""
    from poft import readers
    from poft.cli import main

    lines = [json.dumps(r) for r in bad_rows(tiny)]
    lines.insert(5, "{not json")
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    reads = []
    monkeypatch.setattr(
        readers, "read_rows", lambda *a, _read=readers.read_rows, **k: reads.append(a) or _read(*a, **k)
    )
    argv = ["train", "--model_name_or_path", tiny["model"], "--dataset_name", str(tmp_path / "bad.jsonl"),
            "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--max_length", "48", "--report_to", "none",
            "--bf16", "false", "--gradient_checkpointing", "false", "--use_cpu", "true", "--save_strategy", "no"]  # fmt: skip
    assert main(argv) == 0
    assert len(reads) == 1
    dropped = [x for x in capsys.readouterr().out.splitlines() if "left out" in x]
    assert len(dropped) == 1 and "5 of 9 rows cannot be trained on" in dropped[0]
    assert "2 bad conversation" in dropped[0] and "line 6: bad conversation (malformed JSON" in dropped[0]
    monkeypatch.setenv("POFT_DEBUG", "1")  # the error itself, not the CLI's one line
    with pytest.raises(
        ValueError,
        match=r"5 of 9 rows cannot be trained on \(.*\): line 1 \(id=tiny-0\).*line 4 .*; line 6: bad conversation \(malformed JSON",
    ):
        main([*argv, "--on_bad_row", "error"])


def test_bad_rows_can_stop_the_run_naming_them(tiny, tmp_path):
    args = cpu_config(tmp_path, max_length=48, on_bad_row="error")
    with pytest.raises(
        ValueError, match=r"4 of 8 rows.*row 0 \(id=tiny-0\): missing or non-finite ref_score"
    ):
        PoFTTrainer(model=tiny["model"], args=args, train_dataset=Dataset.from_list(bad_rows(tiny)))


def test_missing_score_column_is_a_clear_error(tiny, tmp_path):
    rows = [{k: v for k, v in r.items() if k != "ref_score"} for r in tiny["rows"]]
    with pytest.raises(ValueError, match="no 'ref_score' column"):
        PoFTTrainer(model=tiny["model"], args=cpu_config(tmp_path), train_dataset=Dataset.from_list(rows))


def test_cli_train_on_recipe(tiny, tmp_path):
    """`poft train --config examples/tiny_poft.yaml` with overrides writes the model and logs the PoFT metrics."""
    out = tmp_path / "cli_out"
    cmd = [
        sys.executable, "-m", "poft", "train", "--config", str(ROOT / "examples" / "tiny_poft.yaml"),
        "--model_name_or_path", tiny["model"], "--dataset_name", tiny["data"], "--output_dir", str(out),
        "--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--logging_steps", "1",
    ]  # fmt: skip
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "model.safetensors").exists() and (out / "chat_template.jinja").exists()
    assert "'poft/weight'" in done.stdout + done.stderr and "'poft/margin'" in done.stdout + done.stderr
    assert "objective=poft" in done.stdout


def test_chat_template_path_is_honoured(tiny, tmp_path):
    """TRL's `chat_template_path` (how the base-model recipes borrow an instruct template) reaches PoFT's encoding."""
    from poft.tiny import ZEPHYR_TEMPLATE

    template = tmp_path / "zephyr.jinja"
    template.write_text(ZEPHYR_TEMPLATE)
    args = cpu_config(tmp_path, chat_template_path=str(template), max_steps=1)
    trainer = PoFTTrainer(model=tiny["model"], args=args, train_dataset=Dataset.from_list(tiny["rows"]))
    text = trainer.processing_class.decode(trainer.train_dataset[0]["input_ids"])
    assert "<|assistant|>" in text and "<|im_start|>" not in text
    labels = [t for t in trainer.train_dataset[0]["labels"] if t != -100]
    assert trainer.processing_class.decode(labels).endswith(trainer.processing_class.eos_token)


def test_cli_train_dataset_format_is_forced(tiny, tmp_path, capsys):
    """`poft train --dataset_format` reaches the reader: forcing the wrong format names the missing columns."""
    from poft.cli import main

    assert (
        main(
            ["train", "--model_name_or_path", tiny["model"], "--dataset_name", tiny["data"]]
            + [
                "--output_dir",
                str(tmp_path),
                "--dataset_format",
                "sharegpt",
                "--report_to",
                "none",
                "--bf16",
                "false",
            ]
        )
        == 1
    )
    assert "format 'sharegpt' needs columns" in capsys.readouterr().err  # one line, no traceback
