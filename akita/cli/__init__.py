"""akitactl: the operator's command line for a running node.

Each group of verbs lives in its own module with a `register(subparsers, parent)` function;
`parent` is the parser holding the options every verb takes (-c, --json). A verb's handler
takes the parsed arguments and returns the exit code.

Exit codes: 0 success, 1 the request failed, 2 bad usage or config, 3 no node running
(or not answering).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from akita.cli import common
from akita.errors import AkitaError, ConfigError, NodeNotResponding, NodeNotRunning

# Verb groups; a module that is not there yet is skipped so the rest keep working.
VERB_MODULES = ("akita.cli.node", "akita.cli.ledger", "akita.cli.tasks", "akita.cli.cluster",
                "akita.cli.messages")


def build_parser() -> argparse.ArgumentParser:
    parent = common.parent_parser()
    parser = argparse.ArgumentParser(
        prog="akitactl", parents=[parent],
        description="Control and inspect a running Akita Genesis node.",
        epilog="Exit codes: 0 ok, 1 request failed, 2 bad usage or config, 3 no node running.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub, parent)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"akitactl: {exc}", file=sys.stderr)
        return common.EXIT_USAGE
    except (NodeNotRunning, NodeNotResponding) as exc:
        print(f"akitactl: {exc}", file=sys.stderr)
        return common.EXIT_NOT_RUNNING
    except AkitaError as exc:
        print(f"akitactl: {exc}", file=sys.stderr)
        return common.EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `akitactl events | head`
        return 0
