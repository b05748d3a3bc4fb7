"""The prompt-free render: each row's response scored without its prompt, for PMI and IFD (`pointwise`).

A right answer to the wrong prompt is fluent, so its likelihood alone does not show that it does not answer
the prompt; how much the prompt raises it does. `poft score --uncond` therefore also scores each row's
response tokens in a render of the same conversation with the prompt taken away:

    every system message removed; every other non-assistant message (user, tool) kept with empty content;
    assistant messages unchanged.

Why this render, and not "the assistant turns alone" or "the answer after one empty user turn":
- it is well-defined under every template that renders the conversation itself: the role sequence is the
  conversation's own (a system message is optional under every template poft ships), so templates that
  require alternation or a first user turn (Gemma, Mistral) render it as they render the original, where
  the assistant turns alone would be refused by them;
- every assistant turn is kept, in order, so the tokens scored are the same response tokens as in the
  conditional render (multi-turn rows included); later answers still see earlier answers, as the
  conditional render's do, but no prompt text;
- what the template adds by itself stays: role headers, BOS, and a default system prompt (Qwen2.5 writes
  "You are Qwen..." when there is no system message). That is the template's empty context, the same for
  every row, so it shifts every row's unconditional score alike.

The response tokens are the same as in the conditional render wherever the template renders an assistant
turn the same after an empty user turn (every template poft ships: the turn starts with a role header,
after a special token). Two cases are handled explicitly: a conditional render truncated by `max_length`
keeps its first k response tokens, so the prompt-free render is cut right after its own k-th response token
(its own render is never truncated otherwise: it is shorter); and a template that renders the response
tokens differently (a token merged across the boundary of the turn) is scored as it renders them, and the
row is counted in the manifest (`unconditional.response_differs`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .chat import ChatFormat, ChatTemplateError

UNCOND_SUFFIX = "@uncond"  # shards of a model's prompt-free scores: shards/<alias>@uncond/
RENDER = "prompt_free: system messages removed, user/tool contents emptied, assistant turns kept"


def uncond_alias(alias: str) -> str:
    """The shard folder name of one model's prompt-free scores."""
    return alias + UNCOND_SUFFIX


def uncond_clashes(aliases: Sequence[str]) -> list[str]:
    """Aliases that another model's prompt-free columns or shards would overwrite: `x_uncond` beside `x`
    (column `x_uncond_logp_sum`), or any alias ending in `@uncond` (a shard folder)."""
    return sorted(
        a
        for a in aliases
        if a.endswith(UNCOND_SUFFIX) or (a.endswith("_uncond") and a[: -len("_uncond")] in aliases)
    )


def prompt_free(messages: list[dict]) -> list[dict]:
    """The conversation without its prompt: system messages removed, other non-assistant contents emptied."""
    return [
        message if message["role"] == "assistant" else {**message, "content": ""}
        for message in messages
        if message["role"] != "system"
    ]


def matched(
    cond_ids: np.ndarray, cond_mask: np.ndarray, ids: list[int], mask: list[int]
) -> tuple[list[int], list[int], bool, bool]:
    """The prompt-free encoding (`ids`, `mask`) cut to as many response tokens as the conditional one kept:
    (ids, mask, cut, same), `same` when its response tokens are exactly the conditional's."""
    kept = int(np.count_nonzero(cond_mask))
    positions = np.flatnonzero(np.asarray(mask, dtype=np.uint8))
    cut = len(positions) > kept
    if cut:
        end = int(positions[kept]) if kept else 0
        ids, mask = ids[:end], mask[:end]
    same = np.array_equal(
        np.asarray(cond_ids)[np.asarray(cond_mask, dtype=bool)],
        np.asarray(ids)[np.asarray(mask, dtype=bool)],
    )
    return ids, mask, cut, bool(same)


def encode_prompt_free(
    chat: ChatFormat, conversations: Sequence[list[dict]], conditional: Sequence[tuple | None]
) -> list[tuple[list[int], list[int], bool, bool] | ChatTemplateError]:
    """`matched` prompt-free encodings of `conversations`, each against its conditional encoding (ids,
    mask; None for a row that could not be encoded: it gets an empty encoding). A row whose prompt-free
    render the template refuses gets its ChatTemplateError, saying so."""
    renders = chat.encode_many([prompt_free(m) for m in conversations], max_length=None)
    out: list[tuple[list[int], list[int], bool, bool] | ChatTemplateError] = []
    for encoded, cond in zip(renders, conditional, strict=True):
        if isinstance(encoded, ChatTemplateError):
            out.append(ChatTemplateError(f"{encoded} (in the prompt-free render of --uncond)"))
        elif cond is None:
            out.append(([], [], False, True))
        else:
            out.append(matched(cond[0], cond[1], encoded.input_ids, encoded.response_mask))
    return out
