"""The statistics of an evaluation run (core/eval_stats.py)."""

from __future__ import annotations

from math import isclose

from core.eval_stats import compare, config_stats, pass_at, pass_hat


def test_pass_at_k_and_pass_hat_k_are_the_unbiased_estimates():
    assert pass_at(2, 1, 1) == 0.5 and pass_at(2, 1, 2) == 1.0 and pass_hat(2, 1, 2) == 0.0
    assert pass_at(5, 0, 3) == 0.0 and pass_hat(5, 5, 3) == 1.0
    # 10 samples, 3 passing: 1 - C(7,2)/C(10,2) = 1 - 21/45; C(3,2)/C(10,2) = 3/45
    assert isclose(pass_at(10, 3, 2), 24 / 45) and isclose(pass_hat(10, 3, 2), 3 / 45)


def test_a_config_that_passes_one_sample_of_two_everywhere_is_reliable_at_none():
    flaky = {f"c{i}": [True, False] for i in range(6)}
    stats = config_stats("flaky", flaky)
    assert stats.samples == 2 and stats.pass_at_1.value == 0.5
    assert stats.pass_at_k is not None and stats.pass_at_k.value == 1.0
    assert stats.pass_hat_k is not None and stats.pass_hat_k.value == 0.0
    # Alike across cases, but each case's own two samples disagree: that is noise too.
    assert stats.pass_at_1.low < 0.5 < stats.pass_at_1.high


def test_intervals_are_the_same_for_the_same_results_and_hold_the_value():
    mixed = {f"c{i}": [i % 3 == 0, i % 2 == 0] for i in range(12)}
    first, again = config_stats("x", mixed), config_stats("x", mixed)
    assert first == again  # a fixed seed: the workflow's replay makes the same table
    est = first.pass_at_1
    assert est.low < est.value < est.high


def test_a_paired_comparison_tells_a_real_difference_from_noise():
    good = {f"c{i}": [True, True] for i in range(10)}
    bad = {f"c{i}": [False, False] for i in range(10)}
    same = {f"c{i}": [i % 2 == 0, i % 2 == 1] for i in range(10)}
    clear = compare("good", "bad", good, bad)
    assert clear is not None and clear.beyond_noise and clear.first_better == 10
    assert (clear.difference.low, clear.difference.high) == (1.0, 1.0)
    assert "more than noise" in clear.text()
    noise = compare("a", "b", same, {k: list(reversed(v)) for k, v in same.items()})
    assert noise is not None and not noise.beyond_noise and "within noise" in noise.text()
    assert compare("a", "b", good, {}) is None
