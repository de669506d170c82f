"""Statistics that hold at small n: Wilson rates, paired differences, t intervals over seeds, Bradley-Terry, and
Elo reshuffled every epoch."""

from __future__ import annotations

import math
import random

import pytest

from deliberate.services.stats import (
    Game,
    bradley_terry,
    elo_ratings,
    paired_difference,
    seed_difference,
    wilson_rate,
)


def test_wilson_intervals_at_the_edges_are_not_degenerate():
    full, none = wilson_rate([True] * 14), wilson_rate([False] * 14)
    assert full.value == 1.0 and full.high == 1.0 and full.low == pytest.approx(0.7847, abs=1e-4)
    assert none.value == 0.0 and none.low == 0.0 and none.high == pytest.approx(0.2153, abs=1e-4)
    half = wilson_rate([True] * 7 + [False] * 7)
    assert (half.low, half.high) == (pytest.approx(0.2680, abs=1e-4), pytest.approx(0.7320, abs=1e-4))
    assert wilson_rate([]).value is None


def test_wilson_intervals_cover_the_true_rate_in_a_simulation():
    rng = random.Random(0)
    for p, n in ((0.3, 60), (0.9, 14)):
        covered = sum(lo <= p <= hi for lo, hi in ((r.low, r.high) for r in
                      (wilson_rate([rng.random() < p for _ in range(n)]) for _ in range(400))))
        assert 360 <= covered <= 400, (p, n, covered)  # nominal 95% (380 of 400)


def test_paired_difference_counts_discordant_prompts_and_covers_the_truth():
    a = {str(i): i < 12 for i in range(14)}
    b = {str(i): i < 5 for i in range(14)}
    d = paired_difference(a, b)
    assert (d["only_a"], d["only_b"], d["both"], d["neither"], d["n"]) == (7, 0, 5, 2, 14)
    assert d["value"] == pytest.approx(0.5) and d["p_value"] == pytest.approx(2 / 2**7)  # exact McNemar: 2 * 0.5^7
    lo, hi = d["ci95"]
    assert 0 < lo < 0.5 < hi <= 1
    same = paired_difference(a, a)
    assert same["value"] == 0 and same["p_value"] == 1.0 and same["ci95"][0] <= 0 <= same["ci95"][1]
    # coverage: two correlated models, true difference 0.2
    rng = random.Random(1)
    covered = 0
    for _ in range(300):
        x, y = {}, {}
        for i in range(30):
            u = rng.random()
            x[str(i)], y[str(i)] = u < 0.7, u < 0.5
        lo, hi = paired_difference(x, y)["ci95"]
        covered += lo <= 0.2 <= hi
    assert covered >= 270  # at least nominal (Newcombe's interval is somewhat conservative)


def test_seed_differences_get_a_t_interval():
    d = seed_difference([0.5, 0.6, 0.55], [0.4, 0.45, 0.5])
    sd = math.sqrt(((0.1 - 0.1) ** 2 + (0.15 - 0.1) ** 2 + (0.05 - 0.1) ** 2) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, 2)
    assert d["value"] == pytest.approx(0.1) and d["ci95"] == [pytest.approx(0.1 - half), pytest.approx(0.1 + half)]
    assert seed_difference([0.5], [0.4])["ci95"] == [None, None]


def test_bradley_terry_recovers_known_strengths_from_simulated_games():
    true = {"base": 0.0, "better": 0.8, "worse": -0.6, "even": 0.0}
    rng = random.Random(2)
    games = []
    models = list(true)
    for _ in range(4000):
        i, j = rng.sample(models, 2)
        p = 1 / (1 + math.exp(true[j] - true[i]))
        u = rng.random()
        games.append(Game(i, j, 0.5 if abs(u - p) < 0.05 else (1.0 if u < p else 0.0)))
    bt = bradley_terry(games, "base")
    for m, s in true.items():
        lo, hi = bt[m]["strength_ci95"]
        assert abs(bt[m]["strength"] - s) < 0.15 and lo <= s <= hi, (m, bt[m])
    assert bt["base"]["rating"] == 1000.0
    assert bt["better"]["rating"] == pytest.approx(1000 + 400 / math.log(10) * bt["better"]["strength"])


def test_bradley_terry_stays_finite_when_a_model_wins_every_game():
    bt = bradley_terry([Game("always", "base", 1.0)] * 14, "base")
    assert math.isfinite(bt["always"]["strength"]) and bt["always"]["strength"] > 2
    assert bt["always"]["ci95"][0] < bt["always"]["rating"] < bt["always"]["ci95"][1]


def test_elo_depends_on_the_order_of_one_run_and_the_average_over_runs_does_not():
    games = [Game("a", "base", 1.0)] * 5 + [Game("a", "base", 0.0)] * 5
    one = [elo_ratings(games, "base", trials=1, epochs=4, seed=s)["a"]["rating"] for s in range(6)]
    assert len({round(x, 6) for x in one}) > 1
    many = elo_ratings(games, "base", trials=200, epochs=4, seed=0)["a"]["rating"]
    assert abs(many - 1000) < 10
