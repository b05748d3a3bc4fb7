"""SFT rows (as `readers.py` reads them) -> training rows for PoFT: tokens, response labels, reference scores.

Every row that reaches the loss has at least one response token and a finite reference score; rows that
do not are dropped with one printed line saying how many and why (or, with on_bad_row="error", the run
stops naming the rows). Columns produced for the trainer:

    input_ids, labels          (labels = -100 outside response tokens, TRL's convention)
    poft_ref_score             r_ref, float
    poft_direction             +1 / -1 (bi-PoFT; +1 when the row has no label)
    poft_response_bytes        UTF-8 bytes of the assistant contents (for normalization="byte")
    poft_row                   the row's position in the rows read (names the rows of a failing step)

Scores written by `poft score` carry how they were made (`score_provenance`: models, normalisation, max
length): training refuses another normalisation than its own and a mix of scoring runs, and warns with a count
when it cuts rows at another length than the scorer did (either way). Each scored row's stored `fingerprint`
ties its scores to its text: a row whose text changed is refused, and so is a row whose fingerprint is null or
empty unless the user says its scores come from elsewhere (`scores_without_fingerprint`). Scores from elsewhere
(no fingerprint column) train, with one line saying so.
"""

from __future__ import annotations

import functools
import json
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from .arrow_rows import arrow_column
from .chat import ChatFormat, ChatTemplateError
from .console import BadRow, input_order, name_bad_rows, refuse_or_skip, say
from .readers import FINGERPRINT_COLUMN, RowError, SFTRows, fingerprint, parse_label, read_sft

SCORE_COLUMNS = ("poft_ref_score", "poft_direction", "poft_response_bytes")
ROW_COLUMN = "poft_row"  # optional in pre-tokenised rows
SEQUENCE_COLUMNS = (*SCORE_COLUMNS, ROW_COLUMN)  # one value per sequence, carried through packing
PROVENANCE_COLUMN = "score_provenance"  # shards.PROVENANCE_COLUMN, written by `poft score`
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max; the one bound for scores and beta/gamma


def prepare_training_dataset(
    dataset: Dataset | SFTRows,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int | None,
    ref_score_column: str | None,
    direction_column: str | None,
    on_bad_row: str = "skip",
    dataset_name: str = "train",
    num_proc: int | None = None,
    model_name: str = "target model",
    score_normalization: str | None = None,
    scores_without_fingerprint: bool = False,
) -> Dataset:
    """Tokenise conversations under the target's template, attach scores, drop (or refuse) bad rows.

    `dataset` is what `readers.read_sft` returned (`poft train` reads the file once, there), or a Dataset in
    any SFT format, which is read here. Rows the reader could not read and rows that cannot be trained on
    (the target's chat template drops, moves or rewrites a message, no response token after truncation, no
    finite score, a bad label) are dropped with one printed line saying how many and why, or, with
    on_bad_row="error", refused in one error naming them.
    ref_score_column=None means scores are not needed (SFT). direction_column=None means all rows +1.
    score_normalization: how training normalises r_theta; scores made by `poft score` with another one are
    refused (`score_provenance`).
    scores_without_fingerprint: accept scored rows whose stored fingerprint is null or empty (scores from
    elsewhere); by default they are refused, since nothing ties their scores to their text.
    """
    name = f"{dataset_name} dataset"
    rows = dataset
    if not isinstance(rows, SFTRows):
        rows = read_sft(dataset, on_bad_row="skip", name=name, report=False)
    _check_columns(rows.dataset, name, ref_score_column, direction_column)
    provenance = None
    if ref_score_column is not None:
        provenance = _score_provenance(rows.dataset, rows, name, score_normalization)
        _check_fingerprints(rows, name, ref_score_column, scores_without_fingerprint)
    encoded = rows.dataset.map(
        _encode_row,
        with_indices=True,
        fn_kwargs={
            "chat": ChatFormat.from_tokenizer(tokenizer, model_name),
            "max_length": max_length,
            "ref_score_column": ref_score_column,
            "direction_column": direction_column,
            "check_fingerprint": ref_score_column is not None,
        },
        num_proc=num_proc,
        desc=f"Encoding {dataset_name} conversations under the target's chat template",
    )
    _refuse_stale_scores(encoded, rows, name)
    encoded = _leave_out_bad_rows(encoded, rows, name, on_bad_row)
    _say_truncated(encoded, dataset_name, max_length)
    if provenance:
        _warn_max_length_mismatch(encoded, dataset_name, max_length, provenance)
    return encoded.remove_columns(["poft_problem", "poft_truncated", "poft_stale"])


def _check_columns(
    data: Dataset, name: str, ref_score_column: str | None, direction_column: str | None
) -> None:
    """Refuse data without the score column PoFT needs, or the label column bi-PoFT needs."""
    if ref_score_column is not None and ref_score_column not in data.column_names:
        raise ValueError(
            f"{name}: no {ref_score_column!r} column with reference scores "
            f"(columns: {data.column_names}); run `poft score` first, or train with objective='sft'"
        )
    if direction_column is not None and direction_column not in data.column_names:
        raise ValueError(
            f"{name}: bi-PoFT needs a {direction_column!r} column (true = desirable, false = undesirable); "
            f"columns: {data.column_names}. Add it, name another one with direction_column, or train with "
            "objective='poft'"
        )


def _encode_row(
    row: dict,
    index: int,
    chat: ChatFormat,
    max_length: int | None,
    ref_score_column: str | None,
    direction_column: str | None,
    check_fingerprint: bool = False,
) -> dict:
    """One row -> its training columns; `poft_problem` says why it cannot be trained on ("" when it can)."""
    out = {"input_ids": [], "labels": [], "poft_problem": "", "poft_truncated": False, "poft_stale": False}
    out.update(poft_ref_score=float("nan"), poft_direction=1, poft_response_bytes=0, poft_row=index)
    if direction_column is not None:
        try:
            label = parse_label(row.get(direction_column), direction_column)
        except RowError as e:
            return {**out, "poft_problem": f"bad label ({e})"}
        out["poft_direction"] = -1 if label is False else 1
    try:
        encoded = chat.encode(row["messages"], max_length)
    except ChatTemplateError as e:  # this row only: the template dropped, moved or rewrote a message
        return {**out, "poft_problem": f"the chat template refused it ({e})"}
    stored = row[FINGERPRINT_COLUMN]  # "" when missing: refused or accepted before (`_check_fingerprints`)
    out["poft_stale"] = check_fingerprint and bool(stored) and stored != fingerprint(row["messages"])
    out["input_ids"] = encoded.input_ids
    out["labels"] = [t if m else -100 for t, m in zip(encoded.input_ids, encoded.response_mask, strict=True)]
    out["poft_truncated"] = encoded.truncated
    out["poft_response_bytes"] = encoded.response_bytes
    # The model predicts token t from position t-1, so the first token can never be a trained label
    if not any(encoded.response_mask[1:]):
        return {**out, "poft_problem": f"no response token after truncation to max_length={max_length}"}
    if ref_score_column is not None:
        score = row.get(ref_score_column)
        out["poft_problem"] = _score_problem(score, ref_score_column)
        out["poft_ref_score"] = float("nan") if out["poft_problem"] else float(score)
    return out


def _score_problem(score: object, column: str) -> str:
    """Why a reference score cannot be trained with ("" when it can)."""
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        return f"missing or non-finite {column}"
    if abs(score) > FLOAT32_MAX:  # finite in float64, infinite in the float32 loss
        return f"{column} beyond float32 range ({score:g})"
    return ""


def _leave_out_bad_rows(encoded: Dataset, rows: SFTRows, name: str, on_bad_row: str) -> Dataset:
    """Refuse, or drop with one line, the rows the reader left out and the rows that cannot be trained on,
    named together in input order with a count per reason."""
    problems = encoded["poft_problem"]
    untrainable = [i for i, problem in enumerate(problems) if problem]
    ids = rows.dataset.select(untrainable)["id"] if untrainable else []
    bad = [BadRow(row=b["row"], id=b["id"], problem=f"bad conversation ({b['problem']})") for b in rows.bad]
    bad += [
        BadRow(row=rows.where[i], id=row_id, problem=problems[i])
        for i, row_id in zip(untrainable, ids, strict=True)
    ]
    if not bad:
        return encoded
    reasons = Counter(b["problem"].split(" (")[0] for b in bad)
    detail = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
    label = name if rows.source == name else f"{name} ({rows.source})"
    what = f"{label}: {len(bad)} of {rows.n_rows_in} rows cannot be trained on ({detail})"
    refuse_or_skip(input_order(bad), what, on_bad_row, ValueError, hint="set on_bad_row='skip' to drop them")
    return encoded.filter(lambda problem: not problem, input_columns="poft_problem")


def _say_truncated(encoded: Dataset, dataset_name: str, max_length: int | None) -> None:
    """Say how many rows training truncates."""
    n_truncated = sum(encoded["poft_truncated"])
    if n_truncated:
        say(f"{n_truncated} {dataset_name} rows were truncated to max_length={max_length}")


def _warn_max_length_mismatch(
    encoded: Dataset, dataset_name: str, max_length: int | None, provenance: dict
) -> None:
    """Warn, with a count, when training and scoring cut rows at different lengths, in either direction:
    such a row's r_theta and r_ref are then sums over different response tokens."""
    scorer_max = provenance.get("max_length")
    if scorer_max == max_length:
        return
    if scorer_max is None or (max_length is not None and scorer_max > max_length):
        n_rows = sum(encoded["poft_truncated"])  # cut by training, seen whole (or less cut) by the scorer
        scored = "whole" if scorer_max is None else f"up to {scorer_max} tokens"
        if n_rows:
            say(
                f"warning: {n_rows} {dataset_name} rows are cut at max_length={max_length} in training but "
                f"were scored {scored}: their r_theta covers fewer response tokens than their r_ref (score "
                "with the same --max-length to compare like with like)"
            )
        return
    n_rows = _scored_truncated(encoded, provenance, scorer_max)  # cut by the scorer, longer in training
    if n_rows:
        trained = "whole" if max_length is None else f"up to max_length={max_length} tokens"
        say(
            f"warning: {n_rows} {dataset_name} rows were cut at {scorer_max} tokens when scored (`poft score "
            f"--max-length {scorer_max}`) but are trained {trained}: their r_ref covers fewer response tokens "
            f"than their r_theta (train with --max_length {scorer_max}, or re-score with the same --max-length)"
        )


def _scored_truncated(encoded: Dataset, provenance: dict, scorer_max: int) -> int:
    """How many rows the scorer truncated: those with a true `<alias>_truncated` for any aligned model, or,
    where those columns were dropped, those longer than `scorer_max` under the target's tokenizer."""
    columns = [f"{alias}_truncated" for alias in provenance.get("models", {})]
    columns = [c for c in columns if c in encoded.column_names]
    if not columns:
        lengths = pc.list_value_length(arrow_column(encoded, "input_ids"))
        return int(pc.sum(pc.greater(lengths, scorer_max)).as_py() or 0)
    flags = [pc.fill_null(arrow_column(encoded, c), False) for c in columns]
    return int(pc.sum(functools.reduce(pc.or_, flags)).as_py() or 0)


def _first_index(values: pa.ChunkedArray, value: object) -> int:
    """The position of the first row holding `value` (None: the first null)."""
    where = pc.is_null(values) if value is None else pc.equal(values, value)
    return pc.index(pc.fill_null(where, False), True).as_py()


def _score_provenance(data: Dataset, rows: SFTRows, name: str, normalization: str | None) -> dict | None:
    """How the scores were made (one run), or None (not from `poft score`: said once). Refuses a mix of
    scoring runs and a normalisation other than training's."""
    if PROVENANCE_COLUMN not in data.column_names:
        say(
            f"{name}: no {PROVENANCE_COLUMN!r} column (scores not written by `poft score`): how they were made "
            "(models, normalisation, max length) cannot be checked"
        )
        return None
    values = arrow_column(data, PROVENANCE_COLUMN)
    counts = pc.value_counts(values).to_pylist()  # [{"values": run, "counts": rows}] (one per scoring run)
    runs = Counter({c["values"]: c["counts"] for c in counts})
    if len(runs) > 1:
        first = {v: rows.where[_first_index(values, v)] for v in runs}
        detail = "; ".join(f"{n} rows from {first[v]} on: {v}" for v, n in runs.most_common(3))
        raise ValueError(
            f"{name}: the reference scores come from {len(runs)} different `poft score` runs ({detail}); "
            "scores of different models or settings are not on one scale: score all rows in one run"
        )
    try:
        record = json.loads(values[0].as_py()) if len(values) else {}
    except (TypeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"{name}: the {PROVENANCE_COLUMN!r} column is not what `poft score` writes: {e}"
        ) from e
    made = record.get("normalization")
    if normalization is not None and made is not None and made != normalization:
        raise ValueError(
            f"{name}: the reference scores were made with normalization={made!r} and training normalises "
            f"r_theta with score_normalization={normalization!r}; set score_normalization: {made} (or "
            f"re-score with --normalization {normalization})"
        )
    return record


def _check_fingerprints(rows: SFTRows, name: str, score_column: str, accepted: bool) -> None:
    """Refuse scored rows whose stored `fingerprint` is null or empty, naming them: nothing ties their scores to
    their text, so the stale-score check cannot see an edited row or another row's scores. With `accepted`
    (the user says the scores come from elsewhere) say once how many rows train so."""
    stored = pc.fill_null(arrow_column(rows.dataset, FINGERPRINT_COLUMN), "")
    scored = pc.is_valid(arrow_column(rows.dataset, score_column))
    missing = np.flatnonzero(pc.and_(pc.equal(stored, ""), scored).to_numpy(zero_copy_only=False)).tolist()
    if not missing:
        return
    label = name if rows.source == name else f"{name} ({rows.source})"
    what = f"{len(missing)} of {len(rows.dataset)} rows with a {score_column} have no `{FINGERPRINT_COLUMN}`"
    if accepted:
        say(
            f"{label}: {what} (null or empty); accepted as scores from elsewhere (scores_without_fingerprint)"
        )
        return
    ids = rows.dataset.select(missing)["id"]
    bad = [
        BadRow(row=rows.where[i], id=row_id, problem=f"no {FINGERPRINT_COLUMN}")
        for i, row_id in zip(missing, ids, strict=True)
    ]
    raise ValueError(
        f"{label}: {what} (null or empty): {name_bad_rows(bad)}. Their scores cannot be tied to the text "
        "they were made from (an edited row, or a row given another row's scores, would train silently): "
        "re-score them with `poft score`, or pass --scores_without_fingerprint if these scores come from "
        "elsewhere"
    )


def _refuse_stale_scores(encoded: Dataset, rows: SFTRows, name: str) -> None:
    """Stop when a row's text differs from the text `poft score` scored (its stored fingerprint)."""
    stale = [i for i, flag in enumerate(encoded["poft_stale"]) if flag]
    if not stale:
        return
    ids = rows.dataset.select(stale)["id"]
    problem = f"its `{FINGERPRINT_COLUMN}` differs from the text's"
    bad = [
        BadRow(row=rows.where[i], id=row_id, problem=problem) for i, row_id in zip(stale, ids, strict=True)
    ]
    raise ValueError(
        f"{name}: {len(stale)} of {len(encoded)} rows no longer match the conversation that was scored: "
        f"{name_bad_rows(bad)}. The data was edited, re-ordered or joined to the wrong scores after "
        "`poft score`; re-score it."
    )


def pack_with_scores(
    dataset: Dataset, max_length: int, strategy: str, num_proc: int | None = None
) -> Dataset:
    """Pack tokenised PoFT rows (TRL's BFD packing) keeping each sequence's scores.

    TRL's packing keeps only list columns aligned with `input_ids`, so every score is first spread over its
    sequence's tokens; the collator reads it back at each sequence start (see `scores_per_sequence`).
    'wrapped' packing cuts sequences in the middle and is refused: a cut sequence has no single score.
    """
    from trl.data_utils import pack_dataset

    if strategy == "wrapped":
        raise ValueError(
            "packing_strategy='wrapped' cuts sequences apart; PoFT needs whole sequences ('bfd')"
        )
    spread = spread_scores_over_tokens(dataset, num_proc)
    return pack_dataset(spread, max_length, strategy, {"num_proc": num_proc})


def spread_scores_over_tokens(dataset: Dataset, num_proc: int | None = None) -> Dataset:
    """Replace each per-row score column by a list repeating it once per token (for padding-free rows)."""

    keys = [key for key in SEQUENCE_COLUMNS if key in dataset.column_names]

    def spread(row: dict) -> dict:
        n = len(row["input_ids"])
        return {key: [row[key]] * n for key in keys}

    dataset = dataset.select_columns(["input_ids", "labels", *keys])
    return dataset.map(spread, num_proc=num_proc, desc="Attaching PoFT scores to tokens")


def scores_per_sequence(example: dict, key: str) -> list[float]:
    """The per-sequence values of a score column: one value, or one per packed sequence when spread."""
    values = example[key]
    if not isinstance(values, list):
        return [values]
    lengths = example.get("seq_lengths", [len(values)])
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    return [values[start] for start in starts]
