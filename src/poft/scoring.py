"""`poft score`: every aligned model scores every example under its own tokenizer and chat template.

Contract. In: a dataset of `messages` conversations and M aligned models. Out (a `save_to_disk` folder
that `poft train` reads directly): the input rows in their original order with their original columns,
plus per model `<alias>_logp_sum` (sum of log p over the response tokens), `<alias>_n_tokens` (how many
response tokens were scored), `<alias>_truncated`; `response_bytes`; `id`; `fingerprint` (hash of the
conversation, see `row_fingerprint`); and `ref_score`, the mean over models of their normalised scores.
Response tokens are exactly those the trainer trains on (both use `ChatFormat.encode`): assistant contents
plus the end-of-turn token of every assistant turn; the first token of a sequence is never scored (nothing
predicts it). A row whose response was cut away entirely by `max_length` gets a NaN `ref_score` (the
trainer drops it).

Why it is fast (the official code pads everything to 4096 tokens, keeps full-vocabulary logits and loops
per example, PAPER.md mistake 4): examples are sorted by length and batched by a token budget, longest
first, so padding is small and an out-of-memory shows at once; the LM head runs only on response
positions and in chunks, so [batch x length x vocab] logits never exist; inference mode; bf16 on GPU.

Why it can be trusted: finished rows are written in shards as they complete (`shards.py`), so a killed
run resumes where it stopped; `torchrun`/`accelerate launch` split rows across processes and rank 0
merges; bad rows stop the run naming file, row, id and problem, or are skipped and recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets, load_from_disk

from .chat import ChatFormat, ChatTemplateError, RowError, validate_messages
from .formats import normalize_conversations
from .logprobs import batch_logprob_sums, chunked_token_log_probs, softcap, token_budget_batches
from .loss import NORMALIZATIONS, normalize_scores
from .readers import load_sft_dataset
from .shards import (
    MANIFEST_FILE,
    OutputWriteError,
    check_run_config,
    finished_rows,
    merge_shards,
    remove_stale_temporaries,
    write_json_atomic,
    write_shard,
)
from .training_data import FINGERPRINT_COLUMN, row_fingerprint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SCORE_SUFFIXES = ("_logp_sum", "_n_tokens", "_truncated")


# ----------------------------------------------------------------------------------------------- rows


@dataclass
class CheckedRows:
    """The dataset after validation: which rows are scored, their fingerprints, and the rows left out."""

    dataset: Dataset
    source: str
    good: list[int]  # indices into `dataset` that are scored, in order
    fingerprints: list[str]  # one per good row
    bad: list[dict]  # {"row", "id", "problem"} for every skipped row
    response_bytes: list[int]  # UTF-8 bytes of the assistant contents, one per good row
    n_input_rows: int  # rows (or non-empty lines) in the input, bad ones included


def _id_of(row: dict) -> object:
    for key in ("id", "prompt_id"):
        if row.get(key) is not None:
            return row[key]
    return None


def _problem(row: object) -> str | None:
    if not isinstance(row, dict):
        return f"the line is a JSON {type(row).__name__}, not an object"
    if row.get("messages") is None:
        return "no `messages`"
    try:
        validate_messages(row["messages"])
    except RowError as e:
        return str(e)
    return None


def _read_json_lines(path: Path) -> tuple[list[object], list[dict]]:
    """Parse a JSON-lines file line by line: (parsed rows, malformed lines) so errors can name the line."""
    rows, bad = [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append((line_no, json.loads(line)))
            except json.JSONDecodeError as e:
                bad.append({"row": f"line {line_no}", "id": None, "problem": f"malformed JSON ({e.msg})"})
    return rows, bad


def _is_json_lines(path: Path) -> bool:
    if path.suffix.lower() == ".jsonl":
        return True
    if path.suffix.lower() != ".json":
        return False
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    return head.startswith("{")


def _raise_or_report(bad: list[dict], source: str, on_bad_row: str, total: int) -> None:
    if not bad:
        return
    named = "; ".join(f"{b['row']} (id={b['id']}): {b['problem']}" for b in bad[:5])
    more = f"; ... {len(bad) - 5} more" if len(bad) > 5 else ""
    if on_bad_row == "error":
        raise RowError(
            f"{source}: {len(bad)} bad rows: {named}{more}. Fix them, or pass --on-bad-row skip to leave them out"
        )
    if os.environ.get("RANK", "0") == "0":  # every process reads the data; one says so
        print(f"poft: skipped {len(bad)} of {total} rows of {source}: {named}{more}")


def load_checked_rows(
    dataset: str | Path | Dataset,
    split: str,
    on_bad_row: str,
    clean_copy: Path | None,
    write: bool = True,
    format: str | None = None,
) -> CheckedRows:
    """Load the dataset (any format `formats.py` reads, normalised to `messages` + `id`) and validate rows.

    JSON-lines files are parsed line by line first, so errors name the line. Malformed lines (and, for
    `messages` files, rows with bad conversations, whose mixed JSON types would also confuse the `datasets`
    loader) can only be skipped by leaving them out of the file: with on_bad_row="skip" such an input is
    loaded from a cleaned copy (`clean_copy`, written when `write`).
    """
    if isinstance(dataset, Dataset):
        normalised = normalize_conversations(dataset, format, source="dataset", on_bad_row=on_bad_row)
        return _check_dataset(normalised, "dataset", on_bad_row, [], lambda i: f"row {i}")
    path = Path(dataset)
    if not (path.is_file() and _is_json_lines(path)):
        loaded = load_sft_dataset(str(dataset), split, format=format, on_bad_row=on_bad_row)
        return _check_dataset(loaded, str(dataset), on_bad_row, [], lambda i: f"row {i}")
    parsed, bad = _read_json_lines(path)
    messages_format = any(isinstance(row, dict) and "messages" in row for _, row in parsed)
    problems = {n: _problem(row) if messages_format else None for n, row in parsed}
    for line_no, row in parsed:
        if problems[line_no] is not None:
            row_id = _id_of(row) if isinstance(row, dict) else None
            bad.append({"row": f"line {line_no}", "id": row_id, "problem": problems[line_no]})
    bad.sort(key=lambda b: int(b["row"].split()[1]))
    n_malformed = sum(b["problem"].startswith("malformed") for b in bad)
    _raise_or_report(bad, str(path), on_bad_row, len(parsed) + n_malformed)
    lines = [line_no for line_no, _ in parsed if problems[line_no] is None]
    data_file = path
    if bad:
        if write:
            keep = set(lines)
            with open(path, encoding="utf-8") as f:
                text = "".join(line for n, line in enumerate(f, start=1) if n in keep)
            clean_copy.parent.mkdir(parents=True, exist_ok=True)
            tmp = clean_copy.with_name(".tmp-" + clean_copy.name)
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, clean_copy)
        data_file = clean_copy
    loaded = load_sft_dataset(str(data_file), format=format, on_bad_row=on_bad_row)
    return _check_dataset(loaded, str(path), on_bad_row, bad, lambda i: f"line {lines[i]}")


def _check_dataset(dataset: Dataset, source: str, on_bad_row: str, bad: list[dict], where) -> CheckedRows:
    if "messages" not in dataset.column_names:
        raise ValueError(f"{source}: no `messages` column (columns: {dataset.column_names})")
    id_columns = [c for c in ("id", "prompt_id") if c in dataset.column_names]
    good, fingerprints, response_bytes, bad_here = [], [], [], []
    view = dataset.select_columns(["messages", *id_columns])
    for i, row in enumerate(view):
        try:
            messages = validate_messages(row["messages"])
        except RowError as e:
            problem = "no `messages`" if row["messages"] is None else str(e)
            bad_here.append({"row": where(i), "id": _id_of(row), "problem": problem})
            continue
        good.append(i)
        fingerprints.append(row_fingerprint(messages))
        response_bytes.append(
            sum(len(m["content"].encode("utf-8")) for m in messages if m["role"] == "assistant")
        )
    _raise_or_report(bad_here, source, on_bad_row, len(dataset))
    n_input = len(dataset) + len(bad)
    return CheckedRows(dataset, source, good, fingerprints, bad + bad_here, response_bytes, n_input)


# ---------------------------------------------------------------------------------------------- models


class AlignedModelError(ValueError):
    """An aligned model's folder or Hub id cannot be used (no tokenizer, for example); names the model."""


@dataclass
class AlignedModel:
    """One aligned model as the scorer sees it: where it comes from and what its template does."""

    alias: str
    path: str
    chat: ChatFormat
    revision: str
    template_hash: str
    tokenizer_hash: str

    def identity(self) -> dict:
        return {
            "alias": self.alias,
            "path": self.path,
            "revision": self.revision,
            "template_hash": self.template_hash,
            "tokenizer_hash": self.tokenizer_hash,
        }


def parse_model_spec(spec: str) -> tuple[str, str]:
    """`path/to/llama3` -> ("llama3", "path/to/llama3"); `alias=path` -> ("alias", "path")."""
    alias, sep, path = spec.partition("=")
    if not sep:
        path, alias = spec, Path(spec.rstrip("/\\")).name
    if not alias or not path:
        raise ValueError(f"--model {spec!r}: expected PATH_OR_HUB_ID or ALIAS=PATH_OR_HUB_ID")
    return alias, path


def _alias_clashes(specs: Sequence[str]) -> list[str]:
    aliases = [parse_model_spec(s)[0] for s in specs]
    return sorted({a for a in aliases if aliases.count(a) > 1})


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _revision(path: str) -> str:
    """The Hub commit a model resolves to, or for a local folder a hash of its config and weight file sizes."""
    from transformers.utils import cached_file

    config_file = Path(cached_file(path, "config.json"))
    parts = config_file.parts
    if "snapshots" in parts:
        return parts[parts.index("snapshots") + 1]
    weights = sorted((p.name, p.stat().st_size) for p in config_file.parent.glob("*.safetensors"))
    weights += sorted((p.name, p.stat().st_size) for p in config_file.parent.glob("*.bin"))
    return "local-" + _sha(config_file.read_text() + repr(weights))


def load_aligned_models(specs: Sequence[str]) -> list[AlignedModel]:
    """Tokenizers, chat formats and identities of the aligned models (weights are loaded later, if needed)."""
    from transformers import AutoTokenizer

    models = []
    for alias, path in map(parse_model_spec, specs):
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as e:  # transformers raises OSError, ValueError, ...: keep the cause, name the model
            cause = " ".join(str(e).split())  # transformers' messages span lines; the CLI prints one
            raise AlignedModelError(
                f"aligned model {alias} ({path}): could not load its tokenizer: {cause}"
            ) from e
        chat = ChatFormat.from_tokenizer(tokenizer, alias)
        template = repr(
            (tokenizer.chat_template, chat.end_of_turn, chat.prepend_bos, chat.uses_generation_markers)
        )
        tokenizer_hash = _sha(tokenizer.backend_tokenizer.to_str())
        models.append(AlignedModel(alias, path, chat, _revision(path), _sha(template), tokenizer_hash))
    return models


def _load_weights(model: AlignedModel, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    network = AutoModelForCausalLM.from_pretrained(model.path, dtype=dtype).to(device).eval()
    _check_chunked_head(network, model.alias)
    return network


def _check_chunked_head(network: torch.nn.Module, alias: str) -> None:
    """The chunked path (decoder -> output embeddings) must give the model's own logits: some models scale
    or soft-cap logits after the head, which this scorer does not reproduce; refuse those loudly."""
    ids = torch.arange(3, 19, device=network.device)[None] % network.config.vocab_size
    with torch.inference_mode():
        full = network(input_ids=ids).logits.float()
        hidden = network.get_decoder()(input_ids=ids).last_hidden_state[0]
        labels = torch.arange(hidden.shape[0], device=network.device) % network.config.vocab_size
        head = network.get_output_embeddings()
        ours = chunked_token_log_probs(hidden, head.weight, labels, head.bias, softcap(network), 4)
        full = torch.log_softmax(full[0], dim=-1).gather(-1, labels[:, None]).squeeze(-1)
    if not torch.allclose(full, ours, rtol=1e-2, atol=5e-2):  # loose for bf16; a missed scale is far off
        raise ValueError(
            f"{alias}: the model transforms its logits after the LM head (scaling or soft-capping); "
            "the chunked scorer would give wrong log-probs for it"
        )


# --------------------------------------------------------------------------------------------- process


def _distributed() -> tuple[int, int, bool]:
    """(rank, world size, whether this call started the process group) under torchrun / accelerate launch."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, False
    import torch.distributed as dist

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), started


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


# ------------------------------------------------------------------------------------------------- run


def _encode_rows(model: AlignedModel, checked: CheckedRows, rows: list[int], max_length: int | None) -> list:
    """(input_ids, response_mask, truncated) per row, as compact numpy arrays (240k rows fit in memory)."""
    encoded = []
    column = checked.dataset.select_columns(["messages"])
    for start in range(0, len(rows), 1024):
        chunk = rows[start : start + 1024]
        for r, messages in zip(chunk, column[chunk]["messages"], strict=True):
            try:
                chat = model.chat.encode(messages, max_length)
            except ChatTemplateError as e:
                raise ChatTemplateError(f"{e} (dataset row {r})") from e
            ids = np.asarray(chat.input_ids, dtype=np.int32)
            encoded.append((ids, np.asarray(chat.response_mask, dtype=np.uint8), chat.truncated))
    return encoded


def _score_share(
    model: AlignedModel,
    network: torch.nn.Module,
    checked: CheckedRows,
    rows: list[int],
    output: Path,
    *,
    max_length: int | None,
    batch_tokens: int,
    rank: int,
    rows_per_shard: int,
    flush_seconds: float,
    progress: bool,
) -> dict:
    """Score this process's rows for one model, writing a shard every `rows_per_shard` rows / `flush_seconds`."""
    from tqdm.auto import tqdm

    encoded = _encode_rows(model, checked, rows, max_length)
    context = getattr(network.config, "max_position_embeddings", None)
    longest = max(len(e[0]) for e in encoded)
    if context is not None and longest > context:
        print(f"poft: warning: {model.alias}: rows of up to {longest} tokens exceed the model's context of "
              f"{context}; pass --max-length {context} to truncate them instead")  # fmt: skip
    vocab = network.get_output_embeddings().weight.shape[0]
    chunk_size = max(1, (1 << 26) // vocab)  # <= 256 MiB of fp32 logits per chunk
    pad_id = model.chat.tokenizer.pad_token_id or 0
    buffer: dict[str, list] = {"rows": [], "sums": [], "counts": [], "truncated": []}
    tokens = buffered_tokens = 0
    started = last_flush = time.perf_counter()
    bar = tqdm(
        total=len(rows), unit="ex", desc=f"scoring {model.alias}", disable=not progress, dynamic_ncols=True
    )

    def flush() -> None:
        nonlocal last_flush, buffered_tokens
        if buffer["rows"]:
            now = time.perf_counter()
            write_shard(output, model.alias, buffer["rows"], buffer["sums"], buffer["counts"], buffer["truncated"],
                        tokens=buffered_tokens, seconds=now - last_flush, rank=rank)  # fmt: skip
            for values in buffer.values():
                values.clear()
            last_flush, buffered_tokens = now, 0

    with torch.inference_mode():
        for batch in token_budget_batches([len(e[0]) for e in encoded], batch_tokens):
            sums, counts = batch_logprob_sums(
                network, [encoded[i][:2] for i in batch], pad_id=pad_id, chunk_size=chunk_size
            )
            n_batch_tokens = sum(len(encoded[i][0]) for i in batch)
            tokens += n_batch_tokens
            buffered_tokens += n_batch_tokens
            buffer["rows"] += [rows[i] for i in batch]
            buffer["sums"] += sums.tolist()
            buffer["counts"] += counts.tolist()
            buffer["truncated"] += [encoded[i][2] for i in batch]
            if len(buffer["rows"]) >= rows_per_shard or time.perf_counter() - last_flush >= flush_seconds:
                flush()
            bar.update(len(batch))
            bar.set_postfix_str(f"{tokens / max(time.perf_counter() - started, 1e-9):,.0f} tok/s")
    flush()
    bar.close()
    return {"rows": len(rows), "tokens": tokens, "seconds": time.perf_counter() - started}


def score_dataset(
    dataset: str | Path | Dataset,
    models: Sequence[str],
    output: str | Path,
    *,
    split: str = "train",
    max_length: int | None = None,
    batch_tokens: int = 16384,
    dtype: str = "auto",
    normalization: str = "token",
    on_bad_row: str = "error",
    progress: bool = True,
    rows_per_shard: int = 2048,
    flush_seconds: float = 60.0,
    format: str | None = None,
) -> Dataset:
    """Score every row with every aligned model; write `output` (save_to_disk folder + manifest.json).

    Args:
        dataset: a JSON/JSONL/Parquet/CSV file, a `save_to_disk` folder, a Hub id, or a `datasets.Dataset`.
        models: "PATH_OR_HUB_ID" (alias = basename) or "ALIAS=PATH_OR_HUB_ID" per aligned model.
        output: folder for shards, the scored dataset and manifest.json; re-running resumes.
        max_length: truncate longer conversations (counted in the manifest); None = no limit.
        batch_tokens: padded tokens per batch (batch size x longest sequence); does not change scores.
        dtype: "auto" (bf16 on GPU, fp32 on CPU), "float32", "bfloat16" or "float16".
        normalization: how `ref_score` normalises each model's sum: "token" (paper), "byte" or "none".
        on_bad_row: "error" stops naming the first bad rows; "skip" leaves them out and records them.
        rows_per_shard, flush_seconds: how much finished work a kill can lose at most.
        format: force the input format (messages, sharegpt, alpaca, prompt_completion); None = detect.

    Returns the scored dataset (on every process when launched with torchrun / accelerate launch).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if not models:
        raise ValueError("at least one aligned model is needed")
    output = Path(output)
    if not isinstance(dataset, Dataset) and Path(dataset).resolve() == output.resolve():
        raise ValueError(f"{output}: the output folder cannot be the input dataset")
    clashes = _alias_clashes(models)
    if clashes:
        raise ValueError(f"models share the alias {clashes}; name them with --model ALIAS=PATH")
    rank, world, started_group = _distributed()
    device = _device()
    torch_dtype = _resolve_dtype(dtype, device)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputWriteError(e.errno, f"cannot create the output folder {output}: {e.strerror or e}") from e
    checked = load_checked_rows(
        dataset, split, on_bad_row, output / f"input-clean.rank{rank}.jsonl", format=format
    )
    aligned = load_aligned_models(models)
    config = {
        "dataset_fingerprint": _sha("\n".join(checked.fingerprints) + f"\n{len(checked.dataset)}"),
        "n_rows": len(checked.good),
        "models": [m.identity() for m in aligned],
        "max_length": max_length,
        "dtype": str(torch_dtype).removeprefix("torch."),
    }
    check_run_config(output, config, write=rank == 0)
    if rank == 0:
        remove_stale_temporaries(output)
    stats = {}
    for model in aligned:
        done = finished_rows(output, model.alias)
        remaining = [r for r in checked.good if r not in done]
        _barrier(world)  # every process has read the finished set before anyone writes new shards
        share = remaining[rank::world]
        if rank == 0 and done:
            print(f"poft: {model.alias}: resuming, {len(done)} rows already scored, {len(remaining)} to go")
        if not share:
            stats[model.alias] = {"rows": 0, "tokens": 0, "seconds": 0.0}
            continue
        network = _load_weights(model, torch_dtype, device)
        stats[model.alias] = _score_share(
            model, network, checked, share, output, max_length=max_length, batch_tokens=batch_tokens, rank=rank,
            rows_per_shard=rows_per_shard, flush_seconds=flush_seconds, progress=progress and rank == 0,
        )  # fmt: skip
        del network
    all_stats = [stats]
    if world > 1:
        all_stats = [None] * world
        torch.distributed.all_gather_object(all_stats, stats)
    if rank == 0:
        _finalize(checked, aligned, output, config, all_stats, normalization=normalization, world=world)
    _barrier(world)
    scored = load_from_disk(str(output))
    if started_group:
        torch.distributed.destroy_process_group()
    return scored


def _finalize(
    checked: CheckedRows, aligned: list[AlignedModel], output: Path, config: dict, stats: list[dict], *,
    normalization: str, world: int,
) -> None:  # fmt: skip
    """Merge every model's shards in original row order, add the score columns, save, write the manifest."""
    good = np.asarray(checked.good, dtype=np.int64)
    dataset = checked.dataset if len(good) == len(checked.dataset) else checked.dataset.select(good)
    columns: dict[str, object] = {}
    if "id" not in dataset.column_names:  # normalize_conversations adds one; a content hash otherwise
        columns["id"] = [f[:16] for f in checked.fingerprints]
    columns[FINGERPRINT_COLUMN] = checked.fingerprints
    columns["response_bytes"] = np.asarray(checked.response_bytes, dtype=np.int64)
    per_model = [_merge_model(model, checked, output, columns, normalization) for model in aligned]
    columns["ref_score"] = np.mean([m.pop("scores") for m in per_model], axis=0)
    replaced = [c for c in columns if c in dataset.column_names and c != "id"]
    if replaced:
        print(f"poft: replacing existing columns {replaced} with new scores")
        dataset = dataset.remove_columns(replaced)
    scored = concatenate_datasets([dataset, Dataset.from_dict(columns)], axis=1)
    # From here until the manifest is written again, readers refuse the folder as unfinished
    (output / MANIFEST_FILE).unlink(missing_ok=True)
    try:
        scored.save_to_disk(str(output))
        _sync_to_disk(output)
    except OSError as e:
        raise OutputWriteError(
            e.errno, f"cannot write the scored dataset to {output}: {e.strerror or e}. Every shard is kept: "
            "fix the cause and re-run the same command to finish (nothing is scored again)"
        ) from e  # fmt: skip
    tokens = sum(s[m.alias]["tokens"] for s in stats for m in aligned)
    seconds = sum(max(s[m.alias]["seconds"] for s in stats) for m in aligned)
    manifest = {
        "dataset": {
            "source": checked.source,
            "n_rows_in": checked.n_input_rows,
            "n_rows_out": len(scored),
            "fingerprint": config["dataset_fingerprint"],
        },  # fmt: skip
        "models": per_model,
        "normalization": normalization,
        "max_length": config["max_length"],
        "dtype": config["dtype"],
        "counts": {
            "dropped": len(checked.bad),
            "truncated": {m["alias"]: m["n_truncated"] for m in per_model},
            "ref_score_nan": int(np.isnan(columns["ref_score"]).sum()),
        },
        "bad_rows": checked.bad,
        "throughput": {
            "processes": world,
            "tokens_this_run": tokens,
            "scoring_seconds_this_run": round(seconds, 3),  # tokenise + forward, slowest process
            "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        },
        "columns": scored.column_names,
    }
    write_json_atomic(output / MANIFEST_FILE, manifest)  # last: marks the folder complete
    rate = f", {tokens / seconds:,.0f} tok/s" if seconds > 0 else ""
    print(
        f"poft: scored {len(scored)} rows with {len(aligned)} models -> {output} "
        f"({len(checked.bad)} bad rows skipped, {tokens} tokens this run{rate})"
    )


def _sync_to_disk(folder: Path) -> None:
    """fsync the dataset files and the folder before the manifest vouches for them: a kill cannot lose data
    the kernel already has, but a power cut can lose what it has not yet written out."""
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _merge_model(
    model: AlignedModel, checked: CheckedRows, output: Path, columns: dict, normalization: str
) -> dict:
    """Add one model's columns (from its shards, in row order); return its manifest entry + normalised scores."""
    good = np.asarray(checked.good, dtype=np.int64)
    merged = {k: v[good] for k, v in merge_shards(output, model.alias, len(checked.dataset)).items()}
    missing = good[merged["n_tokens"] < 0]
    if len(missing):
        raise RuntimeError(
            f"{model.alias}: {len(missing)} rows have no score (rows {missing[:5].tolist()}...)"
        )
    for suffix, key in zip(SCORE_SUFFIXES, ("logp_sum", "n_tokens", "truncated"), strict=True):
        columns[model.alias + suffix] = merged[key]
    scores = normalize_scores(
        torch.from_numpy(merged["logp_sum"]),
        torch.from_numpy(merged["n_tokens"]),
        normalization=normalization,
        response_bytes=torch.from_numpy(columns["response_bytes"]),
    ).double().numpy()  # fmt: skip
    scores[merged["n_tokens"] == 0] = np.nan  # the whole response was truncated away
    return {
        **model.identity(),
        "uses_generation_markers": model.chat.uses_generation_markers,
        "end_of_turn": model.chat.end_of_turn,
        "n_truncated": int(merged["truncated"].sum()),
        "n_without_response_tokens": int((merged["n_tokens"] == 0).sum()),
        "response_tokens": int(merged["n_tokens"].sum()),
        "scores": scores,
    }
