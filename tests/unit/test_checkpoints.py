"""Which checkpoints a resume may use (poft.checkpoints): complete ones only; `last` / `true` = the latest."""

import json

import pytest

from poft.checkpoints import CheckpointError, checkpoint_problem, latest_complete_checkpoint, resolve_resume


def checkpoint(root, step: int, *, state: str | None = "ok", weights: bool = True):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if weights:
        (folder / "model.safetensors").write_bytes(b"x")
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
