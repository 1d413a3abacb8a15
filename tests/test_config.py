"""Config errors of every kind, as a user meets them: `akita-supervisor -c FILE` prints one line
naming file, section, key, value and what is allowed, and exits 2 without a traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from akita import config as config_mod
from akita.errors import ConfigError
from supervisor import main as supervisor_main
from tests.helpers import REPO

GOOD = "[node]\ndata_dir = data\nrun_dir = run\nlog_dir = log\n"

# name: (file text, the fragments the one-line message must hold)
CASES = {
    "unknown section": (GOOD + "[nodes]\nx = 1\n",
                        ["[nodes]", "unknown section", "allowed:", "supervisor", "worker:NAME"]),
    "unknown key": (GOOD + "[supervisor]\nheartbeat = 1\n",
                    ["[supervisor]:heartbeat", "unknown key", "heartbeat_interval"]),
    "bad value": (GOOD + "[supervisor]\nheartbeat_interval = fast\n",
                  ["[supervisor]:heartbeat_interval", "'fast'", "from 0.05 to 60"]),
    "value out of range": (GOOD + "[worker:ledger]\nmax_restarts = -1\n",
                           ["[worker:ledger]:max_restarts", "'-1'", "from 0 to 1000"]),
    "bad choice": (GOOD + "[worker:sampler]\nrestart = sometimes\n",
                   ["[worker:sampler]:restart", "'sometimes'", "always, on-failure, never"]),
    "unknown worker": (GOOD + "[supervisor]\nworkers = ledger, samplr\n",
                       ["[supervisor]:workers", "'samplr'", "ledger, sampler, executor, gateway"]),
    "missing required key": ("[node]\ndata_dir = d\nlog_dir = l\n",
                             ["[node]:run_dir", "required key is missing"]),
    "RNode without a frequency": (GOOD + "[reticulum]\nrnode_port = /dev/ttyUSB0\n",
                                  ["[reticulum]:rnode_frequency", "needs its frequency"]),
    "frequency out of range": (GOOD + "[reticulum]\nrnode_port = /dev/ttyUSB0\n"
                               "rnode_frequency = 5000\n",
                               ["[reticulum]:rnode_frequency", "'5000'", "137000000"]),
    "not a LoRa bandwidth": (GOOD + "[reticulum]\nrnode_bandwidth = 100000\n",
                             ["[reticulum]:rnode_bandwidth", "'100000'", "125000, 250000"]),
    "spreading factor": (GOOD + "[reticulum]\nrnode_spreading_factor = 13\n",
                         ["[reticulum]:rnode_spreading_factor", "from 5 to 12"]),
    "pipe bitrate without a pipe": (GOOD + "[reticulum]\npipe_bitrate = 1000\n",
                                    ["[reticulum]:pipe", "give the pipe command"]),
    "timer neither auto nor seconds": (GOOD + "[cluster]\nannounce_interval = often\n",
                                       ["[cluster]:announce_interval", "'often'",
                                        "auto or a number of seconds from 0.5"]),
    "airtime budget out of range": (GOOD + "[cluster]\nairtime_budget = 0\n",
                                    ["[cluster]:airtime_budget", "from 0.01 to 100"]),
    "bad INI syntax": (GOOD + "[supervisor\nworkers = ledger\n", ["not a valid INI file"]),
    "key outside a section": ("data_dir = d\n" + GOOD, ["not a valid INI file"]),
}


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = supervisor_main.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("case", list(CASES))
def test_config_error_is_one_line_and_exit_2(case: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    text, fragments = CASES[case]
    path = tmp_path / "akita.ini"
    path.write_text(text)
    code, out, err = run_main(["-c", str(path)], capsys)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"akita-supervisor: {path}")
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert not (tmp_path / "run").exists(), "nothing is created for a bad config"


@pytest.mark.parametrize("what", ["missing", "directory", "not utf-8"])
def test_unreadable_config_file(what: str, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "akita.ini"
    if what == "directory":
        path.mkdir()
    elif what == "not utf-8":
        path.write_bytes(b"[node]\nname = \xff\xfe\n")
    code, _out, err = run_main(["-c", str(path)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert str(path) in err
    assert ("not found" if what == "missing" else "cannot read config file") in err


def test_a_real_process_prints_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "akita.ini"
    path.write_text(CASES["bad value"][0])
    done = subprocess.run([sys.executable, "-m", "supervisor.main", "-c", str(path)],
                          capture_output=True, text=True, timeout=30, cwd=REPO, check=False)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "heartbeat_interval" in done.stderr


def test_check_prints_every_key_with_its_effective_value(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "akita.ini"
    path.write_text(GOOD + "[worker:sampler]\nrestart = never\n")
    code, out, err = run_main(["-c", str(path), "--check"], capsys)
    assert code == 0, err
    effective = json.loads(out)
    assert effective["node"]["run_dir"] == str(tmp_path / "run")
    assert effective["worker:sampler"]["restart"] == "never"
    assert effective["worker:ledger"]["restart"] == "always"
    assert effective["cluster"]["announce_interval"] == "auto"
    assert effective["cluster"]["airtime_budget"] == 1.0
    assert set(effective) >= set(config_mod.SECTIONS)
    for section, keys in config_mod.describe().items():
        if ":" not in section:
            assert set(effective[section]) == set(keys), section


def test_relative_dirs_resolve_against_the_config_file(tmp_path: Path) -> None:
    config = config_mod.parse(GOOD, tmp_path / "sub" / "akita.ini")
    assert config.node.data_dir == tmp_path / "sub" / "data"
    assert config.node.run_dir.is_absolute()


def test_worker_settings_see_only_that_workers_sections(tmp_path: Path) -> None:
    base = config_mod.parse(GOOD, tmp_path / "a.ini")
    changed = config_mod.parse(GOOD + "[sampler]\ninterval = 2\n", tmp_path / "a.ini")
    assert base.worker_settings("sampler") != changed.worker_settings("sampler")
    assert base.worker_settings("ledger") == changed.worker_settings("ledger")


def test_run_dir_too_long_for_sockets(tmp_path: Path) -> None:
    text = GOOD.replace("run_dir = run", "run_dir = " + "r" * 120)
    with pytest.raises(ConfigError) as failed:
        config_mod.parse(text, tmp_path / "a.ini")
    assert failed.value.key == "run_dir" and "too long" in str(failed.value)


def test_every_config_key_is_documented_in_the_default_config_and_the_readme() -> None:
    """The commented default config and the README's table must not drift from the schema."""
    from tests.helpers import REPO

    ini = _ini_keys((REPO / "etc" / "akita.ini").read_text())
    readme = _readme_keys((REPO / "README.md").read_text())
    for section, keys in config_mod.describe().items():
        for key in keys:
            assert key in ini.get(section, set()), f"etc/akita.ini does not show [{section}] {key}"
            assert key in readme.get(section, set()), f"README.md does not list [{section}] {key}"


def _generic(section: str) -> str:
    """[worker:ledger] and [command:thumbnail] stand for [worker:NAME] and [command:NAME]."""
    kind, colon, _name = section.partition(":")
    return f"{kind}:NAME" if colon else section


def _ini_keys(text: str) -> dict[str, set[str]]:
    """Section → keys shown in it, set or commented out (`# key = value`)."""
    keys: dict[str, set[str]] = {}
    section = ""
    for line in text.splitlines():
        header = re.fullmatch(r"[#;]?\s*\[([^\]]+)\]\s*", line)
        if header:
            section = _generic(header.group(1))
            continue
        setting = re.match(r"[#;]?\s*([a-z_]+)\s*=", line)
        if setting and section:
            keys.setdefault(section, set()).add(setting.group(1))
    return keys


def _readme_keys(text: str) -> dict[str, set[str]]:
    """Section → keys in the README's configuration table (| `[section]` | `key`, ... |)."""
    keys: dict[str, set[str]] = {}
    for row in re.finditer(r"^\| `\[([^\]]+)\]` \| (.*) \|$", text, re.MULTILINE):
        keys.setdefault(row.group(1), set()).update(re.findall(r"`([a-z_]+)`", row.group(2)))
    return keys
