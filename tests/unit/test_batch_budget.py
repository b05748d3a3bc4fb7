"""The packed batch budget of `poft score` (`logprobs.batch_budget`): a small run is cut into batches of at most
1/MIN_BATCHES of its tokens (not under MIN_BATCH_TOKENS), so progress moves per batch; large runs keep the
full budget."""

import random

from poft.logprobs import MIN_BATCH_TOKENS, MIN_BATCHES, batch_budget, packed_batches


def test_no_batch_of_a_small_run_holds_more_than_a_twentieth_of_its_tokens_but_a_long_row_alone():
    rng = random.Random(0)
    for n_rows, longest in ((100, 300), (240, 300), (500, 300), (60, 3000)):
        lengths = [rng.randint(20, longest) for _ in range(n_rows)]
        budget = batch_budget(lengths, 8192)
        batches = packed_batches(lengths, budget)
        assert budget == sum(lengths) // MIN_BATCHES < 8192
        assert all(sum(lengths[i] for i in batch) <= budget for batch in batches if len(batch) > 1)
        if max(lengths) <= budget:
            assert len(batches) >= MIN_BATCHES
    even = [50] * 400
    assert len(packed_batches(even, batch_budget(even, 8192))) == MIN_BATCHES


def test_a_tiny_run_keeps_batches_of_at_least_min_batch_tokens():
    """Finer batches would cost more time than the bar shows (the docstring's measurement)."""
    lengths = [30] * 60  # 1,800 tokens: 4 batches of 512, not 20 of 90
    assert batch_budget(lengths, 8192) == MIN_BATCH_TOKENS
    assert len(packed_batches(lengths, MIN_BATCH_TOKENS)) == 4
    assert batch_budget(lengths, 256) == 256  # a budget the user set below it is kept


def test_a_large_run_keeps_the_full_budget():
    lengths = [400] * 2000  # 800k tokens: 40 batches of 20k already
    assert batch_budget(lengths, 20_000) == 20_000
    assert batch_budget(lengths, 8192) == 8192


def test_the_budget_follows_the_rows_only():
    """A resume computes it from the same rows (finished ones included) and so re-forms the same batches."""
    lengths = [31, 7, 250, 64, 64, 12] * 100
    assert batch_budget(lengths, 8192) == sum(lengths) // MIN_BATCHES == batch_budget(list(lengths), 8192)
