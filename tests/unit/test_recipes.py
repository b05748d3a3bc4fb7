"""Every shipped recipe parses into its config classes, and the commands in its header exist and parse, in
the paper's order (score -> inspect -> filter -> train -> dpo -> eval)."""

import re
import shlex
import warnings
from pathlib import Path

import pytest
import yaml
from trl import ModelConfig, ScriptArguments, TrlParser

from poft.cli import parse_command
from poft.training_configs import PoFTConfig, PoFTDPOConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RECIPES = sorted(p for p in EXAMPLES.glob("*.yaml"))
ACCELERATE = sorted((EXAMPLES / "accelerate").glob("*.yaml"))
ORDER = ["score", "inspect", "filter", "train", "dpo", "eval"]


def config_classes(path: Path) -> tuple:
    return (ScriptArguments, PoFTDPOConfig if "_dpo_" in path.name else PoFTConfig, ModelConfig)


def header_commands(path: Path) -> list[list[str]]:
    """`poft ...` commands of the header comment, continuation lines joined, as argument lists."""
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    text = re.sub(r"\\\s*\n\s*", " ", "\n".join(header))
    commands = []
    for line in text.splitlines():
        if re.search(r"\bpoft (score|inspect|filter|train|dpo|eval)\b", line):
            words = shlex.split(line)
            commands.append(words[words.index("poft") + 1 :])
    return commands


def test_the_paper_recipes_are_shipped():
    names = {p.stem for p in RECIPES}
    for model in ("mistral7b", "llama3_8b"):
        for data in ("ultrachat", "openhermes"):
            assert f"{model}_{data}_poft" in names
    assert "mistral7b_poft_dpo_ultrafeedback" in names
    assert {p.stem for p in ACCELERATE} >= {"ddp", "fsdp", "deepspeed_zero3"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_parses_into_its_config_classes(path):
    # --use_cpu: the GPU recipes ask for bf16, which TrainingArguments refuses on a machine without a GPU
    args = ["--config", str(path), "--use_cpu", "true"]
    script, config, model = TrlParser(config_classes(path)).parse_args_and_config(args=args)
    raw = yaml.safe_load(path.read_text())
    assert (
        model.model_name_or_path == raw["model_name_or_path"] and script.dataset_name == raw["dataset_name"]
    )
    assert config.output_dir == raw["output_dir"]
    if isinstance(config, PoFTDPOConfig):
        assert config.precompute_ref_log_probs and config.beta == raw["beta"]
    else:
        assert (config.objective, config.beta, config.gamma) == (raw["objective"], raw["beta"], raw["gamma"])
        assert "loss_type" not in raw and config.loss_type == "nll"  # TRL's own field, at TRL's default


@pytest.mark.parametrize(
    ("override", "objective", "loss_type"),
    [
        ([], "poft", "nll"),
        (["--loss_type", "sft"], "sft", "nll"),
        (["--objective", "sft", "--loss_type", "dft"], "sft", "dft"),
    ],
)
def test_a_recipe_in_the_old_spelling_still_parses(tmp_path, override, objective, loss_type):
    """`loss_type: poft` (recipes copied before `objective` existed) and `--loss_type sft` still work, with a
    FutureWarning; TRL's `--loss_type dft` is TRL's DFT."""
    path = EXAMPLES / "tiny_poft.yaml"
    old = tmp_path / "old.yaml"
    old.write_text(path.read_text().replace("objective: poft", "loss_type: poft"))
    config = old if "--objective" not in override else path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, parsed, _ = TrlParser(config_classes(path)).parse_args_and_config(
            args=["--config", str(config), *override]
        )
    assert (parsed.objective, parsed.loss_type) == (objective, loss_type)
    deprecated = [
        w for w in caught if issubclass(w.category, FutureWarning) and "use objective=" in str(w.message)
    ]
    assert len(deprecated) == (config == old)


@pytest.mark.parametrize("path", [p for p in RECIPES if p.name != "tiny_poft.yaml"], ids=lambda p: p.name)
def test_recipe_header_commands_exist_parse_and_follow_the_pipeline(path):
    commands = header_commands(path)
    subcommands = [c[0] for c in commands]
    steps = [s for s in subcommands if s in ORDER]
    assert steps[:2] == ["score", "inspect"] and steps[-1] == "eval"
    assert [ORDER.index(s) for s in steps] == sorted(ORDER.index(s) for s in steps), steps
    assert f"--config examples/{path.name}" in " ".join(" ".join(c) for c in commands)
    for command in commands:
        if command[0] in ("train", "dpo"):
            classes = (ScriptArguments, PoFTDPOConfig if command[0] == "dpo" else PoFTConfig, ModelConfig)
            config = EXAMPLES.parent / command[command.index("--config") + 1]
            assert config.exists(), command
            TrlParser(classes).parse_args_and_config(
                args=[str(a) for a in ["--config", config, *command[3:], "--use_cpu", "true"]]
            )
        elif command[0] in ORDER:
            parse_command(command)  # exits on an unknown or missing option, like argparse
    for config in re.findall(r"--config_file (\S+)", path.read_text()):
        assert (EXAMPLES.parent / config).exists(), config


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_config_loads(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_processes == 8 and config.mixed_precision == "bf16"
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero3": "DEEPSPEED"}.get(path.stem)
    if expected:
        assert str(config.distributed_type).endswith(expected)
    if path.stem == "deepspeed_zero3":
        assert config.deepspeed_config["zero_stage"] == 3
