"""The node's file names have one home, `akita.rundir`; the parts that create or find the
files take them from there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from akita import catalogue, rundir, transport
from akita import config as config_mod
from akita.errors import ConfigError
from supervisor.pidlock import PidLock


def test_the_pid_lock_is_the_rundir_pid_file(tmp_path: Path) -> None:
    lock = PidLock(tmp_path)
    lock.acquire()
    try:
        assert rundir.pid_path(tmp_path).read_text().split() == [str(os.getpid())]
    finally:
        lock.release()
    assert not rundir.pid_path(tmp_path).exists()


def test_transport_names_sockets_through_rundir(tmp_path: Path) -> None:
    assert transport.endpoint is rundir.endpoint
    assert transport.socket_path is rundir.socket_path
    assert (transport.CONTROL, transport.BUS_IN, transport.BUS_OUT) == rundir.SUPERVISOR_SOCKETS
    assert rundir.endpoint(tmp_path, "x") == f"ipc://{rundir.socket_path(tmp_path, 'x')}"


def test_every_worker_has_a_socket_name() -> None:
    names = rundir.socket_names()
    assert set(catalogue.WORKER_ORDER) <= set(names)
    assert rundir.longest_socket_name() == max((n + ".sock" for n in names), key=len)


def _config(run_dir: Path, base: Path) -> config_mod.Config:
    text = f"[node]\ndata_dir = d\nrun_dir = {run_dir}\nlog_dir = l\n"
    return config_mod.parse(text, base / "akita.ini")


def test_run_dir_length_is_checked_against_the_longest_socket(tmp_path: Path) -> None:
    room = 107 - len(os.fsencode(tmp_path)) - 1 - len(rundir.longest_socket_name())
    assert room > 2, "tmp_path is too long for this test"
    fits = tmp_path / ("a" * (room - 1))
    assert _config(fits, tmp_path).node.run_dir == fits
    with pytest.raises(ConfigError, match="too long for Unix sockets"):
        _config(tmp_path / ("a" * (room + 1)), tmp_path)
