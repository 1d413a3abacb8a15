"""Configuration: one INI file, parsed once into one frozen dataclass per section.

Every section is a dataclass whose fields carry a converter in their metadata. Unknown
sections and keys are errors, so that a typo never falls back to a default silently; a bad
value raises `ConfigError` naming file, section, key, value and what is allowed.

Relative paths in keys ending in `_dir` are resolved against the directory of the config
file, so a node starts the same from any working directory.
"""

from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from akita.catalogue import WORKER_ORDER, WORKERS
from akita.configvalues import (
    AUTO,
    boolean,
    budget_percent,
    channel,
    choice,
    directory,
    directory_list,
    frequency_hz,
    host_port_list,
    identity_list,
    instance_name,
    int_range,
    key_list,
    listen_address,
    lora_bandwidth,
    name_list,
    node_name,
    operator_list,
    optional_command,
    optional_directory,
    optional_host_port,
    optional_int_range,
    optional_percent,
    optional_port,
    percent,
    seconds,
    seconds_or_auto,
    setting,
    split_argv,
    text,
)
from akita.errors import ConfigError
from akita.rundir import longest_socket_name

# Longest path a Unix socket may have (sun_path is 108 bytes with its NUL).
_MAX_SOCKET_PATH = 107



class RestartPolicy(str, Enum):
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


AUTO_TIMERS = ("announce_interval", "peer_timeout", "probe_interval")


# --- sections ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeConfig:
    # Required: a node writes only where its config says.
    data_dir: Path = setting(directory, "identity and ledger database (required)")
    run_dir: Path = setting(directory, "control and bus sockets, pid lock, mode 0700 (required)")
    log_dir: Path = setting(directory, "one log file per process (required)")
    name: str = setting(node_name, "node name shown to peers (default: the host name)", "")


@dataclass(frozen=True)
class SupervisorConfig:
    workers: tuple[str, ...] = setting(name_list, "workers to run, started in the order "
                                       + " → ".join(WORKER_ORDER), WORKER_ORDER)
    heartbeat_interval: float = setting(seconds(0.05, 60), "how often workers send a heartbeat",
                                        1.0)
    log_max_bytes: int = setting(int_range(4096, 1 << 30), "rotate a log file past this size",
                                 10 << 20)
    log_backups: int = setting(int_range(0, 100), "rotated log files kept per process", 3)


@dataclass(frozen=True)
class WorkerConfig:
    restart: RestartPolicy = setting(
        lambda raw, base: RestartPolicy(choice(*(p.value for p in RestartPolicy))(raw, base)),
        "always | on-failure | never", RestartPolicy.ALWAYS)
    backoff_initial: float = setting(seconds(0, 60), "first delay before a quick re-restart", 0.1)
    backoff_max: float = setting(seconds(0, 3600), "longest delay between restarts", 30.0)
    max_restarts: int = setting(int_range(0, 1000), "restarts allowed within restart_window "
                                "before the worker is FATAL", 5)
    restart_window: float = setting(seconds(0.1, 86400), "the window for max_restarts", 60.0)
    fatal_cooldown: float = setting(seconds(0, 86400), "wait before a FATAL worker is tried "
                                    "again, doubling while it keeps failing (0: stay FATAL "
                                    "until an operator starts it)", 300.0)
    heartbeat_timeout: float = setting(seconds(0.1, 3600), "silence after which a worker is "
                                       "killed and restarted", 5.0)
    stop_timeout: float = setting(seconds(0.1, 600), "grace after SIGTERM before SIGKILL", 5.0)


@dataclass(frozen=True)
class ClusterConfig:
    cluster_size: int = setting(int_range(1, 1000), "nodes per cluster", 3)
    discovery_interval: float = setting(seconds(0.1, 86400), "how often clusters are re-formed",
                                        5.0)
    airtime_budget: float = setting(budget_percent, "percent of the slowest interface's time "
                                    "this node may spend on idle upkeep (announces, probes, "
                                    "state and ledger refresh); the auto timers follow it", 1.0)
    announce_interval: float = setting(seconds_or_auto(0.5, 86400), "how often this node "
                                       "announces (auto: from airtime_budget, at least 10 s)",
                                       AUTO)
    peer_timeout: float = setting(seconds_or_auto(0.5, 86400), "silence after which a peer "
                                  "is gone (auto: 3 announce intervals, at least 30 s)", AUTO)
    probe_interval: float = setting(seconds_or_auto(0, 86400), "how often a silent cluster "
                                    "member is probed (auto or 0: from airtime_budget, at "
                                    "least 6 s; explicit peer_timeout alone: peer_timeout / 5)",
                                    AUTO)
    probe_timeout: float = setting(seconds(0, 3600), "wait for a probe's answer before an "
                                   "indirect probe (0: peer_timeout / 10)", 0.0)
    services: tuple[str, ...] = setting(name_list, "named services this node advertises "
                                        "besides its task types", ())
    max_message_bytes: int = setting(int_range(64, 4 << 20), "largest inter-cluster message "
                                     "payload (msgpack-encoded)", 65536)
    message_deadline: float = setting(seconds(0.1, 3600), "how long an inter-cluster message "
                                      "is retried before it is reported undeliverable "
                                      "(default for akitactl send / Client.send)", 30.0)


@dataclass(frozen=True)
class ChannelsConfig:
    task_channel: str = setting(channel, "Reticulum aspects for task delegation", "akita.tasks")
    state_channel: str = setting(channel, "aspects for cluster state", "akita.state")
    inter_cluster_channel: str = setting(channel, "aspects for inter-cluster messages",
                                         "akita.intercluster")
    ledger_channel: str = setting(channel, "aspects for ledger replication", "akita.ledger")
    resource_channel: str = setting(channel, "aspects for resource summaries", "akita.resources")
    service_channel: str = setting(channel, "aspects for service discovery", "akita.services")


@dataclass(frozen=True)
class TasksConfig:
    task_timeout: float = setting(seconds(0.01, 86400), "default task timeout", 60.0)
    pool_size: int = setting(int_range(0, 1024), "task processes (0: one per CPU)", 0)
    modules: tuple[str, ...] = setting(name_list, "Python modules whose @akita.task "
                                       "functions this node runs", ())
    module_path: tuple[Path, ...] = setting(directory_list, "directories to import modules "
                                            "from, relative to this file (default: the "
                                            "directory the node was started from)", ())
    max_queue: int = setting(int_range(1, 10_000_000), "queued tasks before submit is "
                             "refused", 100_000)
    max_result_bytes: int = setting(int_range(64, 1 << 30), "largest stored result or error",
                                    1 << 20)
    max_attempts: int = setting(int_range(1, 100), "runs of one task before it fails", 3)
    capabilities: tuple[str, ...] = setting(name_list, "capabilities this node declares "
                                            "(matched against a task's requires)", ())
    max_payload_bytes: int = setting(int_range(64, 1 << 30), "largest task args or result "
                                     "(encoded): what may travel between nodes", 1 << 20)
    delegate_after: float = setting(seconds(0, 86400), "seconds of queued work per task "
                                    "process kept for this node before queued tasks are "
                                    "offered to peers (and always 2 tasks per process)", 1.0)


@dataclass(frozen=True)
class CommandTask:
    """A task type that runs a command line (argv, no shell) declared as [command:NAME]."""

    argv: tuple[str, ...] = setting(lambda raw, base: tuple(split_argv(raw)),
                                    "the command line; {0}, {1}… are replaced by task args")
    timeout: float = setting(seconds(0, 86400), "timeout (0: [tasks] task_timeout)", 0.0)


@dataclass(frozen=True)
class LedgerConfig:
    checkpoint_interval: float = setting(seconds(0.01, 3600), "longest time between signed "
                                         "checkpoints while events arrive", 1.0)
    checkpoint_events: int = setting(int_range(1, 10_000_000), "events between checkpoints",
                                     10_000)
    max_batch: int = setting(int_range(1, 1_000_000), "most events in one transaction", 20_000)


@dataclass(frozen=True)
class SamplerConfig:
    interval: float = setting(seconds(0.05, 3600), "seconds between samples", 5.0)
    cpu_alert_percent: float = setting(percent, "host CPU alert threshold", 95.0)
    memory_alert_percent: float = setting(percent, "host memory alert threshold", 90.0)
    disk_alert_percent: float = setting(percent, "data_dir disk usage alert threshold", 90.0)
    process_rss_alert_bytes: int = setting(int_range(0, 1 << 50), "per-process RSS alert "
                                           "threshold (0: off)", 0)
    alert_hysteresis: float = setting(percent, "an alert clears this many percentage points "
                                      "below its threshold (RSS: this percent below)", 5.0)
    alert_samples: int = setting(int_range(1, 1000), "samples in a row over the threshold "
                                 "before an alert is raised (and under it before it clears)", 3)
    alert_min_interval: float = setting(seconds(0, 86400), "an alert is raised again at most "
                                        "once per this many seconds", 300.0)
    uss_every: int = setting(int_range(0, 1_000_000), "measure per-process USS every Nth "
                             "sample (it reads the memory maps; 0: never)", 6)


@dataclass(frozen=True)
class ReticulumConfig:
    auto_interface: bool = setting(boolean, "zero-config LAN discovery (AutoInterface)", True)
    tcp_listen: tuple[str, int] | None = setting(optional_host_port, "host:port to accept TCP "
                                                 "peers; this node then forwards", None)
    tcp_connect: tuple[tuple[str, int], ...] = setting(host_port_list, "host:port list to dial",
                                                       ())
    network_name: str = setting(text, "interface access code network name", "")
    passphrase: str = setting(text, "interface access code passphrase", "")
    transport: str = setting(choice("auto", "yes", "no"), "forward other nodes' traffic "
                             "(auto: only a node with tcp_listen does)", "auto")
    auto_devices: tuple[str, ...] = setting(name_list, "AutoInterface only on these network "
                                            "devices (empty: every suitable one)", ())
    auto_group_id: str = setting(text, "AutoInterface discovery group (empty: Reticulum's "
                                 "default); nodes in other groups are not found", "")
    rnode_port: str = setting(text, "serial port of an RNode LoRa radio (empty: none)", "")
    rnode_frequency: int | None = setting(frequency_hz, "RNode frequency in Hz (required "
                                          "with rnode_port)", None)
    rnode_bandwidth: int = setting(lora_bandwidth, "RNode LoRa bandwidth in Hz", 125_000)
    rnode_spreading_factor: int = setting(int_range(5, 12), "RNode LoRa spreading factor", 9)
    rnode_coding_rate: int = setting(int_range(5, 8), "RNode LoRa coding rate 4/N", 5)
    rnode_tx_power: int = setting(int_range(0, 37), "RNode transmit power in dBm (what "
                                  "your licence and band allow)", 14)
    rnode_airtime_limit_long: float | None = setting(optional_percent, "RNode long-term "
                                                     "airtime limit in percent (empty: none)",
                                                     None)
    rnode_airtime_limit_short: float | None = setting(optional_percent, "RNode short-term "
                                                      "airtime limit in percent (empty: none)",
                                                      None)
    pipe: tuple[str, ...] | None = setting(optional_command, "command of a pipe interface: "
                                           "HDLC frames on its stdin/stdout (e.g. the radio "
                                           "emulator's attach)", None)
    pipe_bitrate: int | None = setting(optional_int_range(5, 10**10), "bits/s of the pipe "
                                       "interface's medium (empty: Reticulum's guess)", None)
    config_dir: Path | None = setting(optional_directory, "use this Reticulum config "
                                      "directory instead of the keys above", None)
    shared_instance: str = setting(choice("auto", "attach", "own"), "auto: attach to the host's "
                                   "shared Reticulum instance (rnsd, Sideband, NomadNet...) "
                                   "when one runs, else own the interfaces | attach: wait for "
                                   "one | own: never attach", "auto")
    shared_instance_dir: Path | None = setting(optional_directory, "Reticulum config "
                                               "directory of the shared instance (empty: "
                                               "where Reticulum looks: /etc/reticulum, "
                                               "~/.config/reticulum, ~/.reticulum)", None)
    shared_instance_name: str = setting(instance_name, "instance name of a shared instance "
                                        "on a Unix socket (empty: from its config, else "
                                        "'default')", "")
    shared_instance_port: int | None = setting(optional_port, "TCP port of a shared instance "
                                               "of type tcp (empty: from its config)", None)


@dataclass(frozen=True)
class SecurityConfig:
    admission: str = setting(choice("open", "allowlist", "key"), "open | allowlist | key",
                             "open")
    allowed_identities: tuple[str, ...] = setting(identity_list, "identity hashes admitted "
                                                  "in allowlist mode", ())
    network_key: tuple[str, ...] = setting(key_list, "shared network keys (base64, from "
                                           "akitactl keygen) for admission = key: the first "
                                           "signs, every one is accepted", ())
    max_request_bytes: int = setting(int_range(4096, 1 << 30), "largest request a peer may "
                                     "send (refused from its Resource advertisement, before "
                                     "any data is taken)", 2 << 20)
    max_peers: int = setting(int_range(1, 100_000), "most peers held in the peer table "
                             "(cluster mates are never evicted; newcomers are refused)", 256)
    max_new_peers_per_minute: int = setting(int_range(1, 100_000), "most new identities "
                                            "taken into the peer table per minute", 60)
    max_peer_interval: float = setting(seconds(1, 86400), "longest announce interval a "
                                       "peer's claim counts for (a silent peer is dropped "
                                       "after 2.5 of them at most)", 3600.0)
    max_record_bytes: int = setting(int_range(1024, 16 << 20), "largest state record "
                                    "(encoded) taken from a peer", 64 << 10)
    max_record_keys: int = setting(int_range(8, 100_000), "most keys in a state record "
                                   "taken from a peer", 256)
    delegate_to: str = setting(choice("members", "allowlist"), "who may be handed work and "
                               "trusted with the capabilities it declares: members (of this "
                               "node's cluster, or coordinators of others for spill-over, "
                               "seated for settle_time) | allowlist (allowed_identities)",
                               "members")
    settle_time: float = setting(seconds(0, 86400), "seconds a peer must have held its seat "
                                 "before it is handed work (0: peer_timeout + "
                                 "discovery_interval)", 0.0)
    max_pull_backoff: float = setting(seconds(1, 86400), "longest wait before pulling "
                                      "state again from a peer that did not answer (the wait "
                                      "doubles from announce_interval on each failure)", 300.0)


@dataclass(frozen=True)
class OperatorsConfig:
    identities: tuple[tuple[str, str], ...] = setting(
        operator_list, "who may command this node over LXMF: HASH:ROLE list, HASH an "
        "identity hash or LXMF address, ROLE read or submit (empty: LXMF access off)", ())
    rate_limit: int = setting(int_range(1, 600), "commands per minute per operator", 10)
    announce_interval: float = setting(seconds(60, 7 * 86400), "how often the node's LXMF "
                                       "address is announced (also once when an interface "
                                       "comes up)", 1800.0)
    page: str = setting(choice("off", "open", "operators"), "the NomadNet status page: off, "
                        "open (anyone), operators (only [operators] identities)", "off")


@dataclass(frozen=True)
class MetricsConfig:
    listen: tuple[str, int] | None = setting(
        listen_address, "ip:port of the Prometheus /metrics endpoint and the dashboard at / "
        "(empty: off)", ("127.0.0.1", 9464))
    allow_remote: bool = setting(boolean, "allow listen on an address other than loopback "
                                 "(the pages are read-only and unauthenticated)", False)


SECTIONS: dict[str, type] = {
    "node": NodeConfig,
    "supervisor": SupervisorConfig,
    "cluster": ClusterConfig,
    "channels": ChannelsConfig,
    "tasks": TasksConfig,
    "ledger": LedgerConfig,
    "sampler": SamplerConfig,
    "reticulum": ReticulumConfig,
    "security": SecurityConfig,
    "metrics": MetricsConfig,
    "operators": OperatorsConfig,
}

# Which sections each worker reads: a change in any of them restarts it on SIGHUP.
WORKER_SECTIONS: dict[str, tuple[str, ...]] = {
    entry.name: entry.sections for entry in WORKERS}


@dataclass(frozen=True)
class Config:
    path: Path
    text: str
    node: NodeConfig
    supervisor: SupervisorConfig
    cluster: ClusterConfig
    channels: ChannelsConfig
    tasks: TasksConfig
    ledger: LedgerConfig
    sampler: SamplerConfig
    reticulum: ReticulumConfig
    security: SecurityConfig
    metrics: MetricsConfig
    operators: OperatorsConfig
    workers: dict[str, WorkerConfig]
    commands: dict[str, CommandTask]

    def worker_settings(self, name: str) -> tuple[Any, ...]:
        """Everything that worker `name` is started with, for change detection on reload."""
        sections = tuple(getattr(self, section) for section in WORKER_SECTIONS[name])
        return sections + (self.workers[name], self.supervisor.heartbeat_interval)

    def effective(self) -> dict[str, dict[str, Any]]:
        """The config as it takes effect, every key with its value, for `--check`."""
        out: dict[str, dict[str, Any]] = {}
        for section in SECTIONS:
            out[section] = _plain(getattr(self, section))
        for key in AUTO_TIMERS:   # derived by the gateway at run time
            if out["cluster"][key] == AUTO:
                out["cluster"][key] = "auto"
        for name, worker in self.workers.items():
            out[f"worker:{name}"] = _plain(worker)
        for name, command in self.commands.items():
            out[f"command:{name}"] = _plain(command)
        return out


def _plain(section: Any) -> dict[str, Any]:
    values = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, Path):
            value = str(value)
        values[f.name] = value
    return values


def _build(cls: type, items: dict[str, str], path: Path, section: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, raw in items.items():
        f = known.get(key)
        if f is None:
            raise ConfigError(f"unknown key; allowed: {', '.join(known)}",
                              path=str(path), section=section, key=key)
        try:
            values[key] = f.metadata["convert"](raw.strip(), path.parent)
        except ValueError as exc:
            raise ConfigError(f"bad value {raw.strip()!r}: {exc}",
                              path=str(path), section=section, key=key) from None
    for name, f in known.items():
        if name not in values and f.default is dataclasses.MISSING:
            raise ConfigError("required key is missing", path=str(path), section=section,
                              key=name)
        if name == "name" and cls is NodeConfig and name not in values:
            values[name] = node_name("", path.parent)
    return cls(**values)


def _ini_error(exc: configparser.Error) -> str:
    """One line for a configparser error, whose own text may span several."""
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno}: {exc.line.strip()!r} comes before any [section]"
    if isinstance(exc, configparser.ParsingError) and exc.errors:
        lineno, line = exc.errors[0]
        return f"line {lineno}: cannot parse {line.strip()!r}"
    return " ".join(str(exc).split())


def parse(text: str, path: Path) -> Config:
    """Parse config `text` that was read from `path` (used to resolve relative paths)."""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"),
                                       default_section="\x00unused")
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        raise ConfigError(f"not a valid INI file: {_ini_error(exc)}", path=str(path)) from None
    sections: dict[str, Any] = {}
    workers: dict[str, WorkerConfig] = {}
    commands: dict[str, CommandTask] = {}
    for section in parser.sections():
        items = dict(parser.items(section))
        kind, colon, name = section.partition(":")
        if colon and kind == "worker":
            if name not in WORKER_ORDER:
                raise ConfigError(f"unknown worker {name!r}; allowed: {', '.join(WORKER_ORDER)}",
                                  path=str(path), section=section)
            workers[name] = _build(WorkerConfig, items, path, section)
        elif colon and kind == "command":
            if not name or not _is_task_name(name):
                raise ConfigError("command task names are letters, digits, '.', '_' and '-'",
                                  path=str(path), section=section)
            commands[name] = _build(CommandTask, items, path, section)
        elif section in SECTIONS:
            sections[section] = _build(SECTIONS[section], items, path, section)
        else:
            allowed = ", ".join([*SECTIONS, "worker:NAME", "command:NAME"])
            raise ConfigError(f"unknown section; allowed: {allowed}", path=str(path),
                              section=section)
    for section, cls in SECTIONS.items():
        if section not in sections:
            sections[section] = _build(cls, {}, path, section)
    for name in WORKER_ORDER:
        workers.setdefault(name, WorkerConfig())
    config = Config(path=path, text=text, workers=workers, commands=commands, **sections)
    _check(config)
    return config


def _is_task_name(name: str) -> bool:
    return all(c.isalnum() or c in "._-" for c in name) and len(name) <= 64


def _check(config: Config) -> None:
    """Rules that span several keys."""
    path = str(config.path)
    for name in config.supervisor.workers:
        if name not in WORKER_ORDER:
            raise ConfigError(f"unknown worker {name!r}; allowed: {', '.join(WORKER_ORDER)}",
                              path=path, section="supervisor", key="workers")
    if len(set(config.supervisor.workers)) != len(config.supervisor.workers):
        raise ConfigError("a worker is named twice", path=path, section="supervisor",
                          key="workers")
    socket_path = config.node.run_dir / longest_socket_name()
    if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
        raise ConfigError(f"{str(config.node.run_dir)!r} is too long for Unix sockets "
                          f"(sockets there need {len(os.fsencode(socket_path))} bytes, the "
                          f"limit is {_MAX_SOCKET_PATH}); choose a shorter path",
                          path=path, section="node", key="run_dir")
    _check_reticulum(config.reticulum, path)
    sec = config.security
    _check_metrics(config)
    if config.operators.page == "operators" and not config.operators.identities:
        raise ConfigError("page = operators serves only [operators] identities, and none "
                          "are listed; list some, or set page = open or off", path=path,
                          section="operators", key="page")
    if sec.admission == "allowlist" and not sec.allowed_identities:
        raise ConfigError("admission = allowlist needs at least one identity in "
                          "allowed_identities", path=path, section="security",
                          key="allowed_identities")
    if sec.admission == "key" and not sec.network_key:
        raise ConfigError("admission = key needs a key in network_key (akitactl keygen "
                          "prints one)", path=path, section="security", key="network_key")


def _check_reticulum(ret: ReticulumConfig, path: str) -> None:
    if ret.config_dir is not None and (ret.tcp_listen or ret.tcp_connect or ret.network_name
                                       or ret.passphrase or ret.rnode_port or ret.pipe):
        raise ConfigError("config_dir cannot be combined with tcp_listen, tcp_connect, "
                          "network_name, passphrase, rnode_port or pipe; configure the "
                          "interfaces in that Reticulum config instead", path=path,
                          section="reticulum", key="config_dir")
    if ret.rnode_port and ret.rnode_frequency is None:
        raise ConfigError("an RNode needs its frequency: set rnode_frequency (in Hz) for "
                          f"rnode_port = {ret.rnode_port}", path=path, section="reticulum",
                          key="rnode_frequency")
    if ret.rnode_frequency is not None and not ret.rnode_port:
        raise ConfigError("rnode_frequency is set but rnode_port is empty: name the RNode's "
                          "serial port", path=path, section="reticulum", key="rnode_port")
    if ret.pipe_bitrate is not None and ret.pipe is None:
        raise ConfigError("pipe_bitrate is set but pipe is empty: give the pipe command",
                          path=path, section="reticulum", key="pipe")


def _check_metrics(config: Config) -> None:
    listen = config.metrics.listen
    if listen is not None and not ipaddress.ip_address(listen[0]).is_loopback \
            and not config.metrics.allow_remote:
        raise ConfigError(f"{listen[0]} is not a loopback address: the metrics and dashboard "
                          "pages have no authentication; listen on 127.0.0.1 or ::1, or set "
                          "allow_remote = yes", path=str(config.path), section="metrics",
                          key="listen")


def load(path: str | os.PathLike[str]) -> Config:
    """Read and parse the config file at `path`."""
    resolved = Path(path).expanduser().resolve()
    try:
        text = resolved.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", path=str(resolved)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {exc}", path=str(resolved)) from None
    return parse(text, resolved)


def describe() -> dict[str, dict[str, str]]:
    """Every section's keys with their descriptions, for documentation and --help."""
    out: dict[str, dict[str, str]] = {}
    for section, cls in [*SECTIONS.items(), ("worker:NAME", WorkerConfig),
                         ("command:NAME", CommandTask)]:
        out[section] = {f.name: f.metadata["doc"] for f in dataclasses.fields(cls)}
    return out
