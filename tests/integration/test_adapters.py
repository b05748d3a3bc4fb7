"""LoRA adapter folders wherever a model goes, on tiny models, offline: what a path is (model, adapter, GGUF,
neither) and the errors; `poft merge` writes a model computing what base + adapter computes; `poft score` of
an adapter equals that of its merged model; `poft dpo` from an adapter takes base + adapter as its reference
(not the bare base); `poft eval` of an adapter equals that of its merged model.

The adapter is built with peft directly, its lora_B drawn at random (a freshly initialised LoRA is the base
model exactly, which would hide a reference computed from the base), and saved with a chat template other
than its base's, as `poft train --use_peft --chat_template_path` saves one.
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from test_dpo_eval import independent_accuracy, preference_rows, write_task  # this folder is on sys.path
from transformers import AutoModelForCausalLM, AutoTokenizer

from poft.adapters import AdapterError, NotAModelError, base_model, model_kind
from poft.cli import main

CPU = ["--bf16", "false", "--gradient_checkpointing", "false", "--report_to", "none", "--save_strategy", "no"]


@pytest.fixture(scope="module")
def lora(tiny_model, tmp_path_factory) -> dict:
    """A tiny base model, a LoRA adapter on it (non-zero, with the `chatml` template of poft in its folder)."""
    from peft import LoraConfig, get_peft_model

    from poft.aligned import read_chat_template

    base = tiny_model("chatml", seed=5, name="base")
    root = tmp_path_factory.mktemp("lora")
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    generator = torch.Generator().manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.3
    adapter = root / "adapter"
    model.save_pretrained(adapter)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = read_chat_template("chatml")
    assert tokenizer.chat_template != AutoTokenizer.from_pretrained(base).chat_template
    tokenizer.save_pretrained(adapter)
    return {"base": base, "adapter": str(adapter), "root": root, "template": tokenizer.chat_template}


def adapter_model(lora):
    from peft import PeftModel

    return PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(lora["base"]), lora["adapter"]
    ).eval()


def error_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_model_kind_tells_models_adapters_and_gguf_apart(lora, tmp_path):
    assert model_kind(lora["base"]) == "model" and model_kind(lora["adapter"]) == "adapter"
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert model_kind(str(tmp_path / "m.gguf")) == "gguf"
    assert model_kind("org/some-model") == "model"  # a Hub id: transformers decides
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        NotAModelError, match="no config.json .* and no adapter_config.json .* holds: nothing"
    ):
        model_kind(str(tmp_path / "empty"))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"")
    with pytest.raises(NotAModelError, match="neither a model nor an adapter.*holds: model.safetensors"):
        model_kind(str(tmp_path / "weights"))
    with pytest.raises(NotAModelError, match="is a file"):
        model_kind(str(tmp_path / "weights" / "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        model_kind(str(tmp_path / "gone"))
    assert base_model(lora["adapter"]) == lora["base"]


def moved_adapter(lora, tmp_path, base: str | None) -> str:
    """A copy of the adapter whose adapter_config.json names `base` as its base model."""
    copy = tmp_path / "moved-adapter"
    shutil.copytree(lora["adapter"], copy)
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base}))
    return str(copy)


def test_a_missing_base_model_is_named_with_its_adapter(lora, tmp_path, capsys):
    gone = str(tmp_path / "gone-base")
    adapter = moved_adapter(lora, tmp_path, gone)
    with pytest.raises(AdapterError, match=f"adapter {adapter}: its base model {gone} .* does not exist"):
        base_model(adapter)
    assert main(["eval", "--model", adapter, "--tasks", "x", "--output", str(tmp_path / "e")]) == 1
    line = error_line(capsys)
    assert adapter in line and gone in line and "base_model_name_or_path" in line, line
    assert main(["merge", adapter, "--output", str(tmp_path / "m")]) == 1
    assert gone in error_line(capsys) and not (tmp_path / "m").exists()
    assert main(["merge", adapter, "--base_model", lora["base"], "--output", str(tmp_path / "m")]) == 0
    offline_hub = moved_adapter(lora, tmp_path / "h", "poft-nobody/no-base")
    with pytest.raises(AdapterError, match="poft-nobody/no-base .* nor a Hub model in the HF cache"):
        base_model(offline_hub)
    not_a_model = moved_adapter(lora, tmp_path / "n", str(tmp_path))
    with pytest.raises(AdapterError, match="is a folder without config.json, not a model folder"):
        base_model(not_a_model)
    empty = moved_adapter(lora, tmp_path / "e", None)
    with pytest.raises(AdapterError, match="names no base model"):
        base_model(empty)


def test_a_folder_that_is_neither_is_refused_saying_what_it_lacks(lora, tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("hi")
    assert main(["eval", "--model", str(tmp_path / "notes"), "--output", str(tmp_path / "e")]) == 1
    line = error_line(capsys)
    assert "--model" in line and "neither a model nor an adapter" in line and "README.md" in line, line
    assert main(["merge", lora["base"], "--output", str(tmp_path / "m")]) == 1
    assert "is a model, not a PEFT adapter folder" in error_line(capsys)


def test_train_from_an_adapter_says_to_merge_it_first(lora, tmp_path, capsys):
    (tmp_path / "rows.jsonl").write_text('{"prompt": "a", "completion": "b", "ref_score": -1.0}\n')
    assert main(["train", "--model_name_or_path", lora["adapter"], "--dataset_name", str(tmp_path / "rows.jsonl"),
                 "--output_dir", str(tmp_path / "out"), *CPU]) == 1  # fmt: skip
    line = error_line(capsys)
    assert "is a PEFT adapter folder" in line and f"poft merge {lora['adapter']} --output DIR" in line, line


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merge_writes_a_model_that_computes_base_plus_adapter(lora, tmp_path):
    out = tmp_path / "merged"
    assert main(["merge", lora["adapter"], "--output", str(out)]) == 0
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.arange(5, 45)[None]
    expected = logits(adapter_model(lora), ids)
    torch.testing.assert_close(logits(merged, ids), expected, rtol=0, atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(lora["base"]).eval()
    assert (logits(base, ids) - expected).abs().max() > 1e-2  # the adapter changes the model
    assert AutoTokenizer.from_pretrained(out).chat_template == lora["template"]  # the adapter's
    record = json.loads((out / "poft_merge.json").read_text())
    assert record["base_model"] == lora["base"] and record["dtype"] == "float32"
    assert main(["merge", lora["adapter"], "--output", str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto").dtype == torch.bfloat16


def test_merge_output_is_written_as_a_unit(lora, tmp_path, capsys, monkeypatch):
    """A non-empty --output is refused without --overwrite and replaced with it; a merge that fails while
    writing (a full disk) leaves nothing at --output and names it."""
    import errno

    from transformers import PreTrainedModel

    out = tmp_path / "merged"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["merge", lora["adapter"], "--output", str(out)]) == 1
    assert "is not empty (it holds notes.txt)" in capsys.readouterr().err
    assert main(["merge", lora["adapter"], "--output", str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").exists() and not (out / "notes.txt").exists()

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_disk)
    fresh = tmp_path / "fresh"
    assert main(["merge", lora["adapter"], "--output", str(fresh)]) == 1
    err = capsys.readouterr().err
    assert f"cannot write the merged model to {fresh}" in err and "No space left on device" in err
    assert not fresh.exists() and not list(tmp_path.glob(".fresh.poft-tmp-*"))


@pytest.fixture(scope="module")
def merged(lora) -> str:
    out = lora["root"] / "merged"
    assert main(["merge", lora["adapter"], "--output", str(out)]) == 0
    return str(out)


def test_score_of_an_adapter_equals_score_of_its_merged_model(lora, merged, tmp_path, capsys):
    from datasets import load_from_disk

    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"add {i} and {i + 3}"},
                                         {"role": "assistant", "content": f"{2 * i + 3} is the sum"}]}
            for i in range(6)]  # fmt: skip
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scored"
    assert main(["score", "--dataset", str(tmp_path / "rows.jsonl"), "--model", f"a={lora['adapter']}",
                 "--model", f"m={merged}", "--output", str(out), "--dtype", "float32", "--no-progress"]) == 0  # fmt: skip
    assert (
        f"aligned model a: a LoRA adapter on {lora['base']}, scored as base + adapter"
        in capsys.readouterr().out
    )
    scored = load_from_disk(str(out))
    assert scored["a_n_tokens"] == scored["m_n_tokens"]
    assert scored["a_logp_sum"] == pytest.approx(scored["m_logp_sum"], abs=1e-5)
    assert all(math.isfinite(x) for x in scored["a_logp_sum"])
    models = {m["alias"]: m for m in json.loads((out / "manifest.json").read_text())["models"]}
    assert models["a"]["base_model"] == lora["base"] and "base_model" not in models["m"]
    assert models["a"]["revision"].startswith("adapter-sha256-") and "+local-" in models["a"]["revision"]
    assert models["a"]["template_hash"] == models["m"]["template_hash"]  # the adapter folder's template


def test_an_adapters_identity_holds_its_own_hash_and_its_bases(lora, tmp_path):
    from safetensors.torch import load_file, save_file

    from poft.aligned import load_aligned_models

    changed = Path(moved_adapter(lora, tmp_path, lora["base"]))
    weights = load_file(changed / "adapter_model.safetensors")
    save_file({k: v * 2 for k, v in weights.items()}, changed / "adapter_model.safetensors")
    other_base = tmp_path / "other-base"
    shutil.copytree(lora["base"], other_base)
    (other_base / "config.json").write_text(
        (other_base / "config.json").read_text().replace("}", ' , "x": 1}', 1)
    )
    rebased = moved_adapter(lora, tmp_path / "r", str(other_base))
    revisions = [m.revision for m in load_aligned_models([lora["adapter"], str(changed), rebased])]
    assert len(set(revisions)) == 3, revisions
    (own, base), (changed_own, same_base), (_, other) = (r.split("+") for r in revisions)
    assert changed_own != own and same_base == base  # other weights, same base
    assert other != base  # the base changed


def reference_log_probs(model, row: dict) -> tuple[float, float]:
    """log p(chosen | prompt) and log p(rejected | prompt), summed over the completion's tokens."""
    sums = []
    for side in ("chosen_ids", "rejected_ids"):
        ids = torch.tensor([row["prompt_ids"] + row[side]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
        positions = torch.arange(len(row["prompt_ids"]) - 1, ids.shape[1] - 1)
        sums.append(float(logp[positions, ids[0, positions + 1]].sum()))
    return sums[0], sums[1]


@pytest.mark.parametrize("continue_adapter", [True, False], ids=["use_peft", "merged"])
def test_dpo_reference_is_base_plus_adapter_not_the_base(lora, tmp_path, continue_adapter):
    from datasets import Dataset

    from poft.dpo import PoFTDPOTrainer, policy_from_adapter
    from poft.training_configs import PoFTDPOConfig

    config = PoFTDPOConfig(output_dir=str(tmp_path), bf16=False, gradient_checkpointing=False, report_to="none",
                           max_length=64, per_device_train_batch_size=4, model_init_kwargs={"dtype": "float32"})  # fmt: skip
    model, tokenizer = policy_from_adapter(lora["adapter"], config, continue_adapter)
    assert tokenizer.chat_template == lora["template"]
    trainer = PoFTDPOTrainer(model=model, args=config, processing_class=tokenizer,
                             train_dataset=Dataset.from_list(preference_rows(6)))  # fmt: skip
    rows = list(trainer.train_dataset)
    ours = [x for r in rows for x in (r["ref_chosen_logps"], r["ref_rejected_logps"])]
    with_adapter = [x for r in rows for x in reference_log_probs(adapter_model(lora), r)]
    base = AutoModelForCausalLM.from_pretrained(lora["base"]).eval()
    bare = [x for r in rows for x in reference_log_probs(base, r)]
    assert ours == pytest.approx(with_adapter, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(with_adapter, bare, strict=True)) > 0.1  # the base would differ


@pytest.mark.slow
def test_dpo_from_an_adapter_on_the_command_line(lora, tmp_path):
    """--use_peft: the adapter trains on, the output is an adapter on the same base (no `ref/` copy); without it,
    a full model. Both start with policy == reference: loss log 2, margins 0."""
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in preference_rows(8)))
    common = ["--dataset_name", str(tmp_path / "prefs.jsonl"), "--max_steps", "2", "--per_device_train_batch_size",
              "4", "--learning_rate", "1e-2", "--logging_steps", "1", "--max_length", "64", *CPU]  # fmt: skip
    for flags, out in (["--use_peft"], tmp_path / "lora"), ([], tmp_path / "full"):
        assert (
            main(["dpo", "--model_name_or_path", lora["adapter"], "--output_dir", str(out), *common, *flags])
            == 0
        )
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
        assert history[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
        assert AutoTokenizer.from_pretrained(out).chat_template == lora["template"]
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == lora["base"] and not (tmp_path / "lora" / "ref").exists()
    assert not (tmp_path / "lora" / "config.json").exists() and (tmp_path / "full" / "config.json").exists()
    from safetensors.torch import load_file

    before = load_file(Path(lora["adapter"]) / "adapter_model.safetensors")
    after = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    # the DPO'd adapter goes on: merged, it is a model
    assert main(["merge", str(tmp_path / "lora"), "--output", str(tmp_path / "lora-merged")]) == 0


@pytest.mark.slow
def test_eval_of_an_adapter_equals_eval_of_its_merged_model(lora, merged, tmp_path):
    pytest.importorskip("lm_eval", reason="lm-eval is the optional extra poft[eval]")
    docs = [{"question": f"What is {a} plus {a + 1}?", "choices": [str(2 * a + 1), str(a * a), "a fox"],
             "label": a % 3} for a in range(8)]  # fmt: skip
    write_task(tmp_path / "tasks", docs)
    out = tmp_path / "eval"
    assert main(["eval", "--model", lora["adapter"], "--tasks", "poft_tiny_mc:0", "--include-path",
                 str(tmp_path / "tasks"), "--output", str(out), "--batch-size", "4"]) == 0  # fmt: skip
    report = json.loads((out / "results.json").read_text())
    assert report["base_model"] == lora["base"] and len(report["adapter_sha256"]) == 64
    metrics = report["tasks"]["poft_tiny_mc"]["metrics"]
    acc, acc_norm = independent_accuracy(merged, docs)
    assert (metrics["acc,none"], metrics["acc_norm,none"]) == pytest.approx((acc, acc_norm), abs=1e-9)
