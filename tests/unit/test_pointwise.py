"""PMI, IFD and their combination (poft.pointwise) against plain per-row Python; the prompt-free render
(poft.unconditional) under every chat-template family of the fixtures, including those that require
alternation or a first user turn."""

import math

import numpy as np
import pytest
from fixtures.chat_templates import FAMILIES, build  # tests/ is on sys.path

from poft.chat import ChatFormat, ChatTemplateError
from poft.inspection import aligned_aliases
from poft.pointwise import COMBINED_WEIGHT, combined, ifd, pmi, row_scores
from poft.unconditional import encode_prompt_free, matched, prompt_free

COND_SUM = [-12.0, -3.0, -40.0, 0.0, -5.0]
COND_N = [6, 3, 10, 0, 5]
FREE_SUM = [-30.0, -2.0, -41.0, -1.0, 0.0]
FREE_N = [6, 3, 10, 2, 5]


def plain(cond_sum, cond_n, free_sum, free_n) -> tuple[float, float]:
    """PMI and IFD of one row as the paper writes them: losses L = -mean log p; PMI = L(y) - L(y|x)."""
    if cond_n == 0 or free_n == 0:
        return math.nan, math.nan
    loss_cond, loss_free = -cond_sum / cond_n, -free_sum / free_n
    return loss_free - loss_cond, (loss_cond / loss_free if loss_free else math.nan)


def test_pmi_and_ifd_equal_the_plain_per_row_formulas():
    got_pmi, got_ifd = pmi(COND_SUM, COND_N, FREE_SUM, FREE_N), ifd(COND_SUM, COND_N, FREE_SUM, FREE_N)
    for i, args in enumerate(zip(COND_SUM, COND_N, FREE_SUM, FREE_N, strict=True)):
        want_pmi, want_ifd = plain(*args)
        assert got_pmi[i] == pytest.approx(want_pmi, nan_ok=True)
        assert got_ifd[i] == pytest.approx(want_ifd, nan_ok=True)
    assert got_pmi[0] == pytest.approx(3.0) and got_ifd[0] == pytest.approx(0.4)  # the prompt helps
    assert got_ifd[1] > 1 > got_ifd[0]  # the prompt makes the response less likely: IFD > 1


def test_row_scores_are_means_over_models_and_the_combination_takes_off_weighted_ifd():
    other = [s * 0.5 for s in COND_SUM]
    models = [
        {"cond_sum": COND_SUM, "cond_n": COND_N, "uncond_sum": FREE_SUM, "uncond_n": FREE_N},
        {"cond_sum": other, "cond_n": COND_N, "uncond_sum": FREE_SUM, "uncond_n": FREE_N},
    ]
    ref_score = np.array([-1.5, -0.75, -3.0, np.nan, -0.75])
    rows = row_scores(models, ref_score)
    for i in range(len(COND_N)):
        per = [
            plain(COND_SUM[i], COND_N[i], FREE_SUM[i], FREE_N[i]),
            plain(other[i], COND_N[i], FREE_SUM[i], FREE_N[i]),
        ]
        assert rows["ref_pmi"][i] == pytest.approx((per[0][0] + per[1][0]) / 2, nan_ok=True)
        assert rows["ref_ifd"][i] == pytest.approx((per[0][1] + per[1][1]) / 2, nan_ok=True)
        want = ref_score[i] - COMBINED_WEIGHT * rows["ref_ifd"][i]
        assert rows["ref_combined"][i] == pytest.approx(want, nan_ok=True)
    assert combined([1.0], [2.0], weight=0.5)[0] == 0.0 and COMBINED_WEIGHT == 4.0


def test_prompt_free_removes_system_and_empties_every_prompt_turn():
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "add 2 and 3"},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "and 4?"},
        {"role": "assistant", "content": "9"},
    ]
    assert prompt_free(messages) == [
        {"role": "user", "content": ""}, {"role": "assistant", "content": "5"},
        {"role": "user", "content": ""}, {"role": "assistant", "content": "9"},
    ]  # fmt: skip
    assert messages[1]["content"] == "add 2 and 3"  # the input is not changed


def test_matched_cuts_after_the_kept_response_tokens_and_compares_them():
    ids, mask = [1, 7, 8, 9, 10, 11], [0, 0, 1, 1, 1, 1]
    assert matched(np.array([5, 6, 8, 9]), np.array([0, 0, 1, 1]), ids, mask) == (
        [1, 7, 8, 9], [0, 0, 1, 1], True, True,
    )  # fmt: skip
    assert matched(np.array([5, 8, 9, 10, 11]), np.array([0, 1, 1, 1, 1]), ids, mask) == (
        ids, mask, False, True,
    )  # fmt: skip
    assert matched(np.array([5, 8, 4]), np.array([0, 1, 1]), ids, mask)[3] is False  # other tokens
    assert matched(np.array([5]), np.array([0]), ids, mask)[:3] == ([], [], True)  # response cut away


CONVERSATIONS = [
    [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue, like the sky."}],
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": " Rome is the answer.\n"},
    ],
]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prompt_free_render_keeps_the_response_tokens_under_every_family(family):
    chat = ChatFormat.from_tokenizer(build(family), family)
    conditional = chat.encode_many(CONVERSATIONS)
    kept = [c for c in conditional if not isinstance(c, ChatTemplateError)]
    assert kept, f"{family}: the fixture conversations cannot be encoded at all"
    cond = [None if isinstance(c, ChatTemplateError) else (c.input_ids, c.response_mask) for c in conditional]
    for c, free in zip(cond, encode_prompt_free(chat, CONVERSATIONS, cond), strict=True):
        assert not isinstance(free, ChatTemplateError), f"{family}: {free}"
        if c is not None:
            ids, mask, cut, same = free
            assert same and not cut, f"{family}: the response tokens differ without the prompt"
            assert len(ids) < len(c[0])  # the prompt is gone


def test_prompt_free_columns_are_not_taken_for_an_aligned_model():
    from datasets import Dataset

    names = ["a_logp_sum", "a_n_tokens", "a_uncond_logp_sum", "a_uncond_n_tokens", "b_uncond_logp_sum"]
    columns = {name: [1.0] for name in [*names, "b_uncond_n_tokens"]}
    assert aligned_aliases(Dataset.from_dict(columns), {}) == ["a", "b_uncond"]  # b_uncond: a model's alias
