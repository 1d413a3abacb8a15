"""Simulate cluster formation with many nodes, random joins, leaves, restarts and a partition.

Runs the real rules of `akita.mesh.cluster` over simulated views and prints: members moved per
event (mean, max), cluster sizes, rounds to converge, property violations (must be 0), and
the same moves for a naive sort-and-chunk baseline, with the ratio.

How views are simulated: nodes are spread over `groups` view groups. A node's report
reaches its own group at once and every other group with probability `delivery` per round,
so groups see changes late and in different orders; each group also hands the rules its
view in its own shuffled order. In grouped mode (the default, fast enough for 1,000 nodes)
the nodes of a group share one `form_clusters` and one `Grace` per round and each node then
runs `settle`; with ``--per-node`` every node is its own group and runs `advance` itself.
A partition cuts delivery between the even and the odd groups until it heals.

    python bench/cluster_sim.py --nodes 1000 --cluster-size 3 --events 300 --seed 1
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from akita.mesh.cluster import (
    Assignment,
    Cluster,
    Grace,
    NodeId,
    PeerView,
    cluster_count,
    form_clusters,
)
from akita.mesh.rounds import Local, Round, advance, settle

INTERVAL_S = 1.0  # one round is one discovery interval


@dataclass
class Stats:
    """Figures gathered over a run."""

    moved: list[int] = field(default_factory=list)
    baseline_moved: list[int] = field(default_factory=list)
    moved_by_kind: dict[str, list[int]] = field(default_factory=dict)
    rounds_agree: list[int] = field(default_factory=list)
    rounds_quiet: list[int] = field(default_factory=list)
    surplus: list[int] = field(default_factory=list)  # clusters beyond k when quiet
    violations: Counter[str] = field(default_factory=Counter)
    notes: dict[str, str] = field(default_factory=dict)


class Simulation:
    """Live nodes, their view groups, and one synchronous round at a time."""

    def __init__(self, cluster_size: int, *, groups: int = 8, delivery: float = 0.6,
                 grace_rounds: int = 4, warmup_rounds: int = 2, seed: int = 1,
                 per_node: bool = False) -> None:
        self.cluster_size = cluster_size
        self.warmup_rounds = warmup_rounds
        self.started: dict[NodeId, int] = {}
        self.rng = random.Random(seed)
        self.delivery = delivery
        self.grace_s = grace_rounds * INTERVAL_S
        self.per_node = per_node
        self.round = 0
        self.partitioned = False
        self.locals: dict[NodeId, Local] = {}
        self.group_of: dict[NodeId, int] = {}
        self.views: list[dict[NodeId, PeerView]] = []
        self.pending: list[set[NodeId]] = []
        self.graces: list[Grace] = []
        self.results: dict[int, Assignment] = {}
        if not per_node:
            for _ in range(groups):
                self._add_group()

    # --- membership events ------------------------------------------------------------

    def _add_group(self) -> int:
        self.views.append({})
        self.pending.append(set())
        self.graces.append(Grace())
        return len(self.views) - 1

    def new_id(self) -> NodeId:
        return f"{self.rng.getrandbits(128):032x}"

    def join(self, node: NodeId | None = None, local: Local | None = None) -> NodeId:
        """A node starts (a newcomer, or `local` restored from its saved seat)."""
        node = node or self.new_id()
        self.locals[node] = local or Local(node, generation=1)
        self.started[node] = self.round
        if self.per_node and node not in self.group_of:
            self.group_of[node] = self._add_group()
            # A new node has heard nobody yet: every live peer's report is still to arrive.
            self.pending[-1].update(n for n in self.locals if n != node)
        elif node not in self.group_of:
            self.group_of[node] = self.rng.randrange(len(self.views))
        self._publish(node)
        return node

    def leave(self, node: NodeId) -> Local:
        """A node stops; groups drop it once its silence reaches them."""
        local = self.locals.pop(node)
        self._publish(node)
        return local

    def restart(self, node: NodeId, away_rounds: int) -> None:
        """Stop `node`, run `away_rounds` rounds, start it with a higher generation."""
        saved = self.leave(node)
        for _ in range(away_rounds):
            self.step()
        self.join(node, Local(node, saved.generation + 1, seat=saved.seat, term=saved.term))

    def split(self) -> None:
        self.partitioned = True
        self._refresh_all()

    def heal(self) -> None:
        self.partitioned = False
        self._refresh_all()

    def side(self, node: NodeId) -> int:
        return self.group_of[node] % 2 if self.partitioned else 0

    # --- delivery -----------------------------------------------------------------------

    def _target(self, group: int, node: NodeId) -> PeerView | None:
        local = self.locals.get(node)
        if local is None:
            return None
        if self.partitioned and group % 2 != self.group_of[node] % 2:
            return None
        return local.report()

    def _publish(self, node: NodeId) -> None:
        own = self.group_of[node]
        self._apply(own, node)
        for group in range(len(self.views)):
            if group != own and self.views[group].get(node) != self._target(group, node):
                self.pending[group].add(node)

    def _apply(self, group: int, node: NodeId) -> None:
        report = self._target(group, node)
        if report is None:
            self.views[group].pop(node, None)
        else:
            self.views[group][node] = report

    def _refresh_all(self) -> None:
        nodes = set(self.locals) | {n for view in self.views for n in view}
        for group in range(len(self.views)):
            for node in nodes:
                if self.views[group].get(node) != self._target(group, node):
                    self.pending[group].add(node)

    def _deliver(self) -> None:
        for group, pending in enumerate(self.pending):
            # Sorted: set order depends on the process's hash seed, the run must not.
            for node in sorted(pending):
                if self.rng.random() < self.delivery:
                    self._apply(group, node)
                    pending.discard(node)

    # --- one round ------------------------------------------------------------------------

    def step(self) -> bool:
        """Deliver, let every node run its rules, publish changes; True if a report changed."""
        self.round += 1
        self._deliver()
        now = self.round * INTERVAL_S
        members: dict[int, list[NodeId]] = {}
        for node in self.locals:
            if self._warm(node):
                members.setdefault(self.group_of[node], []).append(node)
        self.results = {}
        outcomes: dict[NodeId, Round] = {}
        for group in sorted(members):
            view = list(self.views[group].values())
            self.rng.shuffle(view)  # every group hears the reports in its own order
            outcomes.update(self._run_group(group, view, sorted(members[group]), now))
        changed = [n for n, r in outcomes.items() if r.local != self.locals[n]]
        for node, outcome in outcomes.items():
            self.locals[node] = outcome.local
        for node in changed:
            self._publish(node)
        return bool(changed)

    def _warm(self, node: NodeId) -> bool:
        """A node without a seat listens `warmup_rounds` before it first takes one: seated on
        an empty view it would found a cluster of one, only for it to dissolve later."""
        local = self.locals[node]
        return local.seat is not None or self.round - self.started[node] > self.warmup_rounds

    def _run_group(self, group: int, view: list[PeerView], nodes: list[NodeId],
                   now: float) -> dict[NodeId, Round]:
        if self.per_node:
            (node,) = nodes
            outcome = advance(self.locals[node], view, self.cluster_size, now, self.grace_s)
            self.results[group] = outcome.assignment
            return {node: outcome}
        grace = self.graces[group].update(view, self.cluster_size, now)
        self.graces[group] = grace
        assignment = form_clusters(view, self.cluster_size, grace.expired(now, self.grace_s))
        self.results[group] = assignment
        by_cluster: dict[str, list[PeerView]] = {}
        for report in view:
            if report.seat is not None:
                by_cluster.setdefault(report.seat.cluster, []).append(report)
        outcomes = {}
        for node in nodes:
            mates = by_cluster.get(assignment.seat_of(node).cluster, [])
            outcomes[node] = settle(self.locals[node], assignment, grace, mates)
        return outcomes

    # --- convergence --------------------------------------------------------------------

    def timers_running(self) -> bool:
        if self.per_node:
            return any(local.grace.since for local in self.locals.values())
        return any(grace.since for grace in self.graces)

    def agreed(self) -> bool:
        """Every node runs the rules, the nodes of each side compute the same clusters
        (members and coordinators), and every node sits in the cluster computed for it."""
        if len(self.results) != len({self.group_of[n] for n in self.locals}):
            return False  # someone is still warming up
        by_side: dict[int, tuple[Cluster, ...]] = {}
        for group, assignment in self.results.items():
            side = group % 2 if self.partitioned else 0
            if by_side.setdefault(side, assignment.clusters) != assignment.clusters:
                return False
        return all(local.seat is not None and self._computed(node) == local.seat.cluster
                   for node, local in self.locals.items())

    def _computed(self, node: NodeId) -> str:
        return self.results[self.group_of[node]].seat_of(node).cluster

    def quiet(self, changed: bool) -> bool:
        """Agreed, every report heard everywhere, nothing changing, no grace timer running."""
        return not changed and not any(self.pending) and self.agreed() \
            and not self.timers_running()

    def settle_down(self, max_rounds: int) -> tuple[int, int] | None:
        """Rounds until agreement and until quiet, or None if not quiet by `max_rounds`."""
        agree = None
        for count in range(1, max_rounds + 1):
            changed = self.step()
            if agree is None and self.agreed():
                agree = count
            if self.quiet(changed):
                return agree or count, count
        return None

    def assignments(self) -> dict[int, Assignment]:
        """The agreed assignment of each side."""
        out: dict[int, Assignment] = {}
        for group, assignment in sorted(self.results.items()):
            out.setdefault(group % 2 if self.partitioned else 0, assignment)
        return out

    def membership(self) -> dict[NodeId, str]:
        """node → cluster id, from each node's side's agreed assignment."""
        out: dict[NodeId, str] = {}
        for assignment in self.assignments().values():
            out.update(assignment.membership())
        return out


# --- checks -------------------------------------------------------------------------------


def violations(sim: Simulation) -> list[str]:
    """Property violations of the current (quiet) state; empty when all hold."""
    found: list[str] = []
    for side, assignment in sim.assignments().items():
        live = {n for n in sim.locals if sim.side(n) == side}
        listed = [n for cluster in assignment.clusters for n in cluster.members]
        if sorted(listed) != sorted(live):
            found.append("not every live node in exactly one cluster")
        if any(len(c.members) > sim.cluster_size for c in assignment.clusters):
            found.append("cluster over size")
        if any(sim.locals[n].seat != assignment.seat_of(n) for n in live):
            found.append("a node does not hold its computed seat")
        group = next(g for g in sorted(sim.results) if (g % 2 if sim.partitioned else 0) == side)
        view = list(sim.views[group].values())
        if form_clusters(reversed(view), sim.cluster_size) != assignment:
            found.append("result depends on input order")
        found.extend(_term_violations(sim, assignment))
    return found


def _term_violations(sim: Simulation, assignment: Assignment) -> list[str]:
    found = []
    for cluster in assignment.clusters:
        terms = {sim.locals[n].term for n in cluster.members}
        leaders = [n for n in cluster.members if sim.locals[n].coordinator]
        if len(terms) != 1:
            found.append("members of a cluster hold different terms")
        if leaders != [cluster.coordinator]:
            found.append("not exactly one coordinator, the computed one")
    return found


def coordinator_terms(sim: Simulation) -> dict[str, tuple[NodeId, int]]:
    """cluster id → (coordinator, its term) in the quiet state."""
    return {c.id: (c.coordinator, sim.locals[c.coordinator].term)
            for a in sim.assignments().values() for c in a.clusters}


def term_regressions(before: dict[str, tuple[NodeId, int]],
                     after: dict[str, tuple[NodeId, int]]) -> int:
    """Clusters whose coordinator changed without a higher term, or whose term fell."""
    bad = 0
    for cid, (coordinator, term) in after.items():
        if cid in before:
            old_coordinator, old_term = before[cid]
            if term < old_term or (coordinator != old_coordinator and term <= old_term):
                bad += 1
    return bad


def moved(before: dict[NodeId, str], after: dict[NodeId, str], skip: Iterable[NodeId]) -> int:
    """Nodes present before and after whose cluster changed, `skip` aside."""
    skipped = set(skip)
    return sum(1 for n, c in before.items() if n in after and n not in skipped and after[n] != c)


def sort_and_chunk(nodes: Iterable[NodeId], cluster_size: int) -> dict[NodeId, str]:
    """The naive baseline: sort live node ids, cut into chunks; a cluster is its index."""
    ordered = sorted(nodes)
    return {node: str(index // cluster_size) for index, node in enumerate(ordered)}


# --- the run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    nodes: int = 1000
    cluster_size: int = 3
    events: int = 300
    groups: int = 8
    delivery: float = 0.6
    grace_rounds: int = 4
    warmup_rounds: int = 2
    partition_events: int = 20
    max_rounds: int = 60
    seed: int = 1
    per_node: bool = False


def _settle(sim: Simulation, stats: Stats, config: RunConfig, label: str) -> None:
    outcome = sim.settle_down(config.max_rounds)
    if outcome is None:
        stats.violations[f"did not converge within {config.max_rounds} rounds ({label})"] += 1
        return
    stats.rounds_agree.append(outcome[0])
    stats.rounds_quiet.append(outcome[1])
    for side, assignment in sim.assignments().items():
        live = sum(1 for n in sim.locals if sim.side(n) == side)
        stats.surplus.append(len(assignment.clusters) - cluster_count(live, sim.cluster_size))
    for problem in violations(sim):
        stats.violations[problem] += 1


def _one_event(sim: Simulation, stats: Stats, config: RunConfig) -> None:
    before = sim.membership()
    terms_before = coordinator_terms(sim)
    live = sorted(sim.locals)
    roll = sim.rng.random()
    shrink = len(live) > config.nodes * 1.1
    grow = len(live) < config.nodes * 0.9
    if (roll < 0.45 or grow) and not shrink:
        kind, subject = "join", sim.join()
    elif roll < 0.9 or len(live) < 2:
        kind, subject = "leave", sim.rng.choice(live)
        sim.leave(subject)
    else:
        kind, subject = "restart", sim.rng.choice(live)
        sim.restart(subject, away_rounds=sim.rng.randrange(1, config.grace_rounds))
    _settle(sim, stats, config, kind)
    after = sim.membership()
    count = moved(before, after, skip=[subject])
    stats.moved.append(count)
    stats.moved_by_kind.setdefault(kind, []).append(count)
    stats.baseline_moved.append(moved(sort_and_chunk(before, sim.cluster_size),
                                      sort_and_chunk(after, sim.cluster_size), skip=[subject]))
    if kind == "join" and count:
        stats.violations["a join moved an existing member"] += 1
    if kind == "restart" and after.get(subject) != before.get(subject):
        stats.violations["a restarted node did not return to its cluster"] += 1
    if term_regressions(terms_before, coordinator_terms(sim)):
        stats.violations["coordinator changed without a higher term"] += 1


def _partition(sim: Simulation, stats: Stats, config: RunConfig) -> None:
    """Split, let both sides churn and re-form, heal, and count what moved at the heal."""
    sim.split()
    _settle(sim, stats, config, "split")
    for _ in range(config.partition_events):
        if sim.rng.random() < 0.5:
            sim.join()
        else:
            sim.leave(sim.rng.choice(sorted(sim.locals)))
        _settle(sim, stats, config, "event during partition")
    before = sim.membership()
    sim.heal()
    started = len(stats.rounds_quiet)
    _settle(sim, stats, config, "heal")
    after = sim.membership()
    stats.notes["partition heal"] = (
        f"{moved(before, after, ())} of {len(after)} nodes moved; rounds to agree / quiet "
        + (f"{stats.rounds_agree[-1]} / {stats.rounds_quiet[-1]}"
           if len(stats.rounds_quiet) > started else "n/a"))


def run(config: RunConfig) -> Stats:
    """Bootstrap `config.nodes` at once, then single events, then a partition and heal."""
    sim = Simulation(config.cluster_size, groups=config.groups, delivery=config.delivery,
                     grace_rounds=config.grace_rounds, warmup_rounds=config.warmup_rounds,
                     seed=config.seed,
                     per_node=config.per_node)
    stats = Stats()
    for _ in range(config.nodes):
        sim.join()
    _settle(sim, stats, config, "bootstrap")
    stats.notes["bootstrap"] = (f"{config.nodes} nodes at once: rounds to agree / quiet "
                                f"{stats.rounds_agree[-1] if stats.rounds_agree else 'n/a'} / "
                                f"{stats.rounds_quiet[-1] if stats.rounds_quiet else 'n/a'}")
    stats.rounds_agree.clear()
    stats.rounds_quiet.clear()
    for _ in range(config.events):
        _one_event(sim, stats, config)
    event_rounds = (list(stats.rounds_agree), list(stats.rounds_quiet))
    if config.partition_events >= 0:
        _partition(sim, stats, config)
    stats.rounds_agree[:], stats.rounds_quiet[:] = event_rounds
    sizes = Counter(len(c.members) for a in sim.assignments().values() for c in a.clusters)
    stats.notes["final"] = (f"{len(sim.locals)} nodes in {sum(sizes.values())} clusters "
                            f"(k = {cluster_count(len(sim.locals), config.cluster_size)}); "
                            "sizes " + ", ".join(f"{s}: {n}" for s, n in sorted(sizes.items())))
    return stats


def _summary(values: list[int]) -> str:
    if not values:
        return "n/a"
    return f"mean {statistics.fmean(values):.2f}, max {max(values)}"


def report(config: RunConfig, stats: Stats, elapsed_s: float) -> str:
    lines = [f"cluster_sim: {config}", ""]
    events = len(stats.moved)
    lines.append(f"members moved per event     {_summary(stats.moved)}  ({events} events)")
    for kind, values in sorted(stats.moved_by_kind.items()):
        lines.append(f"  {kind:<25} {_summary(values)}  ({len(values)})")
    lines.append(f"sort-and-chunk baseline     {_summary(stats.baseline_moved)}")
    ours = statistics.fmean(stats.moved) if stats.moved else 0.0
    base = statistics.fmean(stats.baseline_moved) if stats.baseline_moved else 0.0
    ratio = f"{base / ours:.0f}x fewer moves" if ours else f"baseline moved {base:.2f}, ours 0"
    lines.append(f"ratio baseline / rules      {ratio}")
    lines.append(f"rounds to agree per event   {_summary(stats.rounds_agree)}")
    lines.append(f"rounds to quiet per event   {_summary(stats.rounds_quiet)}"
                 f"  (grace {config.grace_rounds} rounds)")
    lines.append(f"clusters beyond k when quiet {_summary(stats.surplus)}")
    for name, text in stats.notes.items():
        lines.append(f"{name:<27} {text}")
    total = sum(stats.violations.values())
    lines.append(f"violations                  {total}")
    lines.extend(f"  {problem}: {count}" for problem, count in sorted(stats.violations.items()))
    lines.append(f"elapsed                     {elapsed_s:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=RunConfig.nodes)
    parser.add_argument("--cluster-size", type=int, default=RunConfig.cluster_size)
    parser.add_argument("--events", type=int, default=RunConfig.events)
    parser.add_argument("--groups", type=int, default=RunConfig.groups,
                        help="view groups (ignored with --per-node)")
    parser.add_argument("--delivery", type=float, default=RunConfig.delivery,
                        help="chance per round that a report reaches another group")
    parser.add_argument("--grace-rounds", type=int, default=RunConfig.grace_rounds)
    parser.add_argument("--warmup-rounds", type=int, default=RunConfig.warmup_rounds,
                        help="rounds a node without a seat listens before taking one")
    parser.add_argument("--partition-events", type=int, default=RunConfig.partition_events,
                        help="events during the partition (-1: no partition)")
    parser.add_argument("--max-rounds", type=int, default=RunConfig.max_rounds)
    parser.add_argument("--seed", type=int, default=RunConfig.seed)
    parser.add_argument("--per-node", action="store_true",
                        help="every node its own view group, running advance() itself")
    args = parser.parse_args(argv)
    config = RunConfig(args.nodes, args.cluster_size, args.events, args.groups, args.delivery,
                       args.grace_rounds, args.warmup_rounds, args.partition_events,
                       args.max_rounds, args.seed, args.per_node)
    started = time.perf_counter()
    stats = run(config)
    print(report(config, stats, time.perf_counter() - started))
    return 1 if stats.violations else 0


if __name__ == "__main__":
    sys.exit(main())
