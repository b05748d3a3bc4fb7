"""`poft score`: every aligned model scores every example under its own tokenizer and chat template.

Contract. In: SFT data in any format `readers.py` reads and M aligned models. Out (a `save_to_disk` folder
that `poft train` reads directly): the rows in their input order with their columns, `id` and `fingerprint`
(`readers.fingerprint` of the conversation scored), plus per model `<alias>_logp_sum` (sum of log p over
the response tokens), `<alias>_n_tokens` (how many response tokens were scored), `<alias>_truncated`;
`response_bytes`; and `ref_score`, the mean over models of their normalised scores. Response tokens are
exactly those the trainer trains on (both use `ChatFormat.encode`): assistant contents plus the
end-of-turn token of every assistant turn; the first token of a sequence is never scored (nothing predicts
it). A row whose response was cut away entirely by `max_length` gets a NaN `ref_score` (the trainer drops it).
With `--uncond` each model also scores the same response tokens in the prompt-free render (`unconditional`:
its own encodings and shards `<alias>@uncond`, the weights loaded once) and the output gains
`<alias>_uncond_logp_sum`, `<alias>_uncond_n_tokens`, `ref_pmi`, `ref_ifd` and `ref_combined` (`pointwise`).

Route of a dataset, each module entered once, top to bottom (`score_dataset` reads as these steps):
    readers.read_sft     rows -> validated conversations (bad rows refused or skipped, recorded), a chunk
                         at a time into memory-mapped Arrow (`arrow_rows`)
    aligned              each model's tokenizer, chat format and identity (the run identity)
    chat.ChatFormat      each conversation -> input ids + response mask, under that model's template:
                         once per tokenizer + template (models sharing them share the encodings), by
                         the process that scores the row, one tokenizer call per 1024 rows, into
                         files read back per batch (`encoded_rows`); a row that cannot be encoded is
                         refused, or left out for every model, before any scoring
    logprobs             packed batches (no padding), decoder once, LM head on response positions only
    shards               finished rows written as shards; then merged in row order, saved, manifest last

Memory is flat in the rows: no step holds every row in Python. What grows with the rows is a few numpy
numbers a row (lengths, offsets, the finished mask, the score columns while merging: about 60 bytes a row
with one model) and files in TMPDIR (the rows in Arrow, the encodings: about the size of the input), which
are removed when the process exits. A JSON array file (`[...]`) is the exception: it is parsed whole; use
JSON lines, Parquet or a `save_to_disk` folder for large data.

Why it is fast (the official code pads everything to 4096 tokens, keeps full-vocabulary logits and loops
per example, PAPER.md mistake 4): rows are sorted by length and packed by a token budget, longest first,
each batch one row with positions restarting per sequence, so nothing is padded and an out-of-memory shows
at once; the LM head runs only on response positions and in chunks, so [batch x length x vocab] logits
never exist; inference mode; bf16 on GPU. Rows are encoded before scoring, not overlapped with it: every
row must be checked before anything is scored, and length-sorted packing needs every length before the
first batch; encoding costs about 0.1 % of CPU scoring time (docs/BENCHMARKS.md).

Why it can be trusted: finished rows are written as shards as they complete, so a killed run resumes where
it stopped; under `torchrun` / `accelerate launch` each process (accelerate's `PartialState`) scores a
share of the rows fixed by the run (row i goes to process i mod N) and the main process merges.

One index space: after encoding, a row is named by its position among the rows every model scores
(`EncodedShare.rows`); shards, the manifest and the output use that position.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from array import array
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, load_from_disk

from .aligned import (
    AlignedModel,
    alias_clashes,
    load_aligned_models,
    load_weights,
    parse_model_spec,
    resolve_dtype,
)
from .chat import ChatFormat, ChatTemplateError, response_bytes
from .configs import ScoreConfig
from .console import BadRow, input_order, refuse_or_skip, say
from .encoded_rows import EncodedRows
from .locks import output_lock
from .logprobs import (
    PACKING,
    batch_budget,
    default_batch_tokens,
    iter_packed_batches,
    packed_logprob_sums,
    scoring_chunk_size,
)
from .readers import SFTRows, read_sft
from .shards import (
    CONFIG_FILE,
    OutputWriteError,
    check_run_config,
    finalize,
    finished_mask,
    remove_stale_temporaries,
    write_shard,
)
from .unconditional import encode_prompt_free, uncond_alias, uncond_clashes


def score_dataset(config: ScoreConfig, dataset: Dataset | None = None) -> Dataset:
    """Score every row with every aligned model; write `config.output` (save_to_disk folder + manifest.json).

    `config` holds what `poft score` takes (see `ScoreConfig` for each option); `dataset`, when given, is
    scored instead of `config.dataset` (rows already in memory). Re-running the same call resumes. Returns
    the scored dataset (on every process when launched with torchrun / accelerate launch).
    """
    source = _check_call(config, dataset)
    state, started_group = _process_state()
    run = _Settings.for_device(config, state)
    output = _make_output_folder(config.output)
    rows = read_sft(
        source,
        config.split,
        format=config.format,
        on_bad_row=config.on_bad_row,
        name=config.dataset if dataset is not None else None,
        keep_fingerprints=False,
    )
    aligned = load_aligned_models(config.model, config.chat_template)
    with _peer_lost_is_said(output, state):
        work = _encode_share(rows, aligned, config, state)
        identity = _run_identity(work.rows, aligned, config, run, state)
        check_run_config(output, identity, write=state.is_main_process)
        _check_folder_is_shared(output, state)
        if state.is_main_process:
            remove_stale_temporaries(output)
        stats = {
            name: passed
            for model in aligned
            for name, passed in _score_model(model, work, output, config, run, state).items()
        }
        all_stats = _gather(stats, state)
        # one finisher at a time (a second run into the folder waits, then finishes)
        if state.is_main_process:
            with output_lock(output, command="poft score", wait=True):
                _write_scored_dataset(output, work.rows, aligned, identity, all_stats, config)
        state.wait_for_everyone()
    scored = load_from_disk(str(output))
    if started_group:
        _end_process_group(state)
    return scored


# ---- the steps of score_dataset, in order ------------------------------------------------------------------


def _check_call(config: ScoreConfig, dataset: Dataset | None) -> str | Dataset:
    """What to read, once the options that only make sense together are checked."""
    source = dataset if dataset is not None else config.dataset
    if source is None:
        raise ValueError("a dataset to score is required (--dataset)")
    if not config.model:
        raise ValueError("at least one aligned model is needed (--model)")
    if not isinstance(source, Dataset) and Path(source).resolve() == Path(config.output).resolve():
        raise ValueError(f"{config.output}: the output folder cannot be the input dataset")
    clashes = alias_clashes(config.model)
    if clashes:
        raise ValueError(f"models share the alias {clashes}; name them with --model ALIAS=PATH")
    if config.uncond and (clashes := uncond_clashes([parse_model_spec(spec)[0] for spec in config.model])):
        raise ValueError(
            f"--uncond: the aliases {clashes} clash with prompt-free scores; rename with --model ALIAS=PATH"
        )
    return source


@dataclass(frozen=True)
class _Settings:
    """How this run computes: the device and dtype, and the token budget of a packed batch."""

    device: torch.device
    dtype: torch.dtype
    batch_tokens: int

    @classmethod
    def for_device(cls, config: ScoreConfig, state) -> _Settings:
        dtype = resolve_dtype(config.dtype, state.device)
        return cls(state.device, dtype, config.batch_tokens or default_batch_tokens(state.device, dtype))


def _make_output_folder(output: str | Path) -> Path:
    output = Path(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputWriteError(e.errno, f"cannot create the output folder {output}: {e.strerror or e}") from e
    return output


@dataclass
class EncodedShare:
    """The rows every model scores, and this process's share of them encoded per tokenizer + template."""

    rows: SFTRows  # bad rows left out; a row's position here is its index in shards and output
    share: np.ndarray  # the positions in `rows` this process scores (row i: process i mod N)
    encodings: dict[tuple, EncodedRows]  # per encoding key: one row per position of `share`, in that order
    seconds: dict[tuple, float]  # encoding time per key (counted once, with the key's first model)
    users: dict[tuple, int]  # models still to score per key (its encodings are removed after the last)
    differs: dict[tuple, np.ndarray]  # per prompt-free key: rows whose response tokens differ (--uncond)


def _encode_share(rows: SFTRows, aligned: list[AlignedModel], config: ScoreConfig, state) -> EncodedShare:
    """Encode this process's rows once per encoding key, into files (`EncodedRows`); refuse, or leave out
    for every model, the rows some template cannot encode (every process learns every bad row, so all keep
    the same rows)."""
    mine = np.arange(state.process_index, len(rows.dataset), state.num_processes, dtype=np.int64)
    keys = [_encoding_key(model, config.max_length) for model in aligned]
    first_model = dict(reversed(list(zip(keys, aligned, strict=True))))  # key -> its first model, in order
    encodings, problems, seconds, differs = {}, {}, {}, {}
    for key in dict.fromkeys(keys):
        started = time.perf_counter()
        encodings[key], bad = _encode_rows(first_model[key].chat, rows.dataset, mine, config.max_length)
        if config.uncond:  # ---- --uncond: the prompt-free encodings, matched to these (unconditional.py)
            encodings[_uncond_key(key)], bad_uncond, differs[_uncond_key(key)] = _encode_uncond_rows(
                first_model[key].chat, rows.dataset, mine, encodings[key]
            )
            bad = {**bad_uncond, **bad}  # the conditional render's problem first
            keys += [_uncond_key(key)] * keys.count(key)
        seconds[key] = time.perf_counter() - started
        for row, problem in bad.items():
            problems.setdefault(row, problem)  # the first model's problem, in the order of --model
    kept_rows, kept = _leave_out(rows, _gather_problems(problems, state), config.on_bad_row)
    if len(kept) < len(rows.dataset):
        keep = np.isin(mine, kept)
        encodings = {key: enc.select(np.flatnonzero(keep)) for key, enc in encodings.items()}
        differs = {key: flags[keep] for key, flags in differs.items()}
        mine = mine[keep]
    share = np.searchsorted(kept, mine)  # the positions of this process's rows among the rows kept
    users = {key: keys.count(key) for key in encodings}
    return EncodedShare(kept_rows, share, encodings, seconds, users, differs)


def _run_identity(
    rows: SFTRows, aligned: list[AlignedModel], config: ScoreConfig, run: _Settings, state
) -> dict:
    """What a resumed run must share with the run that wrote the folder (`shards.check_run_config`)."""
    identity = {
        "dataset_fingerprint": _dataset_fingerprint(rows),
        "n_rows": len(rows.dataset),
        "models": [m.identity() for m in aligned],
        "max_length": config.max_length,
        "dtype": str(run.dtype).removeprefix("torch."),
    }
    if run.dtype != torch.float32:  # bf16/fp16 scores move slightly with batch composition: record it
        identity["batching"] = {
            "batch_tokens": run.batch_tokens,
            "processes": state.num_processes,
            "packing": PACKING,
        }
    return identity


def _dataset_fingerprint(rows: SFTRows) -> str:
    """`short_hash` of the rows' fingerprints joined by newlines and the input's row count, streamed (the
    fingerprints are of the text scored now: a stored one is not kept)."""
    digest = hashlib.sha256()
    for i, batch in enumerate(rows.dataset.select_columns(["fingerprint"]).iter(batch_size=10_000)):
        digest.update(("\n" if i else "").encode() + "\n".join(batch["fingerprint"]).encode("utf-8"))
    digest.update(f"\n{rows.n_rows_in}".encode())
    return digest.hexdigest()[:16]


def _score_model(
    model: AlignedModel, work: EncodedShare, output: Path, config: ScoreConfig, run: _Settings, state
) -> dict[str, dict]:
    """Score this process's share with one model, and with --uncond its prompt-free renders too (shards
    `<alias>@uncond`, the weights loaded once), skipping rows the shards already hold; per pass this run's
    {"rows", "tokens", "seconds"} (the seconds include encoding)."""
    key = _encoding_key(model, config.max_length)
    passes = {model.alias: key, **({uncond_alias(model.alias): _uncond_key(key)} if config.uncond else {})}
    done = {alias: finished_mask(output, alias, len(work.rows.dataset)) for alias in passes}
    state.wait_for_everyone()  # every process has read the finished set before anyone writes new shards
    stats, network = {}, None
    for alias, pass_key in passes.items():
        if done[alias].any():
            n_done = int(done[alias].sum())
            say(f"{alias}: resuming, {n_done} rows already scored, {len(done[alias]) - n_done} to go")
        stats[alias] = {"rows": 0, "tokens": 0, "seconds": work.seconds.pop(pass_key, 0.0)}
        if not done[alias][work.share].all():
            network = network if network is not None else load_weights(model, run.dtype, run.device)
            scored = _score_share(
                dataclasses.replace(model, alias=alias),
                network,
                work.encodings[pass_key],
                work.share,
                output,
                done[alias],
                config,
                run,
                rank=state.process_index,
                progress=config.progress and state.is_main_process,
            )
            stats[alias] = {**scored, "seconds": scored["seconds"] + stats[alias]["seconds"]}
        work.users[pass_key] -= 1
        if not work.users[pass_key]:
            work.encodings.pop(pass_key).remove()  # its last model is scored
    if config.uncond:
        stats[uncond_alias(model.alias)]["response_differs"] = int(work.differs[_uncond_key(key)].sum())
    del network
    return stats


def _write_scored_dataset(
    output: Path,
    rows: SFTRows,
    aligned: list[AlignedModel],
    identity: dict,
    stats: list[dict],
    config: ScoreConfig,
) -> None:
    """The main process merges every model's shards into the scored dataset and writes the manifest (with
    `uncond`, the prompt-free scores too: `shards.finalize`)."""
    run = {
        "dataset": {
            "source": rows.source,
            "n_rows_in": rows.n_rows_in,
            "fingerprint": identity["dataset_fingerprint"],
        },
        "settings": {key: identity[key] for key in ("max_length", "dtype", "batching") if key in identity},
        "bad_rows": rows.bad,
    }
    finalize(
        output,
        rows.dataset,
        response_bytes=_response_bytes(rows.dataset),
        models=[m.manifest_entry() for m in aligned],
        run=run,
        stats=stats,
        normalization=config.normalization,
        uncond=config.uncond,
    )


def _response_bytes(dataset: Dataset) -> np.ndarray:
    """`chat.response_bytes` of every row, a batch of conversations at a time."""
    sizes = array("q")
    for batch in dataset.select_columns(["messages"]).iter(batch_size=1024):
        sizes.extend(response_bytes(messages) for messages in batch["messages"])
    return np.frombuffer(sizes, dtype=np.int64)


# ---- encoding ----------------------------------------------------------------------------------------------


def _encoding_key(model: AlignedModel, max_length: int | None) -> tuple:
    """Models with equal keys encode every row identically (tokenizer, template, special tokens, truncation)."""
    tokens = repr(model.chat.tokenizer.special_tokens_map)
    return (model.tokenizer_hash, model.template_hash, tokens, max_length)


def _encode_rows(
    chat: ChatFormat, dataset: Dataset, rows: np.ndarray, max_length: int | None, chunk: int = 1024
) -> tuple[EncodedRows, dict[int, str]]:
    """Encode the conversations of `rows` (positions in `dataset`) under one chat format, `chunk` rows per
    tokenizer call, into an `EncodedRows` (one entry per row of `rows`, in order; an empty one for a row that
    cannot be encoded) and the problem of each such row (`ChatFormat.encode_many`), by position."""
    encoded = EncodedRows()
    problems: dict[int, str] = {}
    conversations = dataset.select_columns(["messages"])
    if len(rows) < len(dataset):
        conversations = conversations.select(rows)
    for start, batch in zip(range(0, len(rows), chunk), conversations.iter(batch_size=chunk), strict=True):
        part = chat.encode_many(batch["messages"], max_length)
        for row, enc in zip(rows[start : start + chunk].tolist(), part, strict=True):
            if isinstance(enc, ChatTemplateError):
                problems[row] = str(enc)
                encoded.append([], [], False)
                continue
            encoded.append(enc.input_ids, enc.response_mask, enc.truncated)
    return encoded.close(), problems


# ---- --uncond: the prompt-free render's encodings (unconditional.py) ----------------------------------------


def _uncond_key(key: tuple) -> tuple:
    """The encoding key of the prompt-free renders matched to the encodings of `key`."""
    return (*key, "uncond")


def _encode_uncond_rows(
    chat: ChatFormat, dataset: Dataset, rows: np.ndarray, conditional: EncodedRows, chunk: int = 1024
) -> tuple[EncodedRows, dict[int, str], np.ndarray]:
    """The prompt-free encodings of `rows` (as `_encode_rows`), each cut to the response tokens its
    conditional encoding in `conditional` kept (`unconditional.matched`); the problem of each row whose
    prompt-free render the template refuses; and, per row, whether its response tokens differ from the
    conditional render's."""
    encoded, problems, differs = EncodedRows(name="uncond"), {}, np.zeros(len(rows), dtype=bool)
    conversations = dataset.select_columns(["messages"])
    if len(rows) < len(dataset):
        conversations = conversations.select(rows)
    for start, batch in zip(range(0, len(rows), chunk), conversations.iter(batch_size=chunk), strict=True):
        positions = range(start, min(start + chunk, len(rows)))
        cond = [conditional.get(i) if conditional.lengths[i] else None for i in positions]
        for i, enc in zip(positions, encode_prompt_free(chat, batch["messages"], cond), strict=True):
            if isinstance(enc, ChatTemplateError):
                problems[int(rows[i])] = str(enc)
                encoded.append([], [], False)
                continue
            ids, mask, cut, same = enc
            encoded.append(ids, mask, cut)
            differs[i] = not same
    return encoded.close(), problems, differs


def _leave_out(rows: SFTRows, problems: dict[int, str], on_bad_row: str) -> tuple[SFTRows, np.ndarray]:
    """Refuse, or leave out for every model, the rows some model's chat template cannot encode (a message
    dropped, moved or rewritten, a template error, two BOS tokens), before anything is scored, so that every
    model scores the same rows. Skipped rows join the reader's bad rows (manifest `bad_rows`). Returns the
    rows kept and their indices in `rows`."""
    if not problems:
        return rows, np.arange(len(rows.dataset), dtype=np.int64)
    bad_at = sorted(problems)
    ids = rows.dataset.select(bad_at)["id"]
    bad = [
        BadRow(row=rows.where[i], id=row_id, problem=problems[i])
        for i, row_id in zip(bad_at, ids, strict=True)
    ]
    what = f"{rows.source}: {len(bad)} of {rows.n_rows_in} rows cannot be scored under the chat templates"
    if len(bad) == len(rows.dataset) and on_bad_row == "skip":
        refuse_or_skip(bad, f"{what} (none can)", "error", ValueError, hint="check the templates")
    refuse_or_skip(bad, what, on_bad_row, ChatTemplateError)
    kept = np.setdiff1d(np.arange(len(rows.dataset), dtype=np.int64), np.asarray(bad_at, dtype=np.int64))
    kept_rows = dataclasses.replace(
        rows,
        dataset=rows.dataset.select(kept),
        bad=input_order([*rows.bad, *bad]),
        where=rows.where.select(kept),
    )
    return kept_rows, kept


# ---- scoring one model -------------------------------------------------------------------------------------


class _ShardBuffer:
    """Finished rows of one model, written as a shard every `rows_per_shard` rows or `flush_seconds`
    (always after whole batches), so that a kill loses at most that much work."""

    def __init__(self, output: Path, alias: str, rank: int, rows_per_shard: int, flush_seconds: float):
        self.output, self.alias, self.rank = output, alias, rank
        self.rows_per_shard, self.flush_seconds = rows_per_shard, flush_seconds
        self.rows, self.sums, self.counts, self.truncated = [], [], [], []
        self.tokens, self.last_flush = 0, time.perf_counter()

    def add(self, rows: list[int], sums: list[float], counts: list[int], truncated: list[bool], tokens: int):
        self.rows += rows
        self.sums += sums
        self.counts += counts
        self.truncated += truncated
        self.tokens += tokens
        if (
            len(self.rows) >= self.rows_per_shard
            or time.perf_counter() - self.last_flush >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        now = time.perf_counter()
        write_shard(
            self.output,
            self.alias,
            self.rows,
            self.sums,
            self.counts,
            self.truncated,
            tokens=self.tokens,
            seconds=now - self.last_flush,
            rank=self.rank,
        )
        self.rows, self.sums, self.counts, self.truncated = [], [], [], []
        self.tokens, self.last_flush = 0, now


def _score_share(
    model: AlignedModel,
    network: torch.nn.Module,
    encoded: EncodedRows,
    rows: np.ndarray,
    output: Path,
    done: np.ndarray,
    config: ScoreConfig,
    run: _Settings,
    *,
    rank: int,
    progress: bool,
) -> dict:
    """Score `rows` (whose encodings are `encoded`, in that order) with one model, except the rows `done`
    marks. Batches are formed over all of `rows`, so a resume re-forms the same batches and skips the
    finished ones. The bar counts tokens (the work; the longest rows come first, so rows would misjudge the
    time left): it moves per batch, with tok/s, the rows done and the time left from the first batch on."""
    from tqdm.auto import tqdm

    _warn_beyond_context(model, network, encoded.lengths)
    chunk_size = scoring_chunk_size(network.get_output_embeddings().weight.shape[0])
    shards = _ShardBuffer(output, model.alias, rank, config.rows_per_shard, config.flush_seconds)
    lengths, todo = encoded.lengths, ~done[rows]
    tokens, scored, started = 0, 0, time.perf_counter()
    bar = tqdm(
        total=int(lengths[todo].sum()),
        unit="tok",
        unit_scale=True,
        desc=f"scoring {model.alias}",
        disable=not progress,
        dynamic_ncols=True,
    )
    with bar, torch.inference_mode():
        for batch in iter_packed_batches(lengths, batch_budget(lengths, run.batch_tokens)):
            batch = batch[todo[batch]]
            if not len(batch):
                continue
            sums, counts = packed_logprob_sums(
                network, [encoded.get(i) for i in batch.tolist()], chunk_size=chunk_size
            )
            n_tokens = int(lengths[batch].sum())
            shards.add(
                rows[batch].tolist(),
                sums.tolist(),
                counts.tolist(),
                encoded.truncated[batch].tolist(),
                n_tokens,
            )
            tokens, scored = tokens + n_tokens, scored + len(batch)
            bar.set_postfix_str(f"{scored}/{int(todo.sum())} rows", refresh=False)
            bar.update(n_tokens)
    shards.flush()
    return {"rows": int(todo.sum()), "tokens": tokens, "seconds": time.perf_counter() - started}


def _warn_beyond_context(model: AlignedModel, network: torch.nn.Module, lengths: np.ndarray) -> None:
    context = getattr(network.config, "max_position_embeddings", None)
    longest = int(lengths.max()) if len(lengths) else 0
    if context is not None and longest > context:
        say(
            f"warning: {model.alias}: rows of up to {longest} tokens exceed the model's context of {context}; "
            f"pass --max-length {context} to truncate them instead"
        )


# ---- processes ---------------------------------------------------------------------------------------------


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


class PeerLostError(RuntimeError):
    """Another process of a multi-process run ended (its node lost or killed) while this one worked."""


# What gloo says at the next collective when the process at the other end has gone
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


@contextmanager
def _peer_lost_is_said(output: Path, state):
    """A process whose peer died says what is kept and how to go on (one line, `PeerLostError`), instead of
    an internal error. Processes meet only to share bad rows, once the run's identity is written, before each
    model and at the end, so when a node dies the others first finish the share of the model they are
    scoring (their shards are kept)."""
    try:
        yield
    except RuntimeError as e:
        if state.num_processes == 1 or not any(text in str(e) for text in _PEER_GONE):
            raise
        raise PeerLostError(
            f"another process of this run ended (killed, or its node lost: see its log); the finished shards "
            f"in {output} are kept: run the same command again on every node to resume"
        ) from e


def _check_folder_is_shared(output: Path, state) -> None:
    """Every process must see what the main process writes in `output` (its shards are merged there): on
    several machines, a folder on each node's own disk would leave the others' rows unscored at the end."""
    if state.num_processes == 1:
        return
    state.wait_for_everyone()  # the main process has written the run's identity
    if not (output / CONFIG_FILE).exists():
        raise ValueError(
            f"{output}: process {state.process_index} does not see the files the main process wrote there; on "
            "several machines the output folder must be on a filesystem every node sees, at the same path "
            "(docs/scale-out.md)"
        )


def _gather_problems(problems: dict[int, str], state) -> dict[int, str]:
    """Every process's bad rows (each process encoded its own share of the rows), on every process."""
    if state.num_processes == 1:
        return problems
    from accelerate.utils import gather_object

    return {row: problem for part in gather_object([problems]) for row, problem in part.items()}


def _gather(stats: dict, state) -> list[dict]:
    """Every process's stats, in process order (on every process)."""
    if state.num_processes == 1:
        return [stats]
    from accelerate.utils import gather_object

    return gather_object([stats])
