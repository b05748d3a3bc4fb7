"""`poft train` and `poft dpo` on real checkpoints, through the CLI.

- train: the real *base* model gemma-3-270m (no chat template of its own: the file of poft's packaged
  `gemma` template is supplied with --chat_template_path; 262k vocabulary) as the PoFT and the SFT target,
  full fine-tuning and LoRA, a few steps on the real rows `poft score` scored in test_real_score (the session's `scored` folder);
- dpo: the real instruct model SmolLM2-135M-Instruct, a few steps on preference pairs made of real rows
  (chosen = the row's real answer, rejected = its noisy copy's answer).
Each run must log finite losses, change the weights and leave an output folder that loads.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import CLEAN, GEMMA_TEMPLATE, NOISY, read_jsonl, run_poft
from safetensors import safe_open

STEPS = 2


def logged(out) -> list[dict]:
    """The per-step records `poft train` writes to OUTPUT/log.jsonl (loss, poft/* metrics)."""
    return [entry for entry in read_jsonl(out / "log.jsonl") if "loss" in entry]


def tensor(path, name: str) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(name)


@pytest.mark.parametrize("objective,lora", [("poft", False), ("poft", True), ("sft", False), ("sft", True)])
def test_train_real_base_model(objective, lora, scored, real_models, tmp_path):
    gemma = real_models["gemma"]
    out = tmp_path / "out"
    args = ["train", "--model_name_or_path", str(gemma), "--dataset_name", str(scored),
            "--chat_template_path", str(GEMMA_TEMPLATE), "--objective", objective, "--output_dir", str(out),
            "--max_steps", str(STEPS), "--per_device_train_batch_size", "1", "--max_length", "128",
            "--learning_rate", "1e-4", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
            "--dataloader_num_workers", "0", "--seed", "0"]  # fmt: skip
    if lora:
        args += [
            "--use_peft",
            "--lora_r",
            "8",
            "--lora_alpha",
            "16",
            "--lora_target_modules",
            "q_proj",
            "v_proj",
        ]
    run_poft(args)
    steps = logged(out)
    assert len(steps) == STEPS and all(math.isfinite(s["loss"]) for s in steps), steps
    if objective == "poft":  # the PoFT weight tau = beta * sigmoid(-margin) is in (0, beta]
        assert all(0 < s["poft/weight"] <= 1 and math.isfinite(s["poft/ref_score"]) for s in steps), steps
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).chat_template == GEMMA_TEMPLATE.read_text()
    if lora:
        from peft import AutoPeftModelForCausalLM

        name = next(
            k for k in safe_open(str(out / "adapter_model.safetensors"), "pt").keys() if "lora_B" in k
        )
        assert tensor(out / "adapter_model.safetensors", name).abs().max() > 0  # lora_B starts at zero
        model = AutoPeftModelForCausalLM.from_pretrained(out)
    else:
        from transformers import AutoModelForCausalLM

        name = "model.layers.0.self_attn.q_proj.weight"
        before, after = tensor(gemma / "model.safetensors", name), tensor(out / "model.safetensors", name)
        assert not torch.equal(before, after)
        model = AutoModelForCausalLM.from_pretrained(out)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_dpo_real_instruct_model(real_models, tmp_path):
    clean = {r["id"]: r for r in json.loads(CLEAN.read_text())}
    pairs = [{"prompt": r["instruction"] + (f"\n\n{r['input']}" if r["input"].strip() else ""),
              "chosen": clean[r["id"]]["output"], "rejected": r["output"]}
             for r in read_jsonl(NOISY) if r["noise"] != "clean"][:8]  # fmt: skip
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    smol = real_models["smol"]
    out = tmp_path / "dpo"
    result = run_poft(["dpo", "--model_name_or_path", str(smol), "--dataset_name", str(data),
                       "--output_dir", str(out), "--max_steps", str(STEPS), "--per_device_train_batch_size", "2",
                       "--max_length", "160", "--learning_rate", "1e-5", "--logging_steps", "1",
                       "--save_strategy", "no", "--report_to", "none", "--seed", "0"])  # fmt: skip
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) >= STEPS and all(math.isfinite(x) for x in losses), (losses, result.stdout[-2000:])
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(tensor(smol / "model.safetensors", name), tensor(out / "model.safetensors", name))
    from transformers import AutoModelForCausalLM

    assert all(torch.isfinite(p).all() for p in AutoModelForCausalLM.from_pretrained(out).parameters())
