"""The LoRA path of the pipeline on real checkpoints, through the CLI, as a user with a 7B model would run it:
PoFT with LoRA on the real base model gemma-3-270m (`--chat_template_path gemma`, on a few real rows scored by
SmolLM2), then `poft dpo` from the adapter folder (the adapter trains on), `poft eval` of the DPO'd adapter, and
`poft merge` of it into a full model. The merged model must score what the adapter scores (float32, 1e-4), and
DPO's reference must be base + adapter: its first step has policy == reference (loss log 2, margins 0)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from conftest import NOISY, read_jsonl, run_poft

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart"
N_ROWS = 4
LORA = ["--use_peft", "--lora_r", "8", "--lora_alpha", "16", "--lora_target_modules", "q_proj", "v_proj"]
QUIET = ["--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--seed", "0"]


def local_task(folder: Path) -> Path:
    """The quickstart's lm-eval task with its data file given by absolute path (poft eval runs anywhere)."""
    folder.mkdir()
    yaml = (QUICKSTART / "tasks" / "quickstart_qa.yaml").read_text()
    data = QUICKSTART / "tasks" / "quickstart_qa.jsonl"
    (folder / "quickstart_qa.yaml").write_text(
        yaml.replace("examples/quickstart/tasks/quickstart_qa.jsonl", str(data))
    )
    return folder


def test_lora_poft_then_dpo_eval_and_merge_of_the_adapter(real_models, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in read_jsonl(NOISY)[:N_ROWS]))
    run_poft(["score", "--dataset", str(rows), "--model", f"smol={real_models['smol']}", "--output",
              str(tmp_path / "scored"), "--max_length", "128", "--dtype", "float32", "--no-progress"])  # fmt: skip
    poft = tmp_path / "poft"
    run_poft(["train", "--model_name_or_path", str(real_models["gemma"]), "--chat_template_path", "gemma",
              "--dataset_name", str(tmp_path / "scored"), "--output_dir", str(poft), "--max_steps", "2",
              "--per_device_train_batch_size", "2", "--max_length", "128", "--learning_rate", "1e-3", *LORA,
              *QUIET])  # fmt: skip
    assert (poft / "adapter_config.json").exists() and not (poft / "config.json").exists()

    pairs = tmp_path / "pairs.jsonl"  # the quickstart's first 2 pairs: 2 steps of 1
    pairs.write_text("".join((QUICKSTART / "pairs.jsonl").read_text().splitlines(keepends=True)[:2]))
    dpo = tmp_path / "dpo"
    result = run_poft(["dpo", "--model_name_or_path", str(poft), "--use_peft", "--dataset_name", str(pairs),
                       "--output_dir", str(dpo), "--max_steps", "2", "--per_device_train_batch_size", "1",
                       "--max_length", "96", "--learning_rate", "1e-4", "--gradient_checkpointing", "false",
                       *QUIET])  # fmt: skip
    assert "the reference is a frozen copy of it" in result.stdout
    history = json.loads((dpo / "trainer_state.json").read_text())["log_history"]
    assert abs(history[0]["loss"] - math.log(2)) < 1e-4, history[0]  # policy == reference at the start
    assert abs(history[0]["rewards/margins"]) < 1e-4, history[0]
    config = json.loads((dpo / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == real_models["gemma"] and not (dpo / "ref").exists()

    run_poft(["eval", "--model", str(dpo), "--tasks", "quickstart_qa:0", "--include_path",
              str(local_task(tmp_path / "tasks")), "--output", str(tmp_path / "eval"), "--dtype", "float32"])  # fmt: skip
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert 0 <= report["tasks"]["quickstart_qa"]["metrics"]["acc,none"] <= 1 and report["base_model"], report

    merged = tmp_path / "merged"
    run_poft(["merge", str(dpo), "--output", str(merged), "--dtype", "float32"])
    from transformers import AutoTokenizer

    assert (
        AutoTokenizer.from_pretrained(merged).chat_template
        == AutoTokenizer.from_pretrained(dpo).chat_template
    )
    assert "<start_of_turn>" in AutoTokenizer.from_pretrained(merged).chat_template  # the gemma template
    both = tmp_path / "both"
    run_poft(["score", "--dataset", str(rows), "--model", f"adapter={dpo}", "--model", f"merged={merged}",
              "--output", str(both), "--max_length", "128", "--dtype", "float32", "--no-progress"])  # fmt: skip
    from datasets import load_from_disk

    scored = load_from_disk(str(both))
    assert scored["adapter_n_tokens"] == scored["merged_n_tokens"]
    gaps = [abs(a - m) / n for a, m, n in zip(scored["adapter_logp_sum"], scored["merged_logp_sum"],
                                               scored["adapter_n_tokens"], strict=True)]  # fmt: skip
    assert max(gaps) < 1e-4, gaps  # per-token scores, as ref_score uses them
