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
    chat.ChatFormat      each conversation -> input ids + response mask, under that model's template
    logprobs             packed batches (no padding), decoder once, LM head on response positions only
    shards               finished rows written as shards; then merged in row order, saved, manifest last

Why it is fast (the official code pads everything to 4096 tokens, keeps full-vocabulary logits and loops
per example, PAPER.md mistake 4): rows are sorted by length and packed by a token budget, longest first,
each batch one row with positions restarting per sequence, so nothing is padded and an out-of-memory shows
at once; the LM head runs only on response positions and in chunks, so [batch x length x vocab] logits
never exist; inference mode; bf16 on GPU.

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
from .chat import ChatTemplateError, response_bytes
from .configs import NORMALIZATIONS, ON_BAD_ROW
from .logprobs import default_batch_tokens, packed_batches, packed_logprob_sums
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
    rows = _check_templates(rows, aligned, on_bad_row, report=state.is_main_process)
    messages = list(rows.dataset["messages"])
    fingerprints = rows.dataset["fingerprint"]  # of the text scored now (a stored one is not kept)
    identity = {
        "dataset_fingerprint": short_hash("\n".join(fingerprints) + f"\n{rows.n_rows_in}"),
        "n_rows": len(messages),
        "models": [m.identity() for m in aligned],
        "max_length": max_length,
        "dtype": str(torch_dtype).removeprefix("torch."),
    }
    if torch_dtype != torch.float32:  # bf16/fp16 scores move slightly with batch composition: record it
        identity["batching"] = {"batch_tokens": batch_tokens, "processes": state.num_processes}
    check_run_config(output, identity, write=state.is_main_process)
    if state.is_main_process:
        remove_stale_temporaries(output)
    stats = {}
    encodings: dict = {}  # models sharing tokenizer and template share their rows' encodings
    for model in aligned:
        done = finished_rows(output, model.alias)
        state.wait_for_everyone()  # every process has read the finished set before anyone writes new shards
        # Each process's share and its batches are fixed by the run (not by what is left), so a resumed run
        # scores every row in the same batch as an uninterrupted one: identical scores in any dtype.
        share = list(range(state.process_index, len(messages), state.num_processes))
        if state.is_main_process and done:
            left = len(messages) - len(done)
            print(f"poft: {model.alias}: resuming, {len(done)} rows already scored, {left} to go")
        if all(r in done for r in share):
            stats[model.alias] = {"rows": 0, "tokens": 0, "seconds": 0.0}
            continue
        network = load_weights(model, torch_dtype, state.device)
        stats[model.alias] = _score_share(
            model, network, [messages[r] for r in share], share, output, done=done, max_length=max_length,
            batch_tokens=batch_tokens, rank=state.process_index, rows_per_shard=rows_per_shard,
            flush_seconds=flush_seconds, progress=progress and state.is_main_process, encodings=encodings,
        )  # fmt: skip
        del network
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


def _check_templates(rows: SFTRows, aligned: list[AlignedModel], on_bad_row: str, report: bool) -> SFTRows:
    """Refuse, or leave out for every model, the rows some model's chat template cannot render with each
    message verbatim in order (`chat.ChatFormat.render`: a dropped, moved or rewritten message, or a template
    error). Errors name row, id and model; skipped rows join the reader's bad rows (manifest `bad_rows`).
    One render per row and model, before anything is scored, so every model scores the same rows."""
    bad: dict[int, str] = {}
    for i, conversation in enumerate(rows.dataset["messages"]):
        for model in aligned:
            try:
                model.chat.render(conversation)
            except ChatTemplateError as e:
                bad[i] = str(e)
                break
    if not bad:
        return rows
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
    return dataclasses.replace(rows, dataset=dataset, bad=every_bad, where=[rows.where[i] for i in kept])


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
    model: AlignedModel, messages: list[list[dict]], rows: list[int], max_length: int | None
) -> list:
    """(input_ids, response_mask, truncated) per row, as compact numpy arrays (240k rows fit in memory)."""
    encoded = []
    for row, conversation in zip(rows, messages, strict=True):
        try:
            chat = model.chat.encode(conversation, max_length)
        except ChatTemplateError as e:
            raise ChatTemplateError(f"{e} (dataset row {row})") from e
        ids = np.asarray(chat.input_ids, dtype=np.int32)
        encoded.append((ids, np.asarray(chat.response_mask, dtype=np.uint8), chat.truncated))
    return encoded


def _score_share(
    model: AlignedModel,
    network: torch.nn.Module,
    messages: list[list[dict]],
    rows: list[int],
    output: Path,
    *,
    done: set[int],
    max_length: int | None,
    batch_tokens: int,
    rank: int,
    rows_per_shard: int,
    flush_seconds: float,
    progress: bool,
    encodings: dict | None = None,
) -> dict:
    """Score `rows` (whose conversations are `messages`) with one model, except the rows in `done`; a shard
    every `rows_per_shard` rows or `flush_seconds` (always after a whole batch), so a kill loses at most that
    much. Batches are formed over all of `rows`, so a resume re-forms the same batches and skips finished
    ones."""
    from tqdm.auto import tqdm

    tokenizer = model.chat.tokenizer
    key = (model.tokenizer_hash, model.template_hash, repr(tokenizer.special_tokens_map), max_length)
    encodings = {} if encodings is None else encodings
    if key not in encodings:  # only the last one is kept (240k rows of one tokenizer are enough memory)
        encodings.clear()
        encodings[key] = _encode_rows(model, messages, rows, max_length)
    encoded = encodings[key]
    context = getattr(network.config, "max_position_embeddings", None)
    longest = max(len(e[0]) for e in encoded)
    if context is not None and longest > context:
        print(
            f"poft: warning: {model.alias}: rows of up to {longest} tokens exceed the model's context of "
            f"{context}; pass --max-length {context} to truncate them instead"
        )
    vocab = network.get_output_embeddings().weight.shape[0]
    chunk_size = max(1, (1 << 26) // vocab)  # <= 256 MiB of fp32 logits per chunk
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
