"""The airtime budget: upkeep timers derived from a share of the slowest interface's time
(the formula is in akita.mesh.budget's docstring and restated here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from akita import config as config_mod
from akita.config import AUTO, ClusterConfig
from akita.mesh import budget
from akita.mesh.airtime import profile

SF9 = budget.Medium(profile("SF9").bitrate, profile("SF9"))
SF7_500 = budget.Medium(profile("SF7-500").bitrate, profile("SF7-500"))
LAN = budget.Medium()


def formula_u(medium: budget.Medium, cluster_size: int) -> float:
    """U = cost(announce) + m·2·cost(heads)/10 + m·(cost(pull)+cost(record))/10
    + m·cost(ledger range)/10, m = cluster_size − 1."""
    m, c = cluster_size - 1, medium.cost_s
    return (c(270) + m * 2 * c(220) / 10 + m * (c(200) + c(450)) / 10 + m * c(2000) / 10)


@pytest.mark.parametrize("medium", [SF9, SF7_500], ids=["SF9", "SF7-500"])
def test_auto_timers_spend_the_budget_on_radio(medium: budget.Medium) -> None:
    timers = budget.derive(ClusterConfig(cluster_size=3, airtime_budget=1.0), medium)
    u = formula_u(medium, 3)
    assert timers.upkeep_s == pytest.approx(u)
    assert timers.announce_interval_s == pytest.approx(max(10.0, u / 0.01))
    assert timers.probe_interval_s == pytest.approx(max(6.0, 1.5 * u / 0.01))
    assert timers.peer_timeout_s == pytest.approx(max(30.0, 3 * timers.announce_interval_s))
    assert timers.state_refresh_s == pytest.approx(max(30.0, 10 * timers.announce_interval_s))
    assert timers.replication_refresh_s == pytest.approx(10 * timers.announce_interval_s)
    assert timers.estimated_percent == pytest.approx(1.0)
    assert timers.source == "auto"


def test_sf9_announces_are_minutes_apart_and_a_bigger_budget_shortens_them() -> None:
    one = budget.derive(ClusterConfig(), SF9)
    five = budget.derive(ClusterConfig(airtime_budget=5.0), SF9)
    assert 300 < one.announce_interval_s < 900
    assert five.announce_interval_s == pytest.approx(one.announce_interval_s / 5)


def test_a_fast_lan_keeps_todays_timers() -> None:
    timers = budget.derive(ClusterConfig(), LAN)
    assert (timers.announce_interval_s, timers.probe_interval_s, timers.peer_timeout_s) == \
        (10.0, 6.0, 30.0)


def test_explicit_values_win() -> None:
    cluster = ClusterConfig(announce_interval=3.0, peer_timeout=12.0)
    timers = budget.derive(cluster, SF9)
    assert (timers.announce_interval_s, timers.peer_timeout_s) == (3.0, 12.0)
    assert timers.probe_interval_s == pytest.approx(12.0 / 5)     # the rule before budgets
    assert timers.source == "mixed"
    all_set = ClusterConfig(announce_interval=3.0, peer_timeout=12.0, probe_interval=1.0)
    assert budget.derive(all_set, SF9).source == "configured"


def test_more_mates_mean_longer_intervals() -> None:
    three = budget.derive(ClusterConfig(cluster_size=3), SF9).announce_interval_s
    six = budget.derive(ClusterConfig(cluster_size=6), SF9).announce_interval_s
    assert six > three


def test_the_slowest_interface_decides() -> None:
    assert budget.slowest([LAN, SF9, SF7_500]) == SF9
    assert budget.slowest([]) == LAN
    assert budget.slowest([budget.Medium(0.0)]) == LAN


def test_resolve_puts_the_derived_figures_where_the_gateway_reads_them(tmp_path: Path) -> None:
    config = config_mod.parse("[node]\ndata_dir = d\nrun_dir = r\nlog_dir = l\n",
                              tmp_path / "a.ini")
    assert config.cluster.announce_interval == AUTO and config.cluster.peer_timeout == AUTO
    resolved = budget.resolve(config, budget.derive(config.cluster, SF9))
    assert resolved.cluster.announce_interval > 300
    assert resolved.cluster.peer_timeout == pytest.approx(3 * resolved.cluster.announce_interval)


def test_auto_is_the_default_and_accepted_explicitly(tmp_path: Path) -> None:
    text = ("[node]\ndata_dir = d\nrun_dir = r\nlog_dir = l\n[cluster]\n"
            "announce_interval = AUTO\npeer_timeout = 20\nairtime_budget = 0.5\n")
    cluster = config_mod.parse(text, tmp_path / "a.ini").cluster
    assert (cluster.announce_interval, cluster.peer_timeout, cluster.probe_interval) == \
        (AUTO, 20.0, AUTO)
    assert cluster.airtime_budget == 0.5
