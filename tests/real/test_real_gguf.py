"""`poft score --model smol=FILE.gguf` straight from the registry's GGUF file (issue 11, item 1): the same
scores as the float32 HF folder converted from that file, and the file's sha256 in the manifest."""

import hashlib
import json

import pytest
from conftest import cache_dir, run_poft
from datasets import load_from_disk

N_ROWS = 8


def test_score_straight_from_a_gguf_file_equals_its_converted_folder(
    real_models, scored, noisy_rows, tmp_path
):
    gguf = cache_dir() / "gguf" / "smollm2-135m-instruct.gguf"
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in noisy_rows[:N_ROWS]), encoding="utf-8")
    output = tmp_path / "from-gguf"
    run_poft(["score", "--dataset", str(data), "--model", f"smol={gguf}", "--output", str(output),
              "--dtype", "float32", "--no-progress"])  # fmt: skip
    from_file = load_from_disk(str(output))
    from_folder = load_from_disk(str(scored)).select(range(N_ROWS))
    assert from_file["smol_n_tokens"] == from_folder["smol_n_tokens"]
    assert from_file["smol_logp_sum"] == pytest.approx(from_folder["smol_logp_sum"], rel=1e-5, abs=1e-4)
    manifest = json.loads((output / "manifest.json").read_text())
    (entry,) = manifest["models"]
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert entry["file_sha256"] == digest and entry["revision"] == f"gguf-sha256-{digest[:16]}"
