"""akitactl ledger tail|verify|heads: read the node's ledger file directly (read-only).

All three verbs open data_dir/ledger.db themselves, so they work whether or not the node runs,
and never disturb the writer (WAL readers do not block it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from akita.cli import common
from akita.ledger import chain

MAX_DATA_CHARS = 100  # the table shortens longer data; --json prints it whole


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    group = sub.add_parser("ledger", parents=[parent], help="show or verify the node's ledger",
                           description="Read the node's ledger file (data_dir/ledger.db) "
                                       "directly; works with or without a running node.")
    verbs = group.add_subparsers(dest="ledger_verb", metavar="VERB", required=True)

    tail = verbs.add_parser("tail", parents=[parent], help="the last events of the feed",
                            description="Print the last N events of this node's feed "
                                        "(oldest first): seq, time, kind and data.")
    tail.add_argument("-n", type=common.positive_int, default=20, metavar="N",
                      help="how many events (default 20)")
    tail.add_argument("--kind", metavar="PREFIX", help="only kinds starting with PREFIX, "
                                                       "e.g. task. or worker.exited")
    tail.add_argument("--feed", metavar="NODE_ID", help="another feed held here (default: own)")
    common.add_json(tail)
    tail.set_defaults(func=cmd_tail)

    verify = verbs.add_parser(
        "verify", parents=[parent], help="check the hash chain and signed checkpoints",
        description="Check that the feed's sequence numbers are contiguous from 1, that "
                    "every event's hash and prev hash chain up, and that every signed "
                    "checkpoint verifies and matches the chain. Exit 0 when intact, 1 "
                    "naming the feed and the first bad sequence number otherwise.")
    verify.add_argument("--all", action="store_true",
                        help="every feed held in the file, not only this node's own")
    common.add_json(verify)
    verify.set_defaults(func=cmd_verify)

    heads = verbs.add_parser(
        "heads", parents=[parent], help="the feeds held here and their heads",
        description="List every feed held in the ledger file, this node's own first, then "
                    "those replicated from peers: last seq, last signed checkpoint, head hash "
                    "and the proofs of a fork stored against the feed.")
    common.add_json(heads)
    heads.set_defaults(func=cmd_heads)


def cmd_tail(args: argparse.Namespace) -> int:
    path = chain.db_path(common.load_config(args))
    try:
        events = chain.tail(path, args.n, kind_prefix=args.kind, feed=args.feed)
    except chain.LedgerNotFound as exc:
        return _not_found(exc)
    if args.json:
        common.print_json([_event_dict(event) for event in events])
        return common.EXIT_OK
    common.print_table(["SEQ", "TIME", "KIND", "DATA"],
                       [[e.seq, _local_time(e.ts), e.kind, _short(e.data)] for e in events])
    return common.EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    path = chain.db_path(common.load_config(args))
    try:
        feed = None if args.all else chain.own_feed(path)
        results = chain.verify(path, feed) if args.all or feed else []
    except chain.LedgerNotFound as exc:
        return _not_found(exc)
    intact = all(result.ok for result in results)
    if args.json:
        common.print_json({"ok": intact, "feeds": [_result_dict(r) for r in results]})
    elif not results:
        print("the ledger holds no feed yet")
    for result in results if not args.json else ():
        if result.ok:
            print(f"feed {result.feed}: intact, {result.events} events")
        else:
            print(f"feed {result.feed}: BROKEN at seq {result.first_bad_seq}: {result.reason} "
                  f"({result.events} events before it verified)")
    return common.EXIT_OK if intact else common.EXIT_FAILED


def cmd_heads(args: argparse.Namespace) -> int:
    path = chain.db_path(common.load_config(args))
    try:
        held = chain.heads(path)
    except chain.LedgerNotFound as exc:
        return _not_found(exc)
    if args.json:
        common.print_json({"feeds": [_head_dict(head) for head in held]})
        return common.EXIT_OK
    common.print_table(["FEED", "OWN", "SEQ", "SIGNED", "HEAD", "FORKS"],
                       [[h.feed, "yes" if h.local else "", h.seq, h.signed_seq,
                         h.hash[:8].hex(), h.forks or ""] for h in held])
    return common.EXIT_OK


def _not_found(exc: chain.LedgerNotFound) -> int:
    print(f"akitactl: {exc}", file=sys.stderr)
    return common.EXIT_NOT_RUNNING


def _event_dict(event: chain.Event) -> dict[str, Any]:
    return {"feed": event.feed, "seq": event.seq, "ts": event.ts, "kind": event.kind,
            "data": event.data}


def _head_dict(head: chain.FeedHead) -> dict[str, Any]:
    return {"feed": head.feed, "own": head.local, "seq": head.seq, "hash": head.hash.hex(),
            "signed_seq": head.signed_seq, "forks": head.forks}


def _result_dict(result: chain.VerifyResult) -> dict[str, Any]:
    return {"feed": result.feed, "ok": result.ok, "events": result.events,
            "first_bad_seq": result.first_bad_seq, "reason": result.reason}


def _local_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def _short(data: Any) -> str:
    text = json.dumps(data, separators=(",", ":"), default=_jsonable)
    return text if len(text) <= MAX_DATA_CHARS else text[:MAX_DATA_CHARS - 1] + "…"


def _jsonable(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else str(value)
