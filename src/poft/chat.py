"""Conversations -> token ids + response mask, under any tokenizer's own chat template.

PoFT compares the target's score with the aligned models' scores, so every model must count exactly the
same thing: the response tokens. Here that means, for every assistant turn, its content plus the
end-of-turn text that closes it (`<|im_end|>`, `<|eot_id|>`, `</s>`...), so the model learns to stop.
System, user and template tokens never count (the official code averaged the target over the whole
conversation and never trained the end-of-turn token: PAPER.md, mistakes 1 and 2).

How response characters are found, for any template (no per-family token-id tables):
- the conversation is rendered once to text by the template;
- every message's content is then accounted for in that render, in order: each is searched from where
  the previous one ended (stripped first when the template trims contents), and each assistant content
  must be followed by the end-of-turn text (which makes the match unambiguous). Empty contents are not
  searched; text the template adds (a default system prompt, role headers) is allowed.
- a template that does not render every message verbatim in order is refused for that row, with a
  ChatTemplateError saying what it did: it dropped a message (Zephyr and Phi-3.5 drop `tool` messages;
  Mistral v0.3 drops the system prompt when the conversation ends with an answer), moved one (a
  mistral-common style template puts the system prompt into the last user turn) or rewrote one. Scoring
  such a row would score a different conversation, and searching on for text that is not there would mark
  a later, wrong span. Greedy in-order search finds an in-order placement whenever one exists, so a
  template that renders each message verbatim in order is never refused (a dropped message whose text
  happens to appear further on in the render, in order, goes unnoticed); the check is one pass of `find`
  over the render, and working out what the template did costs extra renders, on refused rows only.
- with `{% generation %}` markers, their character spans are used (extended over the end-of-turn text when
  the block stops just before it); the messages are still accounted for as above;
- the render is tokenised once with offsets; a token is a response token when it overlaps a span.
  (A token can straddle the start of a span, e.g. a newline merged across the template/content boundary;
  it is then a response token, so the first response token may also carry template characters.)
The end-of-turn text and whether the template trims contents are learnt once per tokenizer, by rendering
a sentinel assistant message. BOS appears exactly once: it is taken from the render when the template
writes it, added when the tokenizer normally adds it and the template does not, and a double BOS is an
error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase
from transformers.utils.chat_template_utils import render_jinja_template

_SENTINEL = "POFTSENTINEL7361"
_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot be used to locate response tokens."""


@dataclass(frozen=True)
class TokenizedChat:
    """One conversation encoded for a model.

    input_ids: the full rendered conversation (BOS exactly once), truncated to max_length.
    response_mask: 1 on response tokens (assistant contents + end-of-turn), 0 elsewhere; same length.
    truncated: whether tokens were cut by max_length.
    response_bytes: UTF-8 bytes of all assistant contents (the tokenizer-independent denominator).
    """

    input_ids: list[int]
    response_mask: list[int]
    truncated: bool
    response_bytes: int


@dataclass(frozen=True)
class ChatFormat:
    """What a tokenizer's chat template does, learnt once: end-of-turn text, markers, BOS handling."""

    tokenizer: PreTrainedTokenizerBase
    name: str
    end_of_turn: str
    uses_generation_markers: bool
    prepend_bos: bool
    trims_content: bool = False  # the template strips whitespace around contents (Llama-3's `| trim`)
    shapes: dict = field(
        default_factory=dict, compare=False, repr=False
    )  # `_shape_problem`, learnt per shape

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, name: str = "model") -> ChatFormat:
        template = tokenizer.chat_template
        if not isinstance(template, str) or not template:
            raise ChatTemplateError(
                f"{name}: the tokenizer has no chat template (a single string is needed; a base model has none): "
                "give one by name (gemma, llama3, chatml, mistral, zephyr, qwen2.5, phi3.5: poft.templates) or as a "
                ".jinja file: `--chat_template_path NAME` for poft train, `--chat_template ALIAS=NAME` for poft score"
            )
        if not tokenizer.is_fast:
            raise ChatTemplateError(
                f"{name}: a fast tokenizer is needed (character offsets locate responses)"
            )
        eot = _learn_end_of_turn(tokenizer, name)
        bos = tokenizer.bos_token
        adds_bos = bos is not None and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]
        rendered = _render(tokenizer, [{"role": "user", "content": "a"}], name)
        prepend_bos = adds_bos and bos not in rendered  # a template that writes BOS anywhere has its own
        markers = bool(_GENERATION_RE.search(template))
        return cls(tokenizer, name, eot, markers, prepend_bos, _learn_trims(tokenizer, name))

    def render(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """Render the conversation and return (text, response character spans), one span per assistant turn."""
        if self.uses_generation_markers:
            rendered, spans = self._marker_spans(messages)
        else:
            rendered = _render(self.tokenizer, messages, self.name)
        located = _locate_spans(rendered, messages, self.end_of_turn, self.trims_content)
        if isinstance(located, int):
            raise ChatTemplateError(
                f"{self.name}: the chat template {self._what_it_did(messages, rendered, located)}"
            )
        if not self.uses_generation_markers:
            spans = located
        dropped_or_moved = self._shape_problem(messages)
        if dropped_or_moved:
            raise ChatTemplateError(f"{self.name}: the chat template {dropped_or_moved}")
        n_assistant = sum(m["role"] == "assistant" for m in messages)
        if len(spans) != n_assistant:
            raise ChatTemplateError(
                f"{self.name}: the template rendered {len(spans)} response spans for {n_assistant} assistant turns"
            )
        return rendered, spans

    def encode(self, messages: list[dict], max_length: int | None = None) -> TokenizedChat:
        """Encode one conversation, as `readers.validate_messages` returns it (ChatTemplateError for templates)."""
        rendered, spans = self.render(messages)
        enc = self.tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
        return self._finish(messages, spans, enc["input_ids"], enc["offset_mapping"], max_length)

    def encode_many(
        self, conversations: Sequence[list[dict]], max_length: int | None = None
    ) -> list[TokenizedChat | ChatTemplateError]:
        """`encode` of each conversation, with one tokenizer call for all their renders (a fast tokenizer
        encodes a batch on every core, outside the GIL: 2-3x faster than one call a row on 2 cores). A
        conversation that cannot be encoded gives its ChatTemplateError in its place, so that a caller can
        refuse or skip it. The same ids and masks as `encode`."""
        renders: list[tuple[str, list[tuple[int, int]]] | ChatTemplateError] = []
        for messages in conversations:
            try:
                renders.append(self.render(messages))
            except ChatTemplateError as e:
                renders.append(e)
        texts = [r[0] for r in renders if not isinstance(r, ChatTemplateError)]
        tokenized = iter(tokenize_with_offsets(self.tokenizer, texts) if texts else ())
        encoded: list[TokenizedChat | ChatTemplateError] = []
        for messages, render in zip(conversations, renders, strict=True):
            if isinstance(render, ChatTemplateError):
                encoded.append(render)
                continue
            ids, offsets = next(tokenized)
            try:
                encoded.append(self._finish(messages, render[1], ids, offsets, max_length))
            except ChatTemplateError as e:
                encoded.append(e)
        return encoded

    def _finish(
        self,
        messages: list[dict],
        spans: list[tuple[int, int]],
        ids: Sequence[int],
        offsets: Sequence[tuple[int, int]],
        max_length: int | None,
    ) -> TokenizedChat:
        """The render's tokens -> response mask, BOS exactly once, truncation."""
        ids, offsets = list(ids), list(offsets)
        mask = _mask_from_spans(offsets, spans)
        if self.prepend_bos:
            ids, mask = [self.tokenizer.bos_token_id, *ids], [0, *mask]
        bos_id = self.tokenizer.bos_token_id
        if bos_id is not None and ids[:2] == [bos_id, bos_id]:
            raise ChatTemplateError(f"{self.name}: the encoded conversation starts with two BOS tokens")
        truncated = max_length is not None and len(ids) > max_length
        if truncated:
            ids, mask = ids[:max_length], mask[:max_length]
        return TokenizedChat(ids, mask, truncated, response_bytes(messages))

    def _shape_problem(self, messages: list[dict]) -> str | None:
        """What the template does to conversations of this shape (roles, and which contents are empty), from
        one render with each content replaced by a marker text that no markup contains; None when it writes
        every message once, in order. Learnt once per shape. The in-order search of `_locate_spans` cannot
        see a dropped message whose text also occurs later in the render (a system prompt "INST" under a
        template whose markup writes [INST]); the markers can. What they cannot see: a template that drops
        or moves a message because of what it says (not its role or place), which no template poft knows
        does."""
        shape = tuple((m["role"], bool(m["content"].strip())) for m in messages)
        if shape not in self.shapes:
            self.shapes[shape] = _shape_problem(self.tokenizer, shape, self.name)
        return self.shapes[shape]

    def _what_it_did(self, messages: list[dict], rendered: str, failed: int) -> str:
        """Why messages[failed] could not be placed after the messages before it (refused rows only)."""
        for i, message in enumerate(messages):  # dropped: rendering without it gives the same text
            if message["content"].strip():
                try:
                    same = _render(self.tokenizer, messages[:i] + messages[i + 1 :], self.name) == rendered
                except ChatTemplateError:
                    same = False
                if same:
                    return f"dropped messages[{i}] (role {message['role']})"
        message, eot = messages[failed], self.end_of_turn
        suffix = eot if message["role"] == "assistant" else ""
        found = [rendered.find(c + suffix) for c in _candidates(message["content"], self.trims_content)]
        at = min((p for p in found if p >= 0), default=-1)
        if at < 0:
            why = f" followed by {eot!r}, so its response tokens cannot be located" if suffix else ""
            what = f"rewrote messages[{failed}] (role {message['role']})"
            return f"{what}: its content is not in the render verbatim{why}"
        starts = [_first(rendered, m, self.trims_content) for m in messages]
        moved = next((j for j in range(failed) if starts[j] > at), None)
        if moved is None:
            return f"rendered messages[{failed}] (role {message['role']}) out of order"
        before = [k for k in range(moved + 1, len(messages)) if 0 <= starts[k] < starts[moved]]
        where = f" after messages[{before[-1]}] (role {messages[before[-1]]['role']})" if before else " later"
        return f"moved messages[{moved}] (role {messages[moved]['role']}){where}"

    def _marker_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        try:
            rendered, indices = render_jinja_template(
                conversations=[messages],
                chat_template=self.tokenizer.chat_template,
                return_assistant_tokens_mask=True,
                **self.tokenizer.special_tokens_map,
            )
        except Exception as e:  # jinja raises many types; name the model and the reason
            raise ChatTemplateError(f"{self.name}: the chat template failed to render: {e}") from e
        text, spans = rendered[0], []
        for start, end in indices[0]:
            if not text[start:end].endswith(self.end_of_turn) and text.startswith(self.end_of_turn, end):
                end += len(self.end_of_turn)
            spans.append((start, end))
        return text, spans


def _shape_problem(tokenizer: PreTrainedTokenizerBase, shape: tuple, name: str) -> str | None:
    """`ChatFormat._shape_problem` for one shape: render marker contents, each must appear once, in order."""
    markers = [f"{_SENTINEL}M{i}Z" if has_text else "" for i, (_, has_text) in enumerate(shape)]
    messages = [{"role": role, "content": text} for (role, _), text in zip(shape, markers, strict=True)]
    try:
        rendered = _render(tokenizer, messages, name)
    except ChatTemplateError:  # the real contents rendered: a marker text may break a template's own checks
        return None
    last = -1
    for i, (marker, (role, _)) in enumerate(zip(markers, shape, strict=True)):
        if not marker:
            continue
        at, count = rendered.find(marker), rendered.count(marker)
        if count == 0:
            return f"dropped messages[{i}] (role {role})"
        if count > 1 and role == "assistant":  # which copy is the response cannot be told
            return f"wrote messages[{i}] (role {role}) {count} times"
        if at < last:
            return f"moved messages[{i}] (role {role}) before an earlier message"
        last = at
    return None


def tokenize_with_offsets(
    tokenizer: PreTrainedTokenizerBase, texts: list[str]
) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Each text's token ids and character offsets, no special tokens added. Straight from the Rust tokenizer
    when transformers would hand it the texts unchanged (no truncation or padding set on it, special tokens
    not split); otherwise, and as the reference, through transformers' call. Same ids and offsets either way
    (tests/unit/test_chat.py); the direct call skips transformers' per-row conversion, ~30 % of encoding."""
    backend = getattr(tokenizer, "_tokenizer", None)
    direct = (
        backend is not None
        and backend.truncation is None
        and backend.padding is None
        and not getattr(tokenizer, "split_special_tokens", False)
        and not getattr(backend, "encode_special_tokens", False)
    )
    if direct:
        return [(e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=False)]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return list(zip(enc["input_ids"], enc["offset_mapping"], strict=True))


def response_bytes(messages: list[dict]) -> int:
    """UTF-8 bytes of all assistant contents: the tokenizer-independent denominator of normalization='byte'."""
    return sum(len(m["content"].encode("utf-8")) for m in messages if m["role"] == "assistant")


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], name: str) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as e:  # jinja raises many types; name the model and the reason
        raise ChatTemplateError(f"{name}: the chat template failed to render: {e}") from e


def _learn_end_of_turn(tokenizer: PreTrainedTokenizerBase, name: str) -> str:
    """The text a template writes right after an assistant content: up to its first special token."""
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": _SENTINEL}]
    rendered = _render(tokenizer, messages, name)
    at = rendered.find(_SENTINEL)
    if at < 0:
        raise ChatTemplateError(f"{name}: the chat template does not write the assistant content verbatim")
    suffix = rendered[at + len(_SENTINEL) :]
    special = [t for t in tokenizer.all_special_tokens + list(tokenizer.added_tokens_encoder) if t]
    hits = [(suffix.find(t), -len(t), t) for t in special if suffix.find(t) >= 0]
    if hits:
        pos, _, token = min(hits)
        return suffix[: pos + len(token)]
    if suffix.strip():
        return suffix.rstrip()
    raise ChatTemplateError(
        f"{name}: the chat template writes nothing after an assistant turn, so the model could never learn to stop"
    )


def _learn_trims(tokenizer: PreTrainedTokenizerBase, name: str) -> bool:
    """Whether the template strips the whitespace around a content (then a content's leading "\n\n" is not
    in the render, and searching for it would take the header's own "\n\n" as response text)."""
    padded = f" \n\n{_SENTINEL}\n "
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": padded}]
    return padded not in _render(tokenizer, messages, name)


def _candidates(content: str, trims: bool) -> tuple[str, ...]:
    """What a content may be rendered as: verbatim or stripped (stripped first when the template trims)."""
    stripped = content.strip()
    if not stripped:
        return ()
    return (stripped, content) if trims else (content, stripped)


def _first(rendered: str, message: dict, trims: bool) -> int:
    """Where a message's content first appears in the render (-1: nowhere or empty); for error messages."""
    return min(
        (p for c in _candidates(message["content"], trims) if (p := rendered.find(c)) >= 0), default=-1
    )


def _locate_spans(
    rendered: str, messages: list[dict], eot: str, trims: bool = False
) -> list[tuple[int, int]] | int:
    """Account for every message's content in the render, in order, each searched from where the previous
    one ended; return the response span (content + end-of-turn) of each assistant turn, or the index of the
    first message that cannot be placed. Empty contents are skipped."""
    spans, cursor = [], 0
    for i, message in enumerate(messages):
        suffix = eot if message["role"] == "assistant" else ""
        for candidate in _candidates(message["content"], trims):
            at = rendered.find(candidate + suffix, cursor)
            if at >= 0:
                break
        else:
            if message["content"].strip():
                return i
            continue
        end = at + len(candidate) + len(suffix)
        if suffix:
            spans.append((at, end))
        cursor = end
    return spans


def _mask_from_spans(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """1 for each token whose character range overlaps a span (spans and offsets both in order)."""
    mask, k = [0] * len(offsets), 0
    for t, (start, end) in enumerate(offsets):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k == len(spans):
            break
        if end > spans[k][0] and end > start:
            mask[t] = 1
    return mask
