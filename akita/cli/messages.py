"""akitactl verbs for inter-cluster messages: send and subscribe.

Both talk to the node's gateway directly (run_dir/gateway.sock) rather than through the
control socket: a send waits for its end-to-end acknowledgement for as long as its deadline,
longer than the supervisor keeps a forwarded request. `subscribe` also reads the node's bus.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from akita import subscription
from akita.cli import common
from akita.text import clean

# The keys `subscribe --json` prints, in this order.
MESSAGE_KEYS = ("from", "cluster", "topic", "payload")


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "send", parents=[parent], help="send a message to another cluster's subscribers",
        description="Send a message on TOPIC to the members of cluster CLUSTER_ID that "
                    "subscribe to it, and wait until its coordinator confirms they got it. "
                    "Retried while the route is down; exit 0 once delivered, 1 with the "
                    "reason when the deadline passes first.")
    parser.add_argument("--cluster", required=True, metavar="CLUSTER_ID",
                        help="the target cluster (see akitactl clusters)")
    parser.add_argument("topic", metavar="TOPIC")
    parser.add_argument("payload", metavar="JSON", help="the payload: any JSON value")
    parser.add_argument("--deadline", type=float, default=0.0, metavar="S",
                        help="give up after S seconds (default: [cluster] message_deadline)")
    common.add_json(parser)
    parser.set_defaults(func=cmd_send)

    parser = sub.add_parser(
        "subscribe", parents=[parent], help="follow messages arriving for this node",
        description="Advertise TOPIC_PREFIX (every topic starting with it) and print each "
                    "message that arrives at this node for it: with --json one JSON object "
                    "per line, {\"from\", \"cluster\", \"topic\", \"payload\"} (from: the "
                    "sending node; cluster: its cluster). Stops after N messages or S "
                    "seconds, whichever comes first (default: never).")
    parser.add_argument("prefix", metavar="TOPIC_PREFIX")
    parser.add_argument("--count", type=int, default=0, metavar="N",
                        help="exit after N messages")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="exit after S seconds")
    common.add_json(parser)
    parser.set_defaults(func=cmd_subscribe)


def cmd_send(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        return common.usage_error(f"the payload is not JSON: {exc}")
    if args.deadline < 0:
        return common.usage_error("--deadline must be positive")
    config = common.load_config(args)
    deadline_s = args.deadline or config.cluster.message_deadline
    try:
        done = subscription.send(config.node.run_dir, args.cluster, args.topic, payload,
                                 deadline_s=deadline_s)
    except subscription.MessageUndeliverable as exc:
        print(f"akitactl: undeliverable: {exc.message}", file=sys.stderr)
        return common.EXIT_FAILED
    if args.json:
        common.print_json(done)
    else:
        count = len(done["delivered"])
        print(f"delivered {done['id']} to {count} subscriber{'s' if count != 1 else ''} in "
              f"cluster {done['cluster']} (coordinator {done['coordinator']}, "
              f"{done['attempts']} attempt{'s' if done['attempts'] != 1 else ''})")
    return common.EXIT_OK


def cmd_subscribe(args: argparse.Namespace) -> int:
    if args.count < 0 or (args.timeout is not None and args.timeout < 0):
        return common.usage_error("--count and --timeout must not be negative")
    config = common.load_config(args)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    seen = 0
    with subscription.Subscription(config.node.run_dir, args.prefix) as sub:
        while not args.count or seen < args.count:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            message = sub.get(remaining)
            if message is None:
                break
            seen += 1
            _print(message, args.json)
    return common.EXIT_OK


def _print(message: dict[str, Any], as_json: bool) -> None:
    if as_json:
        line = common.json_line({key: message[key] for key in MESSAGE_KEYS})
    else:
        # The topic and sender come from another cluster: escaped (the payload is JSON).
        line = (f"{clean(message['topic'])}  from {clean(message['from'])} (cluster "
                f"{clean(message['cluster'] or '-')})  {common.json_line(message['payload'])}")
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
