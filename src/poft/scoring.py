"""`poft score`: every aligned model scores every example under its own tokenizer and chat template.

Contract. In: SFT data in any format `readers.py` reads and M aligned models. Out (a `save_to_disk` folder
that `poft train` reads directly): the rows in their input order with their columns, `id` and `fingerprint`
(`readers.fingerprint` of the conversation scored), plus per model `<alias>_logp_sum` (sum of log p over
the response tokens), `<alias>_n_tokens` (how many response tokens were scored), `<alias>_truncated`;
`response_bytes`; and `ref_score`, the mean over models of their normalised scores. Response tokens are
exactly those the trainer trains on (both use `ChatFormat.encode`): assistant contents plus the
end-of-turn token of every assistant turn; the first token of a sequence is never scored (nothing predicts
it). A row whose response was cut away entirely by `max_length` gets a NaN `ref_score` (the trainer drops it).

Route of a dataset, each module entered once, top to bottom:
    readers.read_sft     rows -> validated conversations (bad rows refused or skipped, recorded)
    aligned              each model's tokenizer, chat format and identity (the run identity)
    chat.ChatFormat      each conversation -> input ids + response mask, under that model's template:
                         once per tokenizer + template (models sharing them share the encodings), by
                         the process that scores the row, one tokenizer call per 1024 rows; a row
                         that cannot be encoded is refused, or left out for every model, before any
                         scoring
    logprobs             packed batches (no padding), decoder once, LM head on response positions only
    shards               finished rows written as shards; then merged in row order, saved, manifest last

Why it is fast (the official code pads everything to 4096 tokens, keeps full-vocabulary logits and loops
per example, PAPER.md mistake 4): rows are sorted by length and packed by a token budget, longest first,
each batch one row with positions restarting per sequence, so nothing is padded and an out-of-memory shows
at once; the LM head runs only on response positions and in chunks, so [batch x length x vocab] logits
never exist; inference mode; bf16 on GPU. Rows are encoded before scoring, not overlapped with it: the
check must see every row before anything is scored, and length-sorted packing needs every length before
the first batch; encoding costs about 0.1 % of CPU scoring time (BENCHMARKS.md, items 2-3).

Why it can be trusted: finished rows are written as shards as they complete, so a killed run resumes where
it stopped; under `torchrun` / `accelerate launch` each process (accelerate's `PartialState`) scores its
share of the rows left and the main process merges.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, load_from_disk

from .aligned import (
    AlignedModel,
    alias_clashes,
    load_aligned_models,
    load_weights,
    resolve_dtype,
    short_hash,
)
from .chat import ChatFormat, ChatTemplateError, response_bytes
from .configs import NORMALIZATIONS, ON_BAD_ROW
from .logprobs import PACKING, default_batch_tokens, packed_batches, packed_logprob_sums, scoring_chunk_size
from .readers import SFTRows, read_sft
from .shards import (
    OutputWriteError,
    check_run_config,
    finalize,
    finished_rows,
    remove_stale_temporaries,
    write_shard,
)


def score_dataset(
    dataset: str | Path | Dataset,
    models: Sequence[str],
    output: str | Path,
    *,
    split: str = "train",
    max_length: int | None = None,
    batch_tokens: int | None = None,
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
        batch_tokens: tokens per packed batch (a batch's rows run as one row, no padding); does not change
            fp32 scores. None: chosen for the device and dtype (`logprobs.default_batch_tokens`).
        dtype: "auto" (bf16 on GPU and on CPUs with bf16 instructions, else fp32), "float32", "bfloat16" or
            "float16".
        normalization: how `ref_score` normalises each model's sum: "token" (paper), "byte" or "none".
        on_bad_row: "error" stops naming the first bad rows; "skip" leaves them out and records them.
        rows_per_shard, flush_seconds: how much finished work a kill can lose at most.
        format: force the input format (messages, sharegpt, alpaca, prompt_completion); None = detect.

    Returns the scored dataset (on every process when launched with torchrun / accelerate launch).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, got {on_bad_row!r}")
    if not models:
        raise ValueError("at least one aligned model is needed")
    output = Path(output)
    if not isinstance(dataset, Dataset) and Path(dataset).resolve() == output.resolve():
        raise ValueError(f"{output}: the output folder cannot be the input dataset")
    clashes = alias_clashes(models)
    if clashes:
        raise ValueError(f"models share the alias {clashes}; name them with --model ALIAS=PATH")
    state, started_group = _process_state()
    torch_dtype = resolve_dtype(dtype, state.device)
    batch_tokens = batch_tokens or default_batch_tokens(state.device, torch_dtype)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputWriteError(e.errno, f"cannot create the output folder {output}: {e.strerror or e}") from e
    rows = read_sft(dataset, split, format=format, on_bad_row=on_bad_row, keep_fingerprints=False)
    aligned = load_aligned_models(models)
    groups = _encoding_groups(aligned, max_length)
    # Each row is rendered and encoded once per group, by one process (its share of the rows as read); the
    # encodings are the template check too (a bad row is refused, or left out for every model)
    mine = list(range(state.process_index, len(rows.dataset), state.num_processes))
    conversations = list(rows.dataset["messages"])
    encodings, problems, encode_seconds = {}, {}, {}
    for key, members in groups.items():
        started = time.perf_counter()
        encodings[key], bad = _encode_rows(
            members[0].chat, [conversations[r] for r in mine], mine, max_length
        )
        encode_seconds[key] = time.perf_counter() - started
        for row, problem in bad.items():
            problems.setdefault(row, problem)  # the first model's problem, in the order of --model
    problems = _gather_problems(problems, state)
    rows, kept = _leave_out(rows, problems, on_bad_row, report=state.is_main_process)
    messages = [conversations[r] for r in kept]
    fingerprints = rows.dataset["fingerprint"]  # of the text scored now (a stored one is not kept)
    identity = {
        "dataset_fingerprint": short_hash("\n".join(fingerprints) + f"\n{rows.n_rows_in}"),
        "n_rows": len(messages),
        "models": [m.identity() for m in aligned],
        "max_length": max_length,
        "dtype": str(torch_dtype).removeprefix("torch."),
    }
    if torch_dtype != torch.float32:  # bf16/fp16 scores move slightly with batch composition: record it
        identity["batching"] = {
            "batch_tokens": batch_tokens,
            "processes": state.num_processes,
            "packing": PACKING,
        }
    check_run_config(output, identity, write=state.is_main_process)
    if state.is_main_process:
        remove_stale_temporaries(output)
    # This process scores the rows it encoded that are kept: fixed by the run (not by what is left), so a
    # resumed run scores every row in the same batch as an uninterrupted one (identical scores in any dtype)
    share = [j for j, r in enumerate(kept) if r % state.num_processes == state.process_index]
    stats = {}
    for model in aligned:
        key = _encoding_key(model, max_length)
        done = finished_rows(output, model.alias)
        state.wait_for_everyone()  # every process has read the finished set before anyone writes new shards
        if state.is_main_process and done:
            left = len(messages) - len(done)
            print(f"poft: {model.alias}: resuming, {len(done)} rows already scored, {left} to go")
        stats[model.alias] = {"rows": 0, "tokens": 0, "seconds": encode_seconds.pop(key, 0.0)}
        if all(r in done for r in share):
            continue
        network = load_weights(model, torch_dtype, state.device)
        scored = _score_share(
            model, network, [encodings[key][kept[j]] for j in share], share, output, done=done,
            batch_tokens=batch_tokens, rank=state.process_index, rows_per_shard=rows_per_shard,
            flush_seconds=flush_seconds, progress=progress and state.is_main_process,
        )  # fmt: skip
        stats[model.alias] = {**scored, "seconds": scored["seconds"] + stats[model.alias]["seconds"]}
        del network
        if model is groups[key][-1]:
            del encodings[key]  # its last model is scored
    all_stats = _gather(stats, state)
    if state.is_main_process:
        run = {
            "dataset": {
                "source": rows.source,
                "n_rows_in": rows.n_rows_in,
                "fingerprint": identity["dataset_fingerprint"],
            },
            "settings": {
                "max_length": max_length,
                "dtype": identity["dtype"],
                **({"batching": identity["batching"]} if "batching" in identity else {}),
            },
            "bad_rows": rows.bad,
        }
        finalize(
            output, rows.dataset, response_bytes=[response_bytes(m) for m in messages],
            models=[m.manifest_entry() for m in aligned], run=run, stats=all_stats, normalization=normalization,
        )  # fmt: skip
    state.wait_for_everyone()
    scored = load_from_disk(str(output))
    if started_group:
        _end_process_group(state)
    return scored


def _leave_out(
    rows: SFTRows, problems: dict[int, str], on_bad_row: str, report: bool
) -> tuple[SFTRows, list[int]]:
    """Refuse, or leave out for every model, the rows some model's chat template cannot encode (`_encode_rows`:
    a message dropped, moved or rewritten, a template error, two BOS tokens), before anything is scored, so
    that every model scores the same rows. Errors name row, id and model; skipped rows join the reader's bad
    rows (manifest `bad_rows`). Returns the rows kept and their indices in `rows`."""
    if not problems:
        return rows, list(range(len(rows.dataset)))
    bad = dict(sorted(problems.items()))
    ids = rows.dataset.select(list(bad))["id"]
    records = [
        {"row": rows.where[i], "id": row_id, "problem": problem}
        for (i, problem), row_id in zip(bad.items(), ids, strict=True)
    ]
    named = "; ".join(f"{b['row']} (id={b['id']}): {b['problem']}" for b in records[:5])
    named += f"; ... {len(records) - 5} more" if len(records) > 5 else ""
    what = f"{rows.source}: {len(records)} of {rows.n_rows_in} rows cannot be scored under the chat templates"
    if on_bad_row == "error":
        raise ChatTemplateError(f"{what}: {named}. Fix them, or pass --on-bad-row skip to leave them out")
    kept = [i for i in range(len(rows.dataset)) if i not in bad]
    if not kept:
        raise ValueError(f"{what}: none can be scored: {named}")
    if report:
        print(f"poft: {what}, skipped: {named}")
    every_bad = sorted([*rows.bad, *records], key=lambda b: (b["row"].split()[0], int(b["row"].split()[1])))
    dataset = rows.dataset.select(kept)
    kept_rows = dataclasses.replace(rows, dataset=dataset, bad=every_bad, where=[rows.where[i] for i in kept])
    return kept_rows, kept


def _encoding_key(model: AlignedModel, max_length: int | None) -> tuple:
    """Models with equal keys encode every row identically (tokenizer, template, special tokens, truncation)."""
    tokens = repr(model.chat.tokenizer.special_tokens_map)
    return (model.tokenizer_hash, model.template_hash, tokens, max_length)


def _encoding_groups(aligned: list[AlignedModel], max_length: int | None) -> dict[tuple, list[AlignedModel]]:
    """The models by encoding key, in the order of their first model."""
    groups: dict[tuple, list[AlignedModel]] = {}
    for model in aligned:
        groups.setdefault(_encoding_key(model, max_length), []).append(model)
    return groups


def _gather_problems(problems: dict[int, str], state) -> dict[int, str]:
    """Every process's bad rows (each process encoded its own share of the rows), on every process."""
    if state.num_processes == 1:
        return problems
    from accelerate.utils import gather_object

    return {row: problem for part in gather_object([problems]) for row, problem in part.items()}


def _process_state():
    """accelerate's PartialState (rank, world size, device; gloo on CPU, NCCL on GPU under torchrun), and
    whether this call started the process group (then it also ends it)."""
    from accelerate import PartialState

    started = torch.distributed.is_available() and not torch.distributed.is_initialized()
    state = PartialState(cpu=not torch.cuda.is_available())
    return state, started and state.num_processes > 1


def _end_process_group(state) -> None:
    """Destroy the group this call started and release what still holds it (`poft.distributed`), so gloo's
    threads are joined now rather than at interpreter exit; PartialState forgets it."""
    from accelerate import PartialState

    from .distributed import end_distributed

    end_distributed()
    PartialState._reset_state()


def _gather(stats: dict, state) -> list[dict]:
    """Every process's stats, in process order (on every process)."""
    if state.num_processes == 1:
        return [stats]
    from accelerate.utils import gather_object

    return gather_object([stats])


def _encode_rows(
    chat: ChatFormat, messages: list[list[dict]], rows: list[int], max_length: int | None, chunk: int = 1024
) -> tuple[dict[int, tuple], dict[int, str]]:
    """Encode `messages` (the conversations of `rows`) under one chat format, `chunk` rows per tokenizer call:
    (input_ids, response_mask, truncated) per row as compact numpy arrays (240k rows fit in memory), and the
    problem of each row that cannot be encoded (`ChatFormat.encode_many`), both by row."""
    encoded: dict[int, tuple] = {}
    problems: dict[int, str] = {}
    for start in range(0, len(rows), chunk):
        part = chat.encode_many(messages[start : start + chunk], max_length)
        for row, enc in zip(rows[start : start + chunk], part, strict=True):
            if isinstance(enc, ChatTemplateError):
                problems[row] = str(enc)
                continue
            ids = np.asarray(enc.input_ids, dtype=np.int32)
            encoded[row] = (ids, np.asarray(enc.response_mask, dtype=np.uint8), enc.truncated)
    return encoded, problems


def _score_share(
    model: AlignedModel,
    network: torch.nn.Module,
    encoded: list[tuple],
    rows: list[int],
    output: Path,
    *,
    done: set[int],
    batch_tokens: int,
    rank: int,
    rows_per_shard: int,
    flush_seconds: float,
    progress: bool,
) -> dict:
    """Score `rows` (whose encodings are `encoded`) with one model, except the rows in `done`; a shard
    every `rows_per_shard` rows or `flush_seconds` (always after a whole batch), so a kill loses at most that
    much. Batches are formed over all of `rows`, so a resume re-forms the same batches and skips finished
    ones."""
    from tqdm.auto import tqdm

    context = getattr(network.config, "max_position_embeddings", None)
    longest = max(len(e[0]) for e in encoded)
    if context is not None and longest > context:
        print(
            f"poft: warning: {model.alias}: rows of up to {longest} tokens exceed the model's context of "
            f"{context}; pass --max-length {context} to truncate them instead"
        )
    vocab = network.get_output_embeddings().weight.shape[0]
    chunk_size = scoring_chunk_size(vocab)
    buffer: dict[str, list] = {"rows": [], "sums": [], "counts": [], "truncated": []}
    tokens = buffered_tokens = 0
    started = last_flush = time.perf_counter()
    todo = sum(r not in done for r in rows)
    bar = tqdm(total=todo, unit="ex", desc=f"scoring {model.alias}", disable=not progress, dynamic_ncols=True)

    def flush() -> None:
        nonlocal last_flush, buffered_tokens
        if buffer["rows"]:
            now = time.perf_counter()
            write_shard(
                output, model.alias, buffer["rows"], buffer["sums"], buffer["counts"], buffer["truncated"],
                tokens=buffered_tokens, seconds=now - last_flush, rank=rank,
            )  # fmt: skip
            for values in buffer.values():
                values.clear()
            last_flush, buffered_tokens = now, 0

    with torch.inference_mode():
        for batch in packed_batches([len(e[0]) for e in encoded], batch_tokens):
            # whole batches are skipped (a partly finished one only when the run identity allowed a change)
            batch = [i for i in batch if rows[i] not in done]
            if not batch:
                continue
            sums, counts = packed_logprob_sums(
                network, [encoded[i][:2] for i in batch], chunk_size=chunk_size
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
    return {"rows": todo, "tokens": tokens, "seconds": time.perf_counter() - started}
