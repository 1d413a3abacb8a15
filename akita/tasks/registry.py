"""Task types: the `@task` decorator, argument checking, built-ins and command tasks.

A task type is a name bound to something this node will run: a Python callable registered
with `@akita.task("name", timeout=…)` in a module listed in ``[tasks] modules``, or a command
line declared as ``[command:NAME]`` in the config. Nothing else runs: a submit, or a peer
handing in a task (`task.run_for`), can only name a type in the node's `TaskTable`. A task may
also require capabilities (`requires`), matched against the ``[tasks] capabilities`` a node
declares.

Arguments are checked at submit time against the callable's signature (count, names, and
the plain builtin annotations int, float, str, bool, list, dict, bytes and their `| None`
forms), so a mistake is refused with one clear line instead of failing later in a task
process. The check is precomputed per type (`ArgSpec`): submits are hot.

This module has no I/O and imports nothing heavy: user task modules import it (through
`import akita`), and so does every task process.
"""

from __future__ import annotations

import importlib
import inspect
import re
import time
import types as _types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from akita.errors import AkitaError

TASK_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
TASK_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
CAPABILITY = TASK_NAME
MAX_REQUIRES = 16
MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 0, 9, 5
_PLACEHOLDER = re.compile(r"\{(\d+)\}")

F = TypeVar("F", bound=Callable[..., Any])


class TaskDefinitionError(AkitaError):
    """A task type is declared wrongly (bad name, declared twice, module not importable)."""


# --- the running task's context -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a running handler may know about itself: its id (for idempotency), type, attempt."""

    id: str
    name: str
    attempt: int


_current: TaskContext | None = None


def current_task() -> TaskContext:
    """The task this process is running now; a handler calls it to learn its task id."""
    if _current is None:
        raise RuntimeError("akita.current_task() called outside a running task")
    return _current


def _set_current(context: TaskContext | None) -> None:
    global _current
    _current = context


# --- argument specs -------------------------------------------------------------------------

# Annotations we check, by the names they travel under (msgpack has no tuples: lists).
_TYPE_NAMES: dict[Any, str] = {int: "int", float: "float", str: "str", bool: "bool",
                               list: "list", tuple: "list", dict: "dict", bytes: "bytes",
                               type(None): "None"}
_ACCEPTS: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list, tuple),
    "dict": (dict,), "bytes": (bytes,), "None": (type(None),)}


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter: `kind` is "positional" (only), "either" or "keyword" (only)."""

    name: str
    kind: str
    required: bool
    types: tuple[str, ...] | None = None  # names from _ACCEPTS; None: not checked


@dataclass(frozen=True, slots=True)
class ArgSpec:
    """The arguments a task type accepts, precomputed from its signature."""

    params: tuple[Param, ...]
    var_positional: bool = False
    var_keyword: bool = False
    # Derived from the above at construction: the check runs on every submit.
    positional: tuple[Param, ...] = field(init=False, compare=False)
    min_positional: int = field(init=False, compare=False)
    max_positional: int | None = field(init=False, compare=False)
    required_keywords: tuple[str, ...] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        positional = tuple(p for p in self.params if p.kind != "keyword")
        object.__setattr__(self, "positional", positional)
        object.__setattr__(self, "min_positional", sum(1 for p in positional if p.required))
        object.__setattr__(self, "max_positional",
                           None if self.var_positional else len(positional))
        object.__setattr__(self, "required_keywords", tuple(
            p.name for p in self.params if p.kind == "keyword" and p.required))

    def describe(self) -> str:
        parts = [p.name + ("" if p.required else "=…") for p in self.params]
        if self.var_positional:
            parts.append("*args")
        if self.var_keyword:
            parts.append("**kwargs")
        return "(" + ", ".join(parts) + ")"


def _annotation_types(annotation: Any) -> tuple[str, ...] | None:
    """Type names for a plain builtin annotation (or a union of them); None otherwise."""
    if annotation in _TYPE_NAMES:
        return (_TYPE_NAMES[annotation],)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, _types.UnionType):
        names: list[str] = []
        for arg in typing.get_args(annotation):
            sub = _annotation_types(arg)
            if sub is None:
                return None
            names.extend(sub)
        return tuple(names)
    if origin in _TYPE_NAMES:  # list[int], dict[str, int]: the container is checked
        return (_TYPE_NAMES[origin],)
    return None


def spec_of(fn: Callable[..., Any]) -> ArgSpec:
    """The `ArgSpec` of a Python callable (annotations it cannot resolve are not checked)."""
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, AttributeError, TypeError, SyntaxError):
        hints = {}  # an annotation that does not resolve: check counts and names only
    kinds = {inspect.Parameter.POSITIONAL_ONLY: "positional",
             inspect.Parameter.POSITIONAL_OR_KEYWORD: "either",
             inspect.Parameter.KEYWORD_ONLY: "keyword"}
    params: list[Param] = []
    var_positional = var_keyword = False
    for p in inspect.signature(fn).parameters.values():
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            var_positional = True
        elif p.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
        else:
            types = _annotation_types(hints[p.name]) if p.name in hints else None
            params.append(Param(p.name, kinds[p.kind], p.default is inspect.Parameter.empty,
                                types))
    return ArgSpec(tuple(params), var_positional, var_keyword)


def _type_error(param: Param, value: Any) -> str | None:
    if param.types is None:
        return None
    for name in param.types:
        accepted = _ACCEPTS[name]
        # bool is an int to Python, but a true/false where a number belongs is a mistake.
        if isinstance(value, accepted) and not (isinstance(value, bool) and name != "bool"):
            return None
    return (f"argument {param.name!r} expects {' or '.join(param.types)}, "
            f"got {type(value).__name__}")


def check_args(spec: ArgSpec, args: Any) -> str | None:
    """Why `args` (a list: positional, or a dict: keywords) does not fit `spec`; None if it does."""
    if isinstance(args, (list, tuple)):
        return _check_positional(spec, args)
    if isinstance(args, dict):
        return _check_keywords(spec, args)
    return f"args must be a list (positional) or a map (keywords), got {type(args).__name__}"


def _check_positional(spec: ArgSpec, args: list[Any] | tuple[Any, ...]) -> str | None:
    count = len(args)
    low, high = spec.min_positional, spec.max_positional
    if count < low or (high is not None and count > high):
        if low == high:
            wanted = f"{low} argument{'s' if low != 1 else ''}"
        elif high is None:
            wanted = f"at least {low} argument{'s' if low != 1 else ''}"
        elif low == 0:
            wanted = f"at most {high} argument{'s' if high != 1 else ''}"
        else:
            wanted = f"{low} to {high} arguments"
        return f"takes {wanted} {spec.describe()}, got {count}"
    for param, value in zip(spec.positional, args):
        if param.types is not None:
            error = _type_error(param, value)
            if error:
                return error
    if spec.required_keywords:
        return f"keyword argument {spec.required_keywords[0]!r} is required: pass args as a map"
    return None


def _check_keywords(spec: ArgSpec, args: dict[str, Any]) -> str | None:
    by_name = {p.name: p for p in spec.params}
    for key, value in args.items():
        param = by_name.get(key) if isinstance(key, str) else None
        if param is None or param.kind == "positional":
            if spec.var_keyword and param is None and isinstance(key, str):
                continue
            return f"unexpected argument {key!r}; takes {spec.describe()}"
        error = _type_error(param, value)
        if error:
            return error
    for param in spec.params:
        if param.required and param.name not in args:
            return f"missing argument {param.name!r}; takes {spec.describe()}"
    return None


# --- task types -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskType:
    """A runnable task type: a Python callable (`fn`) or a command line (`argv`)."""

    name: str
    spec: ArgSpec
    timeout_s: float | None = None   # None: the node's [tasks] task_timeout
    fn: Callable[..., Any] | None = field(default=None, compare=False)
    argv: tuple[str, ...] | None = None

    @property
    def kind(self) -> str:
        return "command" if self.argv is not None else "python"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "timeout_s": self.timeout_s,
                "signature": self.spec.describe()}


# Types registered by `@task` at import time, by name. A process holds one registry: the
# modules it imported decide what is in it, and the executor builds its `TaskTable` from the
# modules the config names, never from whatever else happened to be imported.
_REGISTRY: dict[str, TaskType] = {}
_BY_MODULE: dict[str, list[str]] = {}


def task(name: str | Callable[..., Any] | None = None, *, timeout: float | None = None
         ) -> Any:
    """Register a function as a task type: ``@task("resize", timeout=30)``.

    Used bare (``@task``), the name is ``module.function``. `timeout` in seconds overrides
    ``[tasks] task_timeout`` for this type.
    """
    if callable(name):
        return task()(name)

    def register(fn: F) -> F:
        task_name = name or f"{fn.__module__}.{fn.__name__}"
        if not isinstance(task_name, str) or not TASK_NAME.match(task_name):
            raise TaskDefinitionError(f"task name {task_name!r}: use 1-64 letters, digits, "
                                      "'.', '_' and '-'")
        if timeout is not None and not timeout > 0:
            raise TaskDefinitionError(f"task {task_name!r}: timeout must be positive seconds")
        existing = _REGISTRY.get(task_name)
        if existing is not None and existing.fn is not None and \
                _qualname(existing.fn) != _qualname(fn):
            raise TaskDefinitionError(f"task {task_name!r} is declared twice: by "
                                      f"{_qualname(existing.fn)} and {_qualname(fn)}")
        _REGISTRY[task_name] = TaskType(task_name, spec_of(fn), timeout, fn)
        _BY_MODULE.setdefault(fn.__module__, []).append(task_name)
        return fn

    return register


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{getattr(fn, '__qualname__', fn)}"


def _where(exc: BaseException) -> str:
    """" (at FILE:LINE)" of the innermost frame of `exc`'s traceback."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def registered(name: str) -> TaskType | None:
    """The type registered under `name` in this process (a task process looks types up here)."""
    return _REGISTRY.get(name)


# --- built-ins ------------------------------------------------------------------------------


@task("akita.echo")
def echo(value: Any = None) -> Any:
    """Return `value` unchanged: the smallest task there is (tests, benchmarks, health checks)."""
    return value


@task("akita.sleep")
def sleep(seconds: float) -> float:
    """Sleep `seconds`, then return them ([tasks] task_timeout applies)."""
    time.sleep(seconds)
    return seconds


BUILTIN_MODULE = __name__


# --- command tasks --------------------------------------------------------------------------


def command_spec(argv: tuple[str, ...]) -> ArgSpec:
    """A command's args: one positional per placeholder {0}…{N}, each a string or number."""
    indexes = [int(m) for item in argv for m in _PLACEHOLDER.findall(item)]
    count = max(indexes) + 1 if indexes else 0
    scalar = ("str", "int", "float")
    return ArgSpec(tuple(Param(f"arg{i}", "positional", True, scalar) for i in range(count)))


def command_argv(template: tuple[str, ...] | list[str], args: list[Any]) -> list[str]:
    """`template` with each {i} replaced by str(args[i]); nothing else is interpreted."""
    def fill(match: re.Match[str]) -> str:
        return str(args[int(match.group(1))])

    return [_PLACEHOLDER.sub(fill, item) for item in template]


# --- submissions ----------------------------------------------------------------------------


class Submission(NamedTuple):
    """A submitted task that passed every check; `requires`: capabilities it needs, sorted."""

    id: str
    name: str
    args: Any
    priority: int
    requires: tuple[str, ...] = ()


class Refusal(NamedTuple):
    """Why a submitted task is refused: `code` for programs, `message` for people."""

    # unknown_task, bad_args, bad_request; and from the executor: queue_full, too_large,
    # disk_full, missing_capability
    code: str
    message: str


def parse_requires(value: Any) -> tuple[str, ...] | str:
    """The sorted capability names of a task's ``requires`` (a list of names), or why not."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or len(value) > MAX_REQUIRES or not all(
            isinstance(item, str) and CAPABILITY.match(item) for item in value):
        return (f"requires must be a list of at most {MAX_REQUIRES} capability names "
                f"(1-64 letters, digits, '.', '_' and '-'), got {value!r}")
    return tuple(sorted(set(value)))


# --- the node's table -----------------------------------------------------------------------


class TaskTable:
    """Every task type this node runs: built-ins, the config's modules and its commands."""

    def __init__(self, types: dict[str, TaskType], modules: tuple[str, ...] = ()) -> None:
        self.types = types
        self.modules = modules

    @classmethod
    def load(cls, modules: tuple[str, ...] | list[str],
             commands: dict[str, Any] | None = None) -> TaskTable:
        """Import `modules` and collect their types; add `commands` (name → CommandTask)."""
        types = {name: _REGISTRY[name] for name in _BY_MODULE.get(BUILTIN_MODULE, [])}
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise TaskDefinitionError(f"[tasks] modules: cannot import {module!r}: "
                                          f"{exc}") from None
            # Whatever else a module raises while importing is the module's bug: say what
            # and where on one line.
            except Exception as exc:  # noqa: BLE001
                raise TaskDefinitionError(f"[tasks] modules: importing {module!r} failed: "
                                          f"{type(exc).__name__}: {exc}{_where(exc)}") from None
            # A module imported earlier registered its types then; the index remembers them.
            for name in _BY_MODULE.get(module, []):
                types[name] = _REGISTRY[name]
        for name, command in (commands or {}).items():
            if name in types:
                owner = types[name].fn
                raise TaskDefinitionError(f"[command:{name}] names a task type that "
                                          f"{_qualname(owner) if owner else 'another'} "
                                          "already declares")
            argv = tuple(command.argv)
            types[name] = TaskType(name, command_spec(argv), command.timeout or None, argv=argv)
        return cls(types, tuple(modules))

    def get(self, name: str) -> TaskType | None:
        return self.types.get(name)

    def check(self, name: Any, args: Any) -> str | None:
        """Why a submit of `name` with `args` is refused; None when it is fine."""
        task_type = self.types.get(name) if isinstance(name, str) else None
        if task_type is None:
            known = ", ".join(sorted(self.types)) or "none"
            return f"unknown task type {name!r} (this node runs: {known})"
        error = check_args(task_type.spec, args)
        return f"{name}: {error}" if error else None

    def parse(self, spec: Any) -> Submission | Refusal:
        """Check one submitted task, a map {id, name, args, priority, requires?}."""
        if not isinstance(spec, dict):
            return Refusal("bad_request", "each task is a map {id, name, args, priority}")
        task_id, name = spec.get("id"), spec.get("name")
        args, priority = spec.get("args", []), spec.get("priority", DEFAULT_PRIORITY)
        if not isinstance(task_id, str) or not TASK_ID.match(task_id):
            return Refusal("bad_request", "a task id is 8-64 letters, digits, '-' or '_'")
        task_type = self.types.get(name) if isinstance(name, str) else None
        if task_type is None:
            return Refusal("unknown_task", self.check(name, args) or "")
        if type(priority) is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            return Refusal("bad_args", f"priority must be a whole number from {MIN_PRIORITY} "
                                       f"to {MAX_PRIORITY}, got {priority!r}")
        problem = check_args(task_type.spec, args)
        if problem:
            return Refusal("bad_args", f"{task_type.name}: {problem}")
        requires = parse_requires(spec.get("requires"))
        if isinstance(requires, str):
            return Refusal("bad_request", requires)
        return Submission(task_id, task_type.name, args, priority, requires)

    def commands(self) -> dict[str, list[str]]:
        """name → argv template of every command type (sent to each task process)."""
        return {name: list(t.argv) for name, t in self.types.items() if t.argv is not None}
