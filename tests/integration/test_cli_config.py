"""`poft score --config score.yaml --max_length N` end to end, in process, on a tiny aligned model."""

import json

import pytest
from datasets import load_from_disk

from poft.cli import main
from poft.tiny import build_model, build_tokenizer

WORDS = "the quick brown fox jumps over a lazy dog add reverse sort paris answer hello".split()

pytestmark = pytest.mark.usefixtures("one_thread")


def test_score_config_file_with_a_command_line_override(tmp_path):
    tokenizer = build_tokenizer("chatml", [" ".join(WORDS) * 3], vocab_size=300)
    build_model(tokenizer, hidden_size=32, num_layers=1).save_pretrained(tmp_path / "chatml")
    tokenizer.save_pretrained(tmp_path / "chatml")
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": " ".join(WORDS[i : i + 3])},
                                         {"role": "assistant", "content": " ".join(WORDS[: 2 + 2 * i])}]}
            for i in range(6)]  # fmt: skip
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores"
    (tmp_path / "score.yaml").write_text(
        f"dataset: {tmp_path / 'data.jsonl'}\nmodel: [{tmp_path / 'chatml'}]\noutput: {out}\n"
        "max_length: 4096\nprogress: false\nbatch_tokens: 256\n"
    )
    assert main(["score", "--config", str(tmp_path / "score.yaml"), "--max_length", "32"]) == 0
    scored = load_from_disk(str(out))
    assert scored["id"] == [r["id"] for r in rows]
    # 32 tokens, not the file's 4096: the conversations of 27 to 45 tokens were cut from the 33-token one on
    truncated = scored["chatml_truncated"]
    assert truncated == [False, False, True, True, True, True]
