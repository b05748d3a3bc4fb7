"""Errors that name the right thing: a full disk while saving names the output (not the input model), a
checkpoint cut short names its file, a model folder given as a dataset is called one, a GGUF file cut short
or misnamed says so. In-process through `poft.cli.main` on a tiny model, offline."""

import errno
import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors import SafetensorError
from test_cli_errors import one_line_error  # this folder is on sys.path

from poft.cli import main
from poft.exits import error_line
from poft.io_errors import writing
from poft.model_files import check_not_model_folder, gguf_problem, model_folder_files

CPU = ["--report_to", "none", "--bf16", "false", "--objective", "sft"]
FULL_DISK = "Error while serializing: I/O error: No space left on device (os error 28)"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """`poft tiny-example`: a tiny model and its training rows."""
    root = tmp_path_factory.mktemp("error_naming")
    assert main(["tiny-example", "--output", str(root), "--rows", "16"]) == 0
    return {"root": root, "model": str(root / "model"), "data": str(root / "train.jsonl")}


def train(tiny, output: Path, *argv: str) -> list[str]:
    return ["train", "--model_name_or_path", tiny["model"], "--dataset_name", tiny["data"],
            "--output_dir", str(output), *CPU, *argv]  # fmt: skip


# ------------------------------------------------------------------------- a full disk while saving


def full_disk_under(monkeypatch, folder: Path) -> None:
    """safetensors' save_file fails as on a full disk (its real error) for every file under `folder`."""
    import transformers.modeling_utils as modeling_utils

    save = modeling_utils.safe_save_file

    def failing(tensors, filename, *args, **kwargs):
        if Path(filename).resolve().is_relative_to(folder.resolve()):
            raise SafetensorError(FULL_DISK)
        return save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(modeling_utils, "safe_save_file", failing)


def test_a_full_disk_while_writing_a_checkpoint_names_the_checkpoint_not_the_input_model(
    tiny, tmp_path, monkeypatch, capsys
):
    output = tmp_path / "run"
    full_disk_under(monkeypatch, output)
    line = one_line_error(capsys, train(tiny, output, "--max_steps", "2", "--save_steps", "1"))
    assert f"writing {output}/checkpoint-1 failed: the disk is full" in line
    assert "cannot be read" not in line and tiny["model"] not in line


def test_a_full_disk_while_writing_the_trained_model_names_the_output(tiny, tmp_path, monkeypatch, capsys):
    output = tmp_path / "run"
    full_disk_under(monkeypatch, output)
    line = one_line_error(capsys, train(tiny, output, "--max_steps", "1", "--save_strategy", "no"))
    assert f"writing the trained model to {output} failed: the disk is full" in line
    assert "cannot be read" not in line and tiny["model"] not in line


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 40 KiB tmpfs (full after inspect's two figures); skipped where mounting is not allowed."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_inspect_onto_a_full_disk_names_the_file_it_could_not_write(tiny, tiny_disk, capsys):
    """Was "No space left on device" naming no file (a full disk's write() error carries none)."""
    line = one_line_error(capsys, ["inspect", tiny["data"], "--output", str(tiny_disk / "audit")])
    assert f"cannot write {tiny_disk / 'audit'}/" in line and "No space left on device" in line


def test_a_permission_error_says_read_or_write(tmp_path, monkeypatch):
    """Was "<file>: Permission denied (choose a folder you can write to)" for an input file it cannot read."""
    data = tmp_path / "rows.jsonl"
    data.write_text("{}\n")
    denied = PermissionError(errno.EACCES, "Permission denied", str(data))
    assert error_line(denied).startswith(f"cannot write {data}: Permission denied (choose a folder")
    monkeypatch.setattr("poft.exits.os.access", lambda path, mode: False)  # as for a user without read access
    assert error_line(denied) == f"cannot read {data}: Permission denied (give a file you can read)"
    gone = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "new" / "out"))
    assert error_line(gone).startswith("cannot write ")  # a file not there yet: it was being created


def test_error_line_tells_writes_from_reads():
    line = error_line(SafetensorError(FULL_DISK), model="in/model")
    assert line.startswith("writing model weights failed") and "in/model" not in line
    read = error_line(SafetensorError("Error while deserializing header: incomplete metadata"), "in/model")
    assert read.startswith("the weights of in/model cannot be read")
    no_name = error_line(OSError(errno.ENOSPC, "No space left on device"))
    assert no_name.startswith("a write failed: No space left on device") and "free some space" in no_name
    named = error_line(OSError(errno.ENOSPC, "No space left on device", "out/x.arrow"))
    assert named.startswith("cannot write out/x.arrow: No space left on device")
    unknown = error_line(OSError(errno.EIO, "Input/output error"))
    assert "did not name" in unknown
    with pytest.raises(OSError) as named_later:
        with writing("out/summary.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert error_line(named_later.value).startswith("cannot write out/summary.json: No space left on device")
    torch_write = error_line(
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    )
    assert torch_write.startswith("a write failed") and "internal error" not in torch_write


# ------------------------------------------------------------------------ a checkpoint file cut short


def test_resuming_from_a_checkpoint_whose_optimizer_is_cut_names_the_file_and_how_to_go_on(
    tiny, tmp_path, capsys
):
    """Was "internal error: PytorchStreamReader failed reading zip archive", naming no file."""
    output = tmp_path / "run"
    assert main(train(tiny, output, "--max_steps", "2", "--save_steps", "1")) == 0
    optimizer = output / "checkpoint-2" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])
    capsys.readouterr()
    line = one_line_error(capsys, train(tiny, output, "--max_steps", "3", "--resume_from_checkpoint", "last"))
    assert f"{optimizer} cannot be read: it looks cut short or damaged" in line
    assert f"--resume_from_checkpoint {output / 'checkpoint-1'}, or delete {output / 'checkpoint-2'}" in line


# ------------------------------------------------------------------------------- a model folder as data


def test_inspect_on_a_model_folder_says_it_is_a_model_folder(tiny, capsys):
    """Was "internal error: DatasetGenerationError"."""
    line = one_line_error(capsys, ["inspect", tiny["model"]])
    assert f"{tiny['model']} is a model folder (config.json, model.safetensors" in line
    assert "not a dataset" in line and "poft score" in line and "internal error" not in line


def test_filter_and_train_on_a_model_folder_say_it_is_a_model_folder(tiny, tmp_path, capsys):
    """Was "internal error: DatasetGenerationError" for both."""
    for argv in (
        ["filter", tiny["model"], "--keep-top", "0.5", "--output", str(tmp_path / "kept")],
        [
            "train",
            "--model_name_or_path",
            tiny["model"],
            "--dataset_name",
            tiny["model"],
            "--output_dir",
            str(tmp_path / "run"),
            *CPU,
            "--max_steps",
            "1",
        ],  # fmt: skip
    ):
        line = one_line_error(capsys, argv)
        assert f"{tiny['model']} is a model folder" in line and "internal error" not in line


def test_a_dataset_folder_is_never_taken_for_a_model_folder(tiny, tmp_path):
    from datasets import Dataset

    folder = tmp_path / "rows"
    Dataset.from_list([{"a": 1}]).save_to_disk(str(folder))
    shutil.copy(Path(tiny["model"]) / "config.json", folder / "config.json")  # a column config, say
    assert model_folder_files(folder) == [] and model_folder_files(tiny["data"]) == []
    check_not_model_folder(folder)


# ------------------------------------------------------------------------------------------ GGUF files


def write_tiny_gguf(path: Path) -> Path:
    """A small GGUF file (llama architecture, a 128-token vocabulary, two float32 tensors), as llama.cpp's
    `gguf` package writes one."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(64)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(128)])
    writer.add_token_types([1] * 128)
    writer.add_token_merges([])
    writer.add_tensor(
        "token_embd.weight", np.random.default_rng(0).standard_normal((128, 64)).astype(np.float32)
    )
    writer.add_tensor("output_norm.weight", np.ones(64, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def score(tiny, model: Path, output: Path) -> list[str]:
    return [
        "score",
        "--dataset",
        tiny["data"],
        "--model",
        str(model),
        "--output",
        str(output),
        "--no-progress",
    ]


def test_a_gguf_file_cut_short_is_said_to_be(tiny, tmp_path, capsys):
    """Was "could not load its tokenizer: cannot reshape array of size 3216 into shape (128,64)"."""
    whole = write_tiny_gguf(tmp_path / "tiny.gguf")
    assert gguf_problem(whole) is None
    for keep, said in ((20_000, "its header and tensor table need"), (600, "it ends inside its own header")):
        cut = tmp_path / f"cut-{keep}.gguf"
        cut.write_bytes(whole.read_bytes()[:keep])
        line = one_line_error(capsys, score(tiny, cut, tmp_path / f"out-{keep}"))
        assert f"{cut} looks cut short ({keep} bytes" in line and said in line and "download it again" in line
        assert "reshape" not in line


def test_a_gguf_file_not_named_gguf_is_named_as_one(tiny, tmp_path, capsys):
    """Was "the config file ... is not a valid JSON file" (or "a file, neither a model nor an adapter")."""
    misnamed = write_tiny_gguf(tmp_path / "model.q8.bin")
    line = one_line_error(capsys, score(tiny, misnamed, tmp_path / "out"))
    assert f"{misnamed} is a GGUF file, but only files named *.gguf are read as GGUF" in line
    assert "model.q8.gguf" in line


def test_train_from_a_gguf_file_says_only_score_reads_gguf(tiny, tmp_path, capsys):
    """Was "could not load the target's tokenizer: It looks like the config file at '...' is not a valid JSON
    file"."""
    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    argv = ["train", "--model_name_or_path", str(model), "--dataset_name", tiny["data"],
            "--output_dir", str(tmp_path / "run"), *CPU, "--max_steps", "1"]  # fmt: skip
    line = one_line_error(capsys, argv)
    assert f"{model} is a GGUF file: only `poft score` reads GGUF files" in line and "JSON" not in line
