"""Statistics of an evaluation run with K samples per case and config (core/eval_suites.py):
pass@1, pass@k and pass^k per config with 95% intervals, and a paired comparison of two
configs on the same cases that says whether their difference is more than noise.

- pass@k (Chen et al. 2021, the unbiased estimator): per case, the chance that at least one
  of k samples drawn from its n passes, 1 - C(n-c, k) / C(n, k); averaged over cases.
- pass^k (tau-bench): per case, the chance that all k drawn samples pass, C(c, k) / C(n, k);
  averaged over cases. It falls as k grows where pass@k rises: the gap is how unreliable a
  config is.
- Intervals: a two-level percentile bootstrap, 2,000 draws from a fixed seed: cases drawn
  again (they are what varies most), then each drawn case's samples drawn again (so a case
  that passed one sample of two counts as noisy). The same results give the same interval,
  as the workflow's replay needs.
- Comparison: per case, the difference of the two configs' pass rates; its mean with a paired
  bootstrap interval, drawn the same way. More than noise when the interval leaves out 0.

Pure and deterministic: EvalWorkflow makes its table with it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from math import comb

from pydantic import BaseModel

RESAMPLES = 2000
SEED = 20261208
LEVEL = 0.95


class Estimate(BaseModel):
    """A figure over the cases, with its 95% interval (equal bounds: one case, no spread)."""

    value: float
    low: float
    high: float

    def text(self, percent: bool = True) -> str:
        def show(v: float) -> str:
            return f"{v:.0%}" if percent else f"{v:+.2f}"

        return f"{show(self.value)} [{show(self.low)}, {show(self.high)}]"


class ConfigStats(BaseModel):
    config: str
    samples: int  # per case (the smallest any case had)
    pass_at_1: Estimate
    pass_at_k: Estimate | None = None  # None: one sample per case
    pass_hat_k: Estimate | None = None


class Comparison(BaseModel):
    """`first` against `second` on the cases both ran: the mean difference of their pass rates
    (first minus second), and on how many cases each did better."""

    first: str
    second: str
    cases: int
    difference: Estimate
    first_better: int
    second_better: int

    @property
    def beyond_noise(self) -> bool:
        return self.difference.low > 0 or self.difference.high < 0

    def text(self) -> str:
        verdict = "more than noise" if self.beyond_noise else "within noise"
        return (
            f"{self.first} - {self.second}: {self.difference.text(percent=False)} on "
            f"{self.cases} cases ({self.first} better on {self.first_better}, "
            f"{self.second} on {self.second_better}): {verdict}"
        )


def pass_at(n: int, c: int, k: int) -> float:
    """The chance that at least one of k samples of n (c of them passing) passes."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_hat(n: int, c: int, k: int) -> float:
    """The chance that all of k samples of n (c of them passing) pass."""
    return comb(c, k) / comb(n, k)


def _interval(value: float, draws: list[float]) -> Estimate:
    draws.sort()
    tail = (1 - LEVEL) / 2
    low, high = draws[int(tail * len(draws))], draws[int((1 - tail) * len(draws)) - 1]
    return Estimate(value=round(value, 4), low=round(low, 4), high=round(high, 4))


def _redrawn(rng: random.Random, samples: list[bool]) -> list[bool]:
    return rng.choices(samples, k=len(samples))


def _bootstrap(cases: list[list[bool]], stat: Callable[[list[bool]], float]) -> Estimate:
    """The mean of `stat` over cases, with a two-level bootstrap interval: cases drawn again,
    then each drawn case's samples drawn again (so a case's own noise counts too)."""
    rng = random.Random(SEED)
    value = sum(stat(c) for c in cases) / len(cases)
    draws = []
    for _ in range(RESAMPLES):
        picked = rng.choices(cases, k=len(cases))
        draws.append(sum(stat(_redrawn(rng, c)) for c in picked) / len(picked))
    return _interval(value, draws)


def _rate(samples: list[bool]) -> float:
    return sum(samples) / len(samples)


def config_stats(config: str, per_case: dict[str, list[bool]]) -> ConfigStats:
    """A config's figures from each case's samples (passed or not)."""
    cases = [s for s in per_case.values() if s]
    k = min(len(s) for s in cases)
    stats = ConfigStats(config=config, samples=k, pass_at_1=_bootstrap(cases, _rate))
    if k > 1:
        stats.pass_at_k = _bootstrap(cases, lambda s: pass_at(len(s), sum(s), k))
        stats.pass_hat_k = _bootstrap(cases, lambda s: pass_hat(len(s), sum(s), k))
    return stats


def compare(
    first: str, second: str, a: dict[str, list[bool]], b: dict[str, list[bool]]
) -> Comparison | None:
    """`first` against `second` on the cases both have samples of (None: no such case)."""
    shared = [(a[case], b[case]) for case in a if a[case] and b.get(case)]
    if not shared:
        return None
    diffs = [_rate(x) - _rate(y) for x, y in shared]
    rng = random.Random(SEED)
    draws = []
    for _ in range(RESAMPLES):
        picked = rng.choices(shared, k=len(shared))
        draws.append(
            sum(_rate(_redrawn(rng, x)) - _rate(_redrawn(rng, y)) for x, y in picked) / len(picked)
        )
    return Comparison(
        first=first,
        second=second,
        cases=len(shared),
        difference=_interval(sum(diffs) / len(diffs), draws),
        first_better=sum(d > 0 for d in diffs),
        second_better=sum(d < 0 for d in diffs),
    )
