"""`poft score` against a naive reference: one example at a time, full logits, plain log_softmax.

Three tiny aligned models with different tokenizers and templates (ChatML with generation markers,
Llama-3-style with BOS inside the template and no markers, Zephyr-style). The scorer's token counts must
equal the reference exactly and its log-prob sums to 1e-5 relative, through padding, multiple batches,
multiple shards, truncation and resume.
"""

import json
import random

import pytest
import torch
from fixtures.scoring import score  # tests/ is on sys.path
from transformers import AutoModelForCausalLM, AutoTokenizer

from poft.aligned import parse_model_spec
from poft.chat import ChatFormat, ChatTemplateError
from poft.logprobs import PACKING
from poft.readers import RowError
from poft.readers import fingerprint as row_fingerprint
from poft.shards import RunMismatchError, shard_files
from poft.tiny import build_model, build_tokenizer

FAMILIES = ("chatml", "llama3", "zephyr")
WORDS = "the quick brown fox jumps over a lazy dog add reverse sort paris answer hello 12 30 42 ! ?".split()


pytestmark = pytest.mark.usefixtures("one_thread")


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """Conversations of varied length: optional system turn, one or two exchanges, an `extra` column."""
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    rows = []
    for i in range(n):
        messages = [{"role": "system", "content": text(2, 6)}] if i % 3 == 0 else []
        for _ in range(1 + i % 2):
            messages += [
                {"role": "user", "content": text(1, 30)},
                {"role": "assistant", "content": text(1, 40)},
            ]
        rows.append({"messages": messages, "extra": i})
    return rows


@pytest.fixture(scope="module")
def aligned(tiny_model) -> dict[str, str]:
    """family -> folder of a saved tiny model + tokenizer (different vocabularies and templates)."""
    corpus = [" ".join(WORDS) * 3]
    return {
        family: tiny_model(family, corpus, vocab_size=300 + 40 * k, hidden_size=32, seed=k)
        for k, family in enumerate(FAMILIES)
    }


def naive_scores(path: str, rows: list[dict], max_length: int | None) -> tuple[list[float], list[int]]:
    """Reference: each example alone, full [T x vocab] logits, log_softmax, sum over response labels."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    chat = ChatFormat.from_tokenizer(tokenizer, path)
    sums, counts = [], []
    for row in rows:
        encoded = chat.encode(row["messages"], max_length)
        ids = torch.tensor([encoded.input_ids])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
        token_log_probs = log_probs.gather(-1, ids[0, 1:, None]).squeeze(-1)
        mask = torch.tensor(encoded.response_mask[1:], dtype=torch.bool)
        sums.append(float(token_log_probs[mask].sum()))
        counts.append(int(mask.sum()))
    return sums, counts


def assert_matches_reference(
    scored, aligned: dict[str, str], rows: list[dict], max_length: int | None
) -> None:
    for family, path in aligned.items():
        ref_sums, ref_counts = naive_scores(path, rows, max_length)
        assert scored[f"{family}_n_tokens"] == ref_counts
        for ours, ref in zip(scored[f"{family}_logp_sum"], ref_sums, strict=True):
            assert ours == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_batched_scores_equal_naive_reference_under_three_templates(aligned, tmp_path):
    rows = make_rows(36)
    max_length = 90  # some conversations are longer: truncation is exercised
    scored = score(
        rows_dataset(rows), list(aligned.values()), tmp_path / "out", max_length=max_length,
        batch_tokens=400, rows_per_shard=7, progress=False,
    )  # fmt: skip
    assert_matches_reference(scored, aligned, rows, max_length)
    assert scored["extra"] == list(range(36))  # original order and columns kept
    assert sum(scored["llama3_truncated"]) > 0
    assert len(shard_files(tmp_path / "out", "chatml")) > 1
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["truncated"]["llama3"] == sum(scored["llama3_truncated"])
    for family, path in aligned.items():  # BOS exactly once under every template
        tokenizer = AutoTokenizer.from_pretrained(path)
        ids = ChatFormat.from_tokenizer(tokenizer, family).encode(rows[0]["messages"]).input_ids
        assert ids.count(tokenizer.bos_token_id) == (0 if tokenizer.bos_token_id is None else 1)


def rows_dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows)


def test_output_columns_ids_and_ref_score(aligned, tmp_path):
    rows = [{"prompt_id": f"p{i}", **row} for i, row in enumerate(make_rows(8, seed=1))]
    models = [f"a={aligned['chatml']}", f"b={aligned['zephyr']}"]
    scored = score(rows_dataset(rows), models, tmp_path / "tok", progress=False)
    assert scored.column_names == [
        "prompt_id", "messages", "extra", "id", "fingerprint", "response_bytes",
        "a_logp_sum", "a_n_tokens", "a_truncated", "b_logp_sum", "b_n_tokens", "b_truncated", "ref_score",
        "score_provenance",
    ]  # fmt: skip
    assert scored["id"] == [f"p{i}" for i in range(8)]
    assert scored["fingerprint"] == [row_fingerprint(r["messages"]) for r in rows]
    for r in scored:
        expected = (r["a_logp_sum"] / r["a_n_tokens"] + r["b_logp_sum"] / r["b_n_tokens"]) / 2
        assert r["ref_score"] == pytest.approx(expected, rel=1e-6)
    by_byte = score(rows_dataset(rows), models, tmp_path / "byte", normalization="byte", progress=False)
    for r in by_byte:
        assert r["ref_score"] == pytest.approx((r["a_logp_sum"] + r["b_logp_sum"]) / 2 / r["response_bytes"])
    manifest = json.loads((tmp_path / "byte" / "manifest.json").read_text())
    assert [m["alias"] for m in manifest["models"]] == ["a", "b"]
    assert manifest["normalization"] == "byte" and manifest["models"][0]["template_hash"]
    assert manifest["throughput"]["tokens_per_s"] > 0


def test_content_hash_id_when_the_dataset_has_none(aligned, tmp_path):
    rows = make_rows(3)
    scored = score(rows_dataset(rows), [aligned["chatml"]], tmp_path / "o", progress=False)
    again = score(rows_dataset(rows), [aligned["chatml"]], tmp_path / "o2", progress=False)
    assert scored["id"] == again["id"] and len(set(scored["id"])) == 3


def test_resume_skips_finished_shards_and_loses_nothing(aligned, tmp_path):
    rows = make_rows(30, seed=2)
    out = tmp_path / "out"
    models = [aligned["chatml"], aligned["llama3"]]
    kwargs = {"batch_tokens": 300, "rows_per_shard": 5, "progress": False}
    full = score(rows_dataset(rows), models, out, **kwargs)
    shards = shard_files(out, "llama3")
    for path in shards[::2]:  # as if killed: some llama3 shards never written, no final dataset
        path.unlink()
    (out / "manifest.json").unlink()
    stale = out / "shards" / "llama3" / ".tmp-half-written.json"
    stale.write_text('{"rows": [0, 1')  # a writer killed mid-write leaves only a temporary file
    resumed = score(rows_dataset(rows), models, out, **kwargs)
    assert not stale.exists()
    assert resumed["llama3_n_tokens"] == full["llama3_n_tokens"]
    assert resumed["llama3_logp_sum"] == pytest.approx(full["llama3_logp_sum"], rel=1e-6)
    covered = [r for p in shard_files(out, "llama3") for r in json.loads(p.read_text())["rows"]]
    assert sorted(covered) == list(range(30))  # every row exactly once


def test_bf16_resume_equals_an_uninterrupted_run_bit_for_bit(tiny_model, tmp_path):
    """In bf16 a row's score moves slightly with the rows batched beside it. A resume re-forms the batches of
    the whole run and skips the finished ones, so it scores each row in the batch it had: identical scores
    (it re-batched the remaining rows before, which changed them). The batching is in the run identity."""
    model = tiny_model("llama3", [" ".join(WORDS) * 3], vocab_size=380, hidden_size=128, seed=1)
    rows = make_rows(30, seed=5)
    out = tmp_path / "out"
    kwargs = {"dtype": "bfloat16", "batch_tokens": 300, "rows_per_shard": 3, "progress": False}
    full = score(rows_dataset(rows), [model], out, **kwargs)
    for path in shard_files(out, "llama3")[1::2]:  # as if killed: every other shard never written
        path.unlink()
    (out / "manifest.json").unlink()
    resumed = score(rows_dataset(rows), [model], out, **kwargs)
    assert resumed["llama3_logp_sum"] == full["llama3_logp_sum"]
    manifest = json.loads((out / "manifest.json").read_text())
    batching = {"batch_tokens": 300, "processes": 1, "packing": PACKING}
    assert manifest["dtype"] == "bfloat16" and manifest["batching"] == batching
    with pytest.raises(RunMismatchError, match="batching"):
        score(rows_dataset(rows), [model], out, **{**kwargs, "batch_tokens": 200})


def test_bf16_run_of_another_packing_scheme_is_not_resumed(tiny_model, tmp_path, monkeypatch):
    """The packed-scoring scheme is part of a bf16 run's identity: a run begun by a build that batched or
    packed otherwise (here: one that recorded no scheme, as the padded scorer did, or another scheme's name)
    is refused, not completed with scores of a different batching."""
    import poft.scoring

    model = tiny_model("llama3", [" ".join(WORDS) * 3], vocab_size=380, hidden_size=128, seed=1)
    rows = rows_dataset(make_rows(6, seed=5))
    kwargs = {"dtype": "bfloat16", "batch_tokens": 300, "progress": False}
    out = tmp_path / "out"
    score(rows, [model], out, **kwargs)
    config = json.loads((out / "scoring_config.json").read_text())
    assert config["batching"]["packing"] == PACKING
    del config["batching"]["packing"]  # what the build before padding-free scoring recorded
    (out / "scoring_config.json").write_text(json.dumps(config))
    (out / "manifest.json").unlink()
    with pytest.raises(RunMismatchError, match=f"batching.*'packing': '{PACKING}'"):
        score(rows, [model], out, **kwargs)
    fresh = tmp_path / "fresh"
    score(rows, [model], fresh, **kwargs)
    (fresh / "manifest.json").unlink()  # as if killed before the end
    monkeypatch.setattr(poft.scoring, "PACKING", "another-scheme")  # a later build's scheme
    with pytest.raises(RunMismatchError, match="batching.*'packing': 'another-scheme'"):
        score(rows, [model], fresh, **kwargs)


def test_dtype_auto_follows_the_cpu(aligned, tmp_path, monkeypatch, capsys):
    """`--dtype auto`: bf16 on a CPU with bf16 instructions, float32 without; the choice is printed."""
    import poft.console

    rows = rows_dataset(make_rows(2))
    monkeypatch.setenv("POFT_CPU_BF16", "1")
    monkeypatch.setattr(poft.console, "_SAID", set())
    score(rows, [aligned["chatml"]], tmp_path / "bf16", progress=False)
    assert json.loads((tmp_path / "bf16" / "manifest.json").read_text())["dtype"] == "bfloat16"
    assert "--dtype auto: scoring in bfloat16 (this CPU has bf16 instructions" in capsys.readouterr().out
    monkeypatch.setenv("POFT_CPU_BF16", "0")
    score(rows, [aligned["chatml"]], tmp_path / "fp32", progress=False)
    manifest = json.loads((tmp_path / "fp32" / "manifest.json").read_text())
    assert manifest["dtype"] == "float32" and "batching" not in manifest
    assert "scoring in float32 (no bf16 hardware on cpu" in capsys.readouterr().out


def test_refuses_to_mix_runs(aligned, tmp_path):
    rows = make_rows(4)
    out = tmp_path / "out"
    score(rows_dataset(rows), [aligned["chatml"]], out, max_length=64, progress=False)
    with pytest.raises(RunMismatchError, match="max_length"):
        score(rows_dataset(rows), [aligned["chatml"]], out, max_length=32, progress=False)
    with pytest.raises(RunMismatchError, match="models"):
        score(rows_dataset(rows), [aligned["zephyr"]], out, max_length=64, progress=False)
    with pytest.raises(RunMismatchError, match="dataset_fingerprint"):
        score(rows_dataset(make_rows(4, seed=9)), [aligned["chatml"]], out, max_length=64, progress=False)


def test_adding_an_aligned_model_scores_only_the_new_one(aligned, tmp_path):
    """`poft score` again into a finished folder with one more --model: the earlier model's shards are reused,
    only the new model runs, ref_score is recomputed; a re-run that only changes the normalisation keeps the
    throughput figures of the run that scored (it used to write null)."""
    rows = make_rows(10, seed=4)
    out = tmp_path / "out"
    score(rows_dataset(rows), [aligned["chatml"]], out, progress=False)
    first = json.loads((out / "manifest.json").read_text())["throughput"]["tokens_this_run"]
    both = score(rows_dataset(rows), [aligned["chatml"], aligned["llama3"]], out, progress=False)
    both = {k: list(both[k]) for k in ("ref_score", "chatml_logp_sum")}  # before the folder is rewritten
    added = json.loads((out / "manifest.json").read_text())
    fresh = score(
        rows_dataset(rows), [aligned["chatml"], aligned["llama3"]], tmp_path / "fresh", progress=False
    )
    everything = json.loads((tmp_path / "fresh" / "manifest.json").read_text())["throughput"][
        "tokens_this_run"
    ]
    assert added["throughput"]["tokens_this_run"] == everything - first > 0  # chatml was not scored again
    assert [m["alias"] for m in added["models"]] == ["chatml", "llama3"]
    assert both["ref_score"] == pytest.approx(list(fresh["ref_score"]), rel=1e-6)
    assert both["chatml_logp_sum"] == pytest.approx(list(fresh["chatml_logp_sum"]), rel=1e-6)
    renormalised = score(
        rows_dataset(rows), [aligned["chatml"], aligned["llama3"]], out, normalization="byte", progress=False
    )
    throughput = json.loads((out / "manifest.json").read_text())["throughput"]
    assert throughput["tokens_per_s"] is not None and "nothing was scored" in throughput["note"]
    assert list(renormalised["ref_score"]) != both["ref_score"]
    with pytest.raises(RunMismatchError, match="models"):  # dropping an earlier model is not adding one
        score(rows_dataset(rows), [aligned["llama3"]], out, progress=False)


BAD_LINES = [
    (
        '{"id": "ok1", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}',
        None,
    ),
    ('{"id": "m1", "messages": [{"role": "user", "content": "hi"}', "malformed JSON"),
    ('{"id": "u1", "messages": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
    (
        '{"id": "e1", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}',
        "empty",
    ),
    (
        '{"id": "r1", "messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "a"}]}',
        "robot",
    ),
    (
        '{"id": "n1", "messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]}',
        "not a string",
    ),
    ('{"id": "x1", "text": "no messages here"}', "no `messages`"),
    (
        '{"id": "ok2", "messages": [{"role": "user", "content": "2"}, {"role": "assistant", "content": "b"}]}',
        None,
    ),
]


def test_bad_rows_stop_the_run_naming_file_line_id_and_problem(aligned, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(line for line, _ in BAD_LINES) + "\n")
    with pytest.raises(RowError) as err:
        score(str(data), [aligned["chatml"]], tmp_path / "out", progress=False)
    message = str(err.value)
    assert str(data) in message and "6 of 8 rows cannot be read" in message
    assert "line 2: malformed JSON" in message and "line 3 (id=u1): no assistant turn" in message


def test_bad_rows_can_be_skipped_and_recorded(aligned, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(line for line, _ in BAD_LINES) + "\n")
    scored = score(str(data), [aligned["chatml"]], tmp_path / "out", on_bad_row="skip", progress=False)
    assert scored["id"] == ["ok1", "ok2"]
    assert (
        "6 of 8 rows cannot be read as messages, left out: line 2: malformed JSON" in capsys.readouterr().out
    )
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["dropped"] == 6 and manifest["dataset"]["n_rows_in"] == 8
    for record, (_, problem) in zip(manifest["bad_rows"], [b for b in BAD_LINES if b[1]], strict=True):
        assert problem in record["problem"]
    assert [b["row"] for b in manifest["bad_rows"]] == [f"line {n}" for n in range(2, 8)]


def test_template_that_cannot_be_handled_names_the_model(tmp_path):
    tokenizer = build_tokenizer("chatml")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"
    build_model(tokenizer, hidden_size=16, num_layers=1).save_pretrained(tmp_path / "shouty")
    tokenizer.save_pretrained(tmp_path / "shouty")
    with pytest.raises(ChatTemplateError, match="shouty"):
        score(rows_dataset(make_rows(2)), [str(tmp_path / "shouty")], tmp_path / "out", progress=False)


def test_model_specs_and_alias_clash(tmp_path):
    assert parse_model_spec("runs/models/llama3/") == ("llama3", "runs/models/llama3/")
    assert parse_model_spec("meta-llama/Llama-3-8B-Instruct") == (
        "Llama-3-8B-Instruct",
        "meta-llama/Llama-3-8B-Instruct",
    )
    assert parse_model_spec("l3=a/b=c") == ("l3", "a/b=c")
    with pytest.raises(ValueError, match="ALIAS=PATH"):
        score(rows_dataset(make_rows(1)), ["x/m", "y/m"], tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_other_architectures_gemma2_softcap_and_sliding_window(tmp_path):
    """Gemma-2 soft-caps its logits after the head (the chunked path must too); Mistral's sliding window is
    shorter than the sequences here. Both must still equal the naive full-logits reference."""
    from transformers import Gemma2Config, Gemma2ForCausalLM, MistralConfig, MistralForCausalLM

    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    builds = {
        "gemma2": ("llama3", lambda v: Gemma2ForCausalLM(Gemma2Config(vocab_size=v, num_key_value_heads=2, head_dim=8,
                                                                      final_logit_softcapping=3.0, sliding_window=16,
                                                                      **small))),
        "mistral": ("zephyr", lambda v: MistralForCausalLM(MistralConfig(vocab_size=v, num_key_value_heads=2,
                                                                         sliding_window=16, **small))),
    }  # fmt: skip
    paths = {}
    for name, (family, make) in builds.items():
        tokenizer = build_tokenizer(family, [" ".join(WORDS) * 3], vocab_size=300)
        torch.manual_seed(0)
        make(len(tokenizer)).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
        paths[name] = str(tmp_path / name)
    rows = make_rows(12, seed=3)
    scored = score(
        rows_dataset(rows), list(paths.values()), tmp_path / "out", batch_tokens=256, progress=False
    )
    assert_matches_reference(scored, paths, rows, None)


def test_rows_read_and_encoded_in_small_chunks_score_like_the_reference(aligned, tmp_path, monkeypatch):
    """Memory flat in the rows: the reader builds rows 5 at a time into memory-mapped Arrow, the encodings go
    to files read per batch (4 rows per tokenizer call); scores, order, ids and bad rows stay as they are."""
    from poft import readers, scoring

    monkeypatch.setattr(readers, "CHUNK_ROWS", 5)
    encode_rows = scoring._encode_rows
    monkeypatch.setattr(scoring, "_encode_rows", lambda *a, **k: encode_rows(*a, **k, chunk=4))
    rows = make_rows(23, seed=4)
    lines = [json.dumps(row) for row in rows]
    lines.insert(9, '{"messages": [{"role": "user", "content": "no answer"}]}')  # line 10: left out
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    scored = score(
        path, [aligned["chatml"]], tmp_path / "out", on_bad_row="skip", batch_tokens=300, progress=False
    )
    assert scored["extra"] == [row["extra"] for row in rows]
    assert_matches_reference(scored, {"chatml": aligned["chatml"]}, rows, None)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [b["row"] for b in manifest["bad_rows"]] == ["line 10"]
