"""What poft loads runs no code of the files' own: a model folder that ships Python code (config.json `auto_map`)
is refused unless `--trust_remote_code` is given; checkpoints and weights are read without unpickling objects
(weights_only / safetensors); a chat template inside a GGUF file renders in transformers' sandbox. Every payload here is live (run unsafely it writes a marker file, checked), and
a user answering "y" to transformers' "run the custom code?" prompt is simulated, as a `yes |` pipe would.

Seen on the earlier main: poft score (which has no --trust_remote_code) loaded such a folder's tokenizer and
weights with trust_remote_code unset, so transformers asked on stdin and a "y" ran the folder's code; poft
train's tokenizer load did the same.
"""

import builtins
import json
import shutil

import pytest
import torch
from datasets import Dataset
from jinja2.sandbox import SecurityError

from poft import PoFTConfig, PoFTTrainer
from poft.aligned import AlignedModelError, load_aligned_models, load_weights
from poft.chat import ChatTemplateError
from poft.cli import parse_command
from poft.commands import model_init_kwargs
from poft.example import make_rows

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tiny_model):
    rows = make_rows(8, seed=4)
    corpus = [m["content"] for r in rows for m in r["messages"]]
    return {"model": tiny_model("chatml", corpus, vocab_size=300, hidden_size=32, seed=1), "rows": rows}


class Payload:
    """Unpickled, it writes `marker` (pickle calls exec): what a poisoned .pt / .bin file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def poison(path, marker) -> None:
    """Replace a torch file by a live pickle payload (checked live: weights_only=False would run it)."""
    torch.save({"state": Payload(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()


def say_yes(monkeypatch) -> list[str]:
    """Answer "y" to any prompt (transformers asks before running a model's code when trust_remote_code is
    unset); return the prompts asked."""
    asked = []
    monkeypatch.setattr(builtins, "input", lambda prompt="": asked.append(prompt) or "y")
    return asked


def custom_code_folder(model, tmp_path, *, tokenizer_class: bool = True):
    """A copy of the tiny model whose config.json maps its classes to `custom_code.py` (a model_type unknown to
    transformers); importing that file writes `ran`."""
    folder = tmp_path / "custom"
    shutil.copytree(model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "poft_custom_code"
    config["auto_map"] = {"AutoConfig": "custom_code.Config", "AutoModelForCausalLM": "custom_code.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (folder / "custom_code.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class Config(LlamaConfig):\n    model_type = 'poft_custom_code'\n"
        "class Model(LlamaForCausalLM):\n    config_class = Config\n"
    )
    if not tokenizer_class:  # AutoTokenizer then reads config.json to choose the tokenizer class
        settings = json.loads((folder / "tokenizer_config.json").read_text())
        settings.pop("tokenizer_class", None)
        (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return folder, marker


# ---- remote code ---------------------------------------------------------------------------------------------


def test_trust_remote_code_is_off_unless_asked(tmp_path):
    train = parse_command(["train", "--output_dir", str(tmp_path), "--report_to", "none", "--bf16", "false"])
    _, config, model_args, _ = train.options
    assert config.trust_remote_code is False
    assert model_init_kwargs(config, model_args)["trust_remote_code"] is False
    dpo = parse_command(["dpo", "--output_dir", str(tmp_path), "--report_to", "none", "--bf16", "false"])
    assert dpo.options[1].trust_remote_code is False
    asked = parse_command(["train", "--output_dir", str(tmp_path), "--bf16", "false", "--trust_remote_code"])
    assert asked.options[1].trust_remote_code is True


def test_score_refuses_a_model_that_ships_its_own_code(tiny, tmp_path, monkeypatch):
    folder, marker = custom_code_folder(tiny["model"], tmp_path)
    asked = say_yes(monkeypatch)
    with pytest.raises(AlignedModelError) as refused:
        load_aligned_models([f"a={folder}"])
    assert str(refused.value).startswith(f"aligned model a ({folder}): its config.json needs Python code")
    assert "poft score never runs code that comes with a model" in str(refused.value)
    assert not asked and not marker.exists()


def test_score_loads_tokenizers_and_weights_without_remote_code(tiny, tmp_path, monkeypatch):
    """Past the config check (a folder whose auto_map names a known model_type), nothing asks or runs code."""
    folder, marker = custom_code_folder(tiny["model"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    asked = say_yes(monkeypatch)
    [model] = load_aligned_models([f"a={folder}"])
    load_weights(model, torch.float32, torch.device("cpu"))
    assert not asked and not marker.exists()


def test_train_refuses_a_model_that_ships_its_own_code_without_the_flag(tiny, tmp_path, monkeypatch):
    folder, marker = custom_code_folder(tiny["model"], tmp_path, tokenizer_class=False)
    asked = say_yes(monkeypatch)
    args = PoFTConfig(output_dir=str(tmp_path / "out"), bf16=False, report_to=[], max_steps=1)
    rows = Dataset.from_list([{**r, "ref_score": -1.0} for r in tiny["rows"]])
    with pytest.raises(ValueError, match="(?s)contains custom code.*trust_remote_code=True"):
        PoFTTrainer(model=str(folder), args=args, train_dataset=rows)
    assert not asked and not marker.exists()


# ---- a chat template inside a GGUF file ----------------------------------------------------------------------


def gguf_with_template(path, chat_template: str) -> None:
    """A GGUF file holding a byte-level tokenizer (256 bytes, one merge, ChatML's two markers) and `chat_template`:
    enough for transformers to build its tokenizer (no model is loaded)."""
    import gguf
    import numpy as np
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = [*bytes_to_unicode().values(), "ab", "<|im_start|>", "<|im_end|>"]
    writer = gguf.GGUFWriter(str(path), "llama")
    for add, value in [("context_length", 64), ("embedding_length", 8), ("block_count", 1)]:
        getattr(writer, f"add_{add}")(value)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * 257 + [gguf.TokenType.CONTROL] * 2)
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(257)
    writer.add_eos_token_id(258)
    writer.add_chat_template(chat_template)
    writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_chat_template_inside_a_gguf_file_is_rendered_in_the_sandbox(tmp_path):
    marker = tmp_path / "ran"
    escape = "{{ cycler.__init__.__globals__.__builtins__.open('" + str(marker) + "', 'w').close() }}"
    chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    gguf_with_template(tmp_path / "tiny.gguf", escape + chatml)
    with pytest.raises(
        ChatTemplateError, match="a: the chat template failed to render: access to attribute"
    ) as e:
        load_aligned_models([f"a={tmp_path / 'tiny.gguf'}"])
    assert isinstance(e.value.__cause__, SecurityError)
    assert not marker.exists()
    gguf_with_template(tmp_path / "plain.gguf", chatml)  # the same file without the escape loads
    [model] = load_aligned_models([f"a={tmp_path / 'plain.gguf'}"])
    assert model.chat.end_of_turn == "<|im_end|>"


# ---- pickles -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("checkpointed")
    args = PoFTConfig(
        output_dir=str(out), max_steps=1, save_strategy="steps", save_steps=1, per_device_train_batch_size=4
    )
    args.bf16, args.report_to = False, []
    rows = Dataset.from_list([{**r, "ref_score": -1.0} for r in tiny["rows"]])
    PoFTTrainer(model=tiny["model"], args=args, train_dataset=rows).train()
    assert (out / "checkpoint-1" / "optimizer.pt").exists()
    return {"folder": out, "rows": rows}


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_resuming_from_a_poisoned_checkpoint_file_runs_no_code(tiny, checkpoint, tmp_path, name):
    out = tmp_path / "run"
    shutil.copytree(checkpoint["folder"], out)
    marker = tmp_path / "ran"
    poison(out / "checkpoint-1" / name, marker)
    args = PoFTConfig(output_dir=str(out), max_steps=2, save_strategy="no", bf16=False, report_to=[])
    trainer = PoFTTrainer(model=tiny["model"], args=args, train_dataset=checkpoint["rows"])
    with pytest.raises(Exception) as refused:
        trainer.train(resume_from_checkpoint="last")
    chain, error = [], refused.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any("Weights only load failed" in text or name in text for text in chain), chain
    assert not marker.exists()


def test_weights_saved_as_a_pickle_are_not_unpickled(tiny, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(tiny["model"], folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    poison(folder / "pytorch_model.bin", marker)
    [model] = load_aligned_models([f"a={folder}"])
    with pytest.raises(
        AlignedModelError, match=f"aligned model a \\({folder}\\): could not load its weights"
    ):
        load_weights(model, torch.float32, torch.device("cpu"))
    assert not marker.exists()
