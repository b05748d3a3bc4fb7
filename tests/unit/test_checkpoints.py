"""Which checkpoints a resume may use (poft.checkpoints): complete ones only; `last` / `true` = the latest."""

import json

import pytest
import torch
from safetensors.torch import save_file

from poft.checkpoints import (
    CheckpointError,
    checkpoint_problem,
    damaged_file,
    latest_complete_checkpoint,
    resolve_resume,
)


def checkpoint(root, step: int, *, state: str | None = "ok", weights: bool = True):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if weights:
        save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    if state == "ok":
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    elif state == "cut":
        (folder / "trainer_state.json").write_text('{"global_step": ')
    return folder


def test_complete_and_incomplete_checkpoints_are_told_apart(tmp_path):
    assert checkpoint_problem(checkpoint(tmp_path, 2)) is None
    assert "no trainer_state.json" in checkpoint_problem(checkpoint(tmp_path, 4, state=None))
    assert "cut short" in checkpoint_problem(checkpoint(tmp_path, 6, state="cut"))
    assert "no model weights" in checkpoint_problem(checkpoint(tmp_path, 8, weights=False))
    assert checkpoint_problem(tmp_path / "checkpoint-99") == "no such folder"


def test_last_skips_incomplete_checkpoints_newer_than_the_latest_complete_one(tmp_path, capsys):
    checkpoint(tmp_path, 2)
    checkpoint(tmp_path, 10)  # numeric order, not text order: 10 > 4
    checkpoint(tmp_path, 4)
    checkpoint(tmp_path, 12, state=None)
    path, skipped = latest_complete_checkpoint(tmp_path)
    assert path == tmp_path / "checkpoint-10" and [p.name for p, _ in skipped] == ["checkpoint-12"]
    for value in ("last", "true", "True", True):
        assert resolve_resume(value, tmp_path) == str(tmp_path / "checkpoint-10")
    out = capsys.readouterr().out
    assert "checkpoint-12 is incomplete (no trainer_state.json" in out and "resuming from" in out


def test_nothing_to_resume_and_an_incomplete_path_are_clear_errors(tmp_path):
    assert resolve_resume(None, tmp_path) is None and resolve_resume("false", tmp_path) is None
    with pytest.raises(CheckpointError, match="no complete checkpoint in"):
        resolve_resume("last", tmp_path)
    partial = checkpoint(tmp_path, 3, state=None)
    with pytest.raises(
        CheckpointError, match=r"checkpoint-3: no trainer_state\.json.*resume_from_checkpoint last"
    ):
        resolve_resume(str(partial), tmp_path)
    with pytest.raises(CheckpointError, match=r"no complete checkpoint in .* \(1 incomplete\)"):
        resolve_resume("last", tmp_path)


def test_a_checkpoint_with_a_file_cut_short_is_refused_naming_the_file_and_the_previous_one(tmp_path):
    """Was torch's "PytorchStreamReader failed reading zip archive", naming no file."""
    older = checkpoint(tmp_path, 2)
    newest = checkpoint(tmp_path, 4)
    torch.save({"state": torch.zeros(64)}, newest / "optimizer.pt")
    assert damaged_file(newest) is None
    whole = (newest / "optimizer.pt").read_bytes()
    (newest / "optimizer.pt").write_bytes(whole[: len(whole) // 2])
    for value in ("last", str(newest)):
        with pytest.raises(CheckpointError) as refused:
            resolve_resume(value, tmp_path)
        message = str(refused.value)
        assert f"{newest / 'optimizer.pt'} cannot be read: it looks cut short or damaged" in message
        assert f"--resume_from_checkpoint {older}, or delete {newest}" in message
    assert resolve_resume(str(older), tmp_path) == str(older)


def test_a_safetensors_file_shorter_than_its_header_says_is_named(tmp_path):
    only = checkpoint(tmp_path, 2)
    weights = only / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-3])
    assert damaged_file(only)[0] == weights and "its header needs" in damaged_file(only)[1]
    with pytest.raises(CheckpointError, match=r"model\.safetensors cannot be read.*delete .*checkpoint-2"):
        resolve_resume("last", tmp_path)
