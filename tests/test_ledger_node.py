"""The ledger inside a real node: the supervisor starts, kills and restarts the writer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable

from akita.ledger import chain
from tests.helpers import REPO, Node, wait_for

EVENTS_PER_SENDER = 5_000


def test_kill9_ledger_worker_under_the_supervisor(make_node: Callable[..., Node]) -> None:
    node = make_node({"supervisor": {"workers": "ledger"}})
    node.start()
    db = node.data_dir / chain.DB_FILE
    senders = []
    for k in range(2):
        out = node.root / f"sender{k}.json"
        code = (f"from tests.test_ledger_worker import sender_main; sender_main("
                f"{str(node.run_dir)!r}, 'n{k}', {EVENTS_PER_SENDER}, {str(out)!r})")
        senders.append((subprocess.Popen([sys.executable, "-c", code], cwd=REPO), out))
    wait_for(lambda: (chain.head(db) or ("", 0, b""))[1] >= 2_000, 30,
             "the feed to reach seq 2000 before the kill")
    victim = node.worker("ledger")["pid"]
    os.kill(victim, signal.SIGKILL)

    def restarted() -> bool:
        worker = node.worker("ledger")
        return bool(worker["state"] == "running" and worker["pid"] != victim)

    wait_for(restarted, 20, "the supervisor restarting the ledger worker")
    for proc, _out in senders:
        assert proc.wait(90) == 0
    stored = Counter((e.data["sender"], e.data["i"])
                     for e in chain.read_events(db, kind_prefix="test.kill"))
    assert max(stored.values()) == 1, "an event was written twice"
    for k, (_proc, out) in enumerate(senders):
        result = json.loads(out.read_text())
        assert result["ok"], f"sender {k} could not flush"
        lost = [i for i in result["acked"] if (f"n{k}", i) not in stored]
        assert not lost, f"sender {k}: {len(lost)} acknowledged events lost"
    assert len(stored) == 2 * EVENTS_PER_SENDER
    done = node.ctl("ledger", "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    head_seq = chain.head(db)[1]  # type: ignore[index]
    tail = node.ctl_json("ledger", "tail", "-n", "1")
    assert tail[0]["seq"] >= head_seq >= 2 * EVENTS_PER_SENDER  # the node may add its own
