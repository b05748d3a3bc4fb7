"""SFT rows (as `readers.py` reads them) -> training rows for PoFT: tokens, response labels, reference scores.

Every row that reaches the loss has at least one response token and a finite reference score; rows that
do not are dropped with one printed line saying how many and why (or, with on_bad_row="error", the run
stops naming the rows). Columns produced for the trainer:

    input_ids, labels          (labels = -100 outside response tokens, TRL's convention)
    poft_ref_score             r_ref, float
    poft_direction             +1 / -1 (bi-PoFT; +1 when the row has no label)
    poft_response_bytes        UTF-8 bytes of the assistant contents (for normalization="byte")
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from .chat import ChatFormat, RowError

FINGERPRINT_COLUMN = "fingerprint"
SCORE_COLUMNS = ("poft_ref_score", "poft_direction", "poft_response_bytes")


def _direction(value: object) -> int:
    """+1 / -1 from a KTO-style label (True = desirable); None counts as +1."""
    if value is None:
        return 1
    if isinstance(value, bool):
        return 1 if value else -1
    if isinstance(value, (int, float)) and value in (1, -1, 0):
        return 1 if value == 1 else -1
    raise RowError(f"label is {value!r}; expected true/false (or +1/-1)")


def row_fingerprint(messages: Sequence[dict]) -> str:
    """Stable hash of a conversation's roles and contents (32 hex chars); other message keys are ignored.

    `poft score` stores it per row; the trainer recomputes it from the text it trains on, so scores can
    never be joined to an edited, re-ordered or different conversation.
    """
    canonical = json.dumps(
        [[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def _encode_row(
    row: dict,
    index: int,
    chat: ChatFormat,
    max_length: int | None,
    ref_score_column: str | None,
    direction_column: str | None,
    check_fingerprint: bool = False,
) -> dict:
    out = {"input_ids": [], "labels": [], "poft_problem": "", "poft_truncated": False, "poft_stale": False}
    out.update(poft_ref_score=float("nan"), poft_direction=1, poft_response_bytes=0)
    try:
        encoded = chat.encode(row.get("messages"), max_length)
        if direction_column is not None:
            out["poft_direction"] = _direction(row.get(direction_column))
    except RowError as e:
        out["poft_problem"] = f"bad conversation ({e})"
        return out
    out["poft_stale"] = check_fingerprint and row.get(FINGERPRINT_COLUMN) != row_fingerprint(row["messages"])
    out["input_ids"] = encoded.input_ids
    out["labels"] = [t if m else -100 for t, m in zip(encoded.input_ids, encoded.response_mask, strict=True)]
    out["poft_truncated"] = encoded.truncated
    out["poft_response_bytes"] = encoded.response_bytes
    # The model predicts token t from position t-1, so the first token can never be a trained label
    if not any(encoded.response_mask[1:]):
        out["poft_problem"] = f"no response token after truncation to max_length={max_length}"
        return out
    if ref_score_column is not None:
        score = row.get(ref_score_column)
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            out["poft_problem"] = f"missing or non-finite {ref_score_column}"
            return out
        out["poft_ref_score"] = float(score)
    return out


def prepare_training_dataset(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int | None,
    ref_score_column: str | None,
    direction_column: str | None,
    on_bad_row: str = "skip",
    dataset_name: str = "train",
    num_proc: int | None = None,
    model_name: str = "target model",
) -> Dataset:
    """Tokenise conversations under the target's template, attach scores, drop (or refuse) bad rows.

    ref_score_column=None means scores are not needed (SFT). direction_column=None means all rows +1.
    """
    if "messages" not in dataset.column_names:
        raise ValueError(
            f"{dataset_name} dataset: no `messages` column (columns: {dataset.column_names}); "
            "PoFT trains on conversations of {role, content} messages"
        )
    if ref_score_column is not None and ref_score_column not in dataset.column_names:
        raise ValueError(
            f"{dataset_name} dataset: no {ref_score_column!r} column with reference scores "
            f"(columns: {dataset.column_names}); run `poft score` first, or train with loss_type='sft'"
        )
    if direction_column is not None and direction_column not in dataset.column_names:
        print(
            f"poft: {dataset_name} dataset has no {direction_column!r} column: every row counts as desirable"
        )
        direction_column = None
    chat = ChatFormat.from_tokenizer(tokenizer, model_name)
    encoded = dataset.map(
        _encode_row,
        with_indices=True,
        fn_kwargs={
            "chat": chat,
            "max_length": max_length,
            "ref_score_column": ref_score_column,
            "direction_column": direction_column,
            "check_fingerprint": ref_score_column is not None and FINGERPRINT_COLUMN in dataset.column_names,
        },
        num_proc=num_proc,
        desc=f"Encoding {dataset_name} conversations under the target's chat template",
    )
    _refuse_stale_scores(encoded, dataset, dataset_name)
    problems = encoded["poft_problem"]
    bad = [i for i, p in enumerate(problems) if p]
    if bad and on_bad_row == "error":
        ids = dataset[bad[:5]]
        named = [f"row {i} (id={_row_id(ids, k)}): {problems[i]}" for k, i in enumerate(bad[:5])]
        raise ValueError(
            f"{dataset_name} dataset: {len(bad)} of {len(problems)} rows cannot be trained on: "
            + "; ".join(named)
            + ("; ..." if len(bad) > 5 else "")
            + " (set on_bad_row='skip' to drop them)"
        )
    if bad:
        reasons = Counter(problems[i].split(" (")[0] for i in bad)
        detail = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
        print(f"poft: dropped {len(bad)} of {len(problems)} rows from the {dataset_name} dataset: {detail}")
        encoded = encoded.filter(lambda p: not p, input_columns="poft_problem")
    n_truncated = sum(encoded["poft_truncated"])
    if n_truncated:
        print(f"poft: {n_truncated} {dataset_name} rows were truncated to max_length={max_length}")
    return encoded.remove_columns(["poft_problem", "poft_truncated", "poft_stale"])


def _refuse_stale_scores(encoded: Dataset, dataset: Dataset, dataset_name: str) -> None:
    """Stop when a row's text differs from the text `poft score` scored (its stored fingerprint)."""
    stale = [i for i, flag in enumerate(encoded["poft_stale"]) if flag]
    if not stale:
        return
    rows = dataset[stale[:5]]
    named = ", ".join(f"row {i} (id={_row_id(rows, k)})" for k, i in enumerate(stale[:5]))
    raise ValueError(
        f"{dataset_name} dataset: {len(stale)} of {len(encoded)} rows no longer match the conversation that was "
        f"scored (their `{FINGERPRINT_COLUMN}` differs from the text's): {named}{', ...' if len(stale) > 5 else ''}. "
        "The data was edited, re-ordered or joined to the wrong scores after `poft score`; re-score it."
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

    def spread(row: dict) -> dict:
        n = len(row["input_ids"])
        return {key: [row[key]] * n for key in SCORE_COLUMNS}

    dataset = dataset.select_columns(["input_ids", "labels", *SCORE_COLUMNS])
    return dataset.map(spread, num_proc=num_proc, desc="Attaching PoFT scores to tokens")


def scores_per_sequence(example: dict, key: str) -> list[float]:
    """The per-sequence values of a score column: one value, or one per packed sequence when spread."""
    values = example[key]
    if not isinstance(values, list):
        return [values]
    lengths = example.get("seq_lengths", [len(values)])
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    return [values[start] for start in starts]


def _row_id(rows: dict, k: int) -> object:
    for key in ("id", "prompt_id"):
        if key in rows:
            return rows[key][k]
    return None
