"""`poft eval`: the paper's benchmark numbers, via lm-evaluation-harness (the optional extra `poft[eval]`).

The paper reports the Open LLM Leaderboard v1 six tasks, each with its own few-shot count and headline
metric (PAPER.md). lm-eval takes one few-shot count per call, so tasks are grouped by count and the
model is loaded once and shared by all calls. Custom suites: any task names lm-eval knows, plus task
YAML files in a local folder (`include_path`), e.g. a `dataset_path: json` task on a local file, which
is how this runs offline.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from .console import say

# task -> (few-shot count, headline metric) of the Open LLM Leaderboard v1, as used by the paper
LEADERBOARD_V1: dict[str, tuple[int, str]] = {
    "arc_challenge": (25, "acc_norm,none"),
    "hellaswag": (10, "acc_norm,none"),
    "mmlu": (5, "acc,none"),
    "truthfulqa_mc2": (0, "acc,none"),
    "winogrande": (5, "acc,none"),
    "gsm8k": (5, "exact_match,strict-match"),
}


def parse_tasks(specs: list[str] | None, num_fewshot: int | None = None) -> dict[str, int | None]:
    """`["arc_challenge:25", "my_task"]` or comma-separated -> {task: few-shot count or None (task default)}.

    No specs gives the leaderboard six with their counts. `num_fewshot` applies to tasks given without one.
    """
    if not specs:
        return {task: shots for task, (shots, _) in LEADERBOARD_V1.items()}
    tasks: dict[str, int | None] = {}
    for spec in ",".join(specs).split(","):
        name, _, shots = spec.strip().partition(":")
        if not name:
            continue
        if shots and not shots.isdigit():
            raise ValueError(f"--tasks {spec!r}: the few-shot count after ':' must be a whole number")
        tasks[name] = int(shots) if shots else num_fewshot
    return tasks


def evaluate_model(
    model: str,
    tasks: dict[str, int | None],
    output: str | Path,
    *,
    include_path: str | None = None,
    batch_size: int | str = 8,
    device: str | None = None,
    dtype: str = "auto",
    limit: int | float | None = None,
    apply_chat_template: bool = False,
    seed: int = 1234,
) -> dict:
    """Run lm-eval on `model` (a folder, a LoRA adapter folder or a Hub id) for each task; write
    `output/results.json`; return it."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ImportError("poft eval needs lm-evaluation-harness: pip install 'poft[eval]'") from e
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" or in {include_path}" if include_path else " (give --include-path for local task files)"
        raise ValueError(f"unknown lm-eval tasks {unknown}: not built into lm-eval{where}")
    lm, provenance = _language_model(HFLM, model, device, dtype, batch_size)  # loaded once, shared
    settings = {"task_manager": manager, "limit": limit, "apply_chat_template": apply_chat_template}
    merged = _evaluate_by_shots(lm_eval, lm, model, tasks, settings, seed)
    report = {"model": model, **provenance, "tasks": summarise(merged, tasks), "lm_eval": merged}
    report["limit"] = limit
    average = leaderboard_average(report["tasks"])
    if average is not None:
        report["leaderboard_v1_average"] = average
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def _language_model(HFLM, model: str, device: str, dtype: str, batch_size: int | str) -> tuple[object, dict]:
    """lm-eval's HFLM on `model`, and what the report records of where it came from. A LoRA adapter folder is
    merged into its base model in memory, with the adapter's tokenizer and chat template: it computes what the
    adapter model computes, and what `poft merge` would write (lm-eval's own `peft=` resizes the embeddings
    to the tokenizer's length where they differ, which changes the log-likelihoods)."""
    import logging

    from .adapters import adapter_sha256, base_model, is_adapter, load_merged, load_tokenizer

    if not is_adapter(model):
        return HFLM(pretrained=model, device=device, dtype=dtype, batch_size=batch_size), {}
    base = base_model(model)
    say(f"{model} is a LoRA adapter: evaluated merged into its base model {base}")
    network = load_merged(model, dtype=dtype).to(device).eval()
    quiet = logging.getLogger("lm_eval.models.huggingface")  # "`pretrained` model kwarg is not of type `str`"
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        lm = HFLM(pretrained=network, tokenizer=load_tokenizer(model), batch_size=batch_size)
    finally:
        quiet.setLevel(level)
    return lm, {"base_model": base, "adapter_sha256": adapter_sha256(model)}


def _evaluate_by_shots(
    lm_eval, lm, model: str, tasks: dict[str, int | None], settings: dict, seed: int
) -> dict:
    """One `lm_eval.simple_evaluate` call per few-shot count (lm-eval takes one per call), results merged."""
    by_shots: dict[int | None, list[str]] = defaultdict(list)
    for task, shots in tasks.items():
        by_shots[shots].append(task)
    seeds = dict.fromkeys(
        ("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed"), seed
    )
    merged: dict[str, dict] = {"results": {}, "n-shot": {}, "versions": {}, "n-samples": {}}
    for shots, names in by_shots.items():
        say(f"evaluating {model} on {names} with {'task-default' if shots is None else shots} shots")
        out = lm_eval.simple_evaluate(
            model=lm, tasks=names, num_fewshot=shots, log_samples=False, **settings, **seeds
        )
        for key in merged:
            merged[key].update(out.get(key, {}))
    return merged


def leaderboard_average(summary: dict[str, dict]) -> float | None:
    """The Open LLM Leaderboard v1 average (in %) of the six headline metrics, None unless all six ran."""
    if not set(LEADERBOARD_V1) <= set(summary):
        return None
    headline = [summary[t]["metrics"].get(LEADERBOARD_V1[t][1]) for t in LEADERBOARD_V1]
    if any(v is None for v in headline):
        return None
    return 100 * sum(headline) / len(headline)


def summarise(results: dict, tasks: dict[str, int | None]) -> dict[str, dict]:
    """Per requested task: few-shot count used and its metrics (stderr kept apart), from lm-eval's output."""
    summary = {}
    for task in tasks:
        metrics = results["results"].get(task, {})
        values = {k: v for k, v in metrics.items() if "," in k and "_stderr" not in k}
        stderr = {k.replace("_stderr", ""): v for k, v in metrics.items() if "_stderr" in k}
        summary[task] = {
            "num_fewshot": results["n-shot"].get(task, tasks[task]),
            "metrics": {k: v for k, v in values.items() if isinstance(v, (int, float))},
            "stderr": {k: v for k, v in stderr.items() if isinstance(v, (int, float))},
        }
    return summary


def results_table(report: dict) -> str:
    """A plain-text table: task, shots, metric, value, stderr; the leaderboard average when all six ran."""
    lines = [f"{'task':<28} {'shots':>5}  {'metric':<28} {'value':>8} {'stderr':>8}"]
    for task, entry in report["tasks"].items():
        headline = LEADERBOARD_V1.get(task, (None, None))[1]
        for metric, value in sorted(entry["metrics"].items(), key=lambda kv: kv[0] != headline):
            err = entry["stderr"].get(metric)
            err_text = f"{err:8.4f}" if isinstance(err, float) and math.isfinite(err) else f"{'':>8}"
            shots = "" if entry["num_fewshot"] is None else entry["num_fewshot"]
            lines.append(f"{task:<28} {shots!s:>5}  {metric:<28} {value:8.4f} {err_text}")
    if "leaderboard_v1_average" in report:
        lines.append(f"Open LLM Leaderboard v1 average: {report['leaderboard_v1_average']:.2f}")
    return "\n".join(lines)
