"""akitactl verbs for tasks: submit, task, tasks, cancel.

They talk to the executor's own socket through `akita.Client`, as any application does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from akita.cli import common
from akita.client import Client, TaskFailed
from akita.tasks.queue import TaskState
from akita.tasks.registry import CAPABILITY, MAX_PRIORITY, MIN_PRIORITY
from akita.text import clean

# The keys of `task ID --json`, in this order; "result" or "error" follows once finished.
TASK_FIELDS = ("id", "name", "state", "priority", "attempts", "ran_on")


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    def verb(name: str, handler: Callable[[argparse.Namespace], int], summary: str,
             description: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, parents=[parent], help=summary, description=description)
        common.add_json(parser)
        parser.set_defaults(func=handler)
        return parser

    parser = verb("submit", cmd_submit, "submit a task",
                  "Submit a task of type NAME and print its id once the node holds it "
                  "durably. With --wait, wait for it and print its result as JSON (exit 1 "
                  "if it failed, timed out or was cancelled).")
    parser.add_argument("name", metavar="NAME", help="the task type, e.g. akita.echo")
    parser.add_argument("--args", default="[]", metavar="JSON",
                        help="arguments: a JSON list (positional) or object (keywords); "
                             "default []")
    parser.add_argument("--priority", type=_priority, default=5, metavar="N",
                        help=f"{MIN_PRIORITY} (lowest) to {MAX_PRIORITY} (highest); default 5")
    parser.add_argument("--requires", type=_capabilities, action="extend", default=[],
                        metavar="CAP[,CAP…]",
                        help="capabilities the node that runs it must declare ([tasks] "
                             "capabilities), e.g. gpu; a node lacking one hands the task to "
                             "a peer that declares it")
    parser.add_argument("--wait", action="store_true", help="wait for the result")
    parser.add_argument("--timeout", type=common.positive_seconds, default=None, metavar="S",
                        help="with --wait: give up after S seconds (exit 1); default: no limit")
    parser = verb("task", cmd_task, "show one task",
                  "Show a task: its state, priority, attempts, the node it ran on, and its "
                  "result or error.")
    parser.add_argument("task_id", metavar="ID")
    parser = verb("tasks", cmd_tasks, "list tasks",
                  "List the latest tasks the node knows (see --limit), oldest first.")
    parser.add_argument("--state", choices=[s.value for s in TaskState], metavar="S",
                        help="only tasks in state S: " + ", ".join(s.value for s in TaskState))
    parser.add_argument("--limit", type=int, default=1000, metavar="N",
                        help="show the latest N (default 1000)")
    parser = verb("cancel", cmd_cancel, "cancel a queued or running task",
                  "Cancel a task: a queued one never runs, a running one's process is "
                  "killed. Exit 1 if it had already finished.")
    parser.add_argument("task_id", metavar="ID")


def _priority(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number from {MIN_PRIORITY} to "
                                         f"{MAX_PRIORITY}") from None
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise argparse.ArgumentTypeError(f"expected a whole number from {MIN_PRIORITY} to "
                                         f"{MAX_PRIORITY}")
    return value


def _capabilities(raw: str) -> list[str]:
    names = [name.strip() for name in raw.split(",") if name.strip()]
    bad = [name for name in names if not CAPABILITY.match(name)]
    if not names or bad:
        raise argparse.ArgumentTypeError("expected capability names (1-64 letters, digits, "
                                         "'.', '_' and '-'), comma-separated")
    return names


def _client(args: argparse.Namespace) -> Client:
    return Client(config=common.load_config(args))


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        task_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        return common.usage_error(f"--args is not valid JSON: {exc}")
    if not isinstance(task_args, (list, dict)):
        return common.usage_error("--args must be a JSON list (positional) or object (keywords)")
    with _client(args) as client:
        task_id = client.submit(args.name, task_args, priority=args.priority,
                                requires=args.requires)
        if not args.wait:
            if args.json:
                common.print_json({"id": task_id})
            else:
                print(task_id)
            return common.EXIT_OK
        try:
            result = client.wait(task_id, args.timeout)
        except TimeoutError:
            print(f"akitactl: task {task_id} did not finish within {args.timeout:g} s "
                  "(it goes on; see `akitactl task ID`)", file=sys.stderr)
            return common.EXIT_FAILED
        except TaskFailed as exc:
            if args.json:
                common.print_json({"id": task_id, "state": exc.state, "error": {
                    "type": exc.type, "message": exc.message, "traceback": exc.traceback}})
            else:
                print(f"akitactl: {exc}", file=sys.stderr)
            return common.EXIT_FAILED
    if args.json:
        common.print_json({"id": task_id, "state": "succeeded", "result": result})
    else:
        print(json.dumps(result, default=_jsonable))
    return common.EXIT_OK


def task_json(view: dict[str, Any]) -> dict[str, Any]:
    """The `task ID --json` form of a task's view."""
    out = {key: view.get(key) for key in TASK_FIELDS}
    for key in ("result", "error"):
        if key in view:
            out[key] = view[key]
    return out


def cmd_task(args: argparse.Namespace) -> int:
    with _client(args) as client:
        view = client.status(args.task_id)
    if args.json:
        common.print_json(task_json(view))
        return common.EXIT_OK
    rows = [[key, _show(view.get(key))] for key in (*TASK_FIELDS, "args")]
    rows += [[key, _show(view[key])] for key in ("requires", "origin", "waiting_for")
             if view.get(key)]
    rows += [[key, _when(view.get(key))] for key in ("submitted_ts", "started_ts",
                                                     "finished_ts")]
    if "result" in view:
        rows.append(["result", json.dumps(view["result"], default=_jsonable)])
    error = view.get("error")
    if error:
        rows.append(["error", f"{error.get('type')}: {error.get('message')}"])
    # A delegated task's error comes from the peer that ran it: escaped, line by line.
    for key, value in rows:
        print(f"{key + ':':<14}{clean(value, common.TABLE_CELL_CHARS)}")
    if error and error.get("traceback"):
        print()
        for line in str(error["traceback"]).rstrip().splitlines():
            print(clean(line, common.TABLE_CELL_CHARS))
    return common.EXIT_OK


def cmd_tasks(args: argparse.Namespace) -> int:
    with _client(args) as client:
        found = client.tasks(args.state, limit=args.limit)
    if args.json:
        common.print_json(found)
        return common.EXIT_OK
    now = time.time()
    rows = [[t["id"], t["name"], t["state"], t["priority"], t["attempts"],
             (t.get("ran_on") or "-")[:12],
             common.format_duration(now - t["submitted_ts"]) if t.get("submitted_ts") else "-"]
            for t in found]
    common.print_table(["ID", "NAME", "STATE", "PRI", "ATTEMPTS", "RAN_ON", "AGE"], rows)
    return common.EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        cancelled = client.cancel(args.task_id)
        if cancelled:
            state = "cancelled"
        else:
            state = client.status(args.task_id)["state"]
    if args.json:
        common.print_json({"id": args.task_id, "cancelled": cancelled, "state": state})
    elif cancelled:
        print(f"cancelled {args.task_id}")
    else:
        print(f"akitactl: task {args.task_id} had already finished ({state})", file=sys.stderr)
    return common.EXIT_OK if cancelled else common.EXIT_FAILED


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=_jsonable)
    return str(value)


def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)
