"""A full data disk: submits refused at once naming the cause, reads still served, errors
logged a few times with a count, and the node resuming by itself when space returns.

The node's data directory is a small tmpfs this test mounts (root only)."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import akita
from tests.helpers import Node, wait_for

DISK_BYTES = 6 << 20


@pytest.fixture
def small_disk(short_tmp: Path) -> Iterator[Path]:
    mount_point = short_tmp / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0700",
                           "tmpfs", str(mount_point)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk has no room left; returns it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (64 << 10, 4096, 512):  # down to the last few bytes
            block = b"\0" * size
            try:
                while True:
                    os.write(fd, block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_is_reported_and_survived(make_node: type[Node], small_disk: Path) -> None:
    node = make_node({"supervisor": {"workers": "ledger, executor"},
                      "node": {"data_dir": str(small_disk / "data")},
                      "tasks": {"pool_size": 1, "modules": "tests.sample_tasks"}})
    node.start()
    with akita.Client(node.config_path, timeout_s=10) as client:
        before = [client.submit("sample.add", [n, 1]) for n in range(50)]
        assert client.wait_many(before, timeout=20) == [n + 1 for n in range(50)]
        filler = fill(small_disk)
        started = time.monotonic()
        with pytest.raises(akita.TaskRejected) as refused:
            client.submit("sample.add", [1, 2])
        assert time.monotonic() - started < 1.0, "the refusal took longer than a second"
        assert refused.value.code == "disk_full"
        assert "no space left on device where the ledger lives" in str(refused.value)
        assert str(small_disk / "data") in str(refused.value)
        for _ in range(20):  # more attempts, refused as fast
            with pytest.raises(akita.TaskRejected, match="no space left"):
                client.submit("sample.add", [1, 2])
        # Reads keep working.
        assert node.status()["workers"]["ledger"]["state"] == "running"
        assert len(client.tasks(state="succeeded")) == 50
        tail = node.ctl("ledger", "tail", "-n", "3")
        assert tail.returncode == 0, tail.stderr
        time.sleep(3)  # a few resend rounds of the refused events; the log must stay short
        errors = [line for line in (node.log_dir / "ledger.log").read_text().splitlines()
                  if "ERROR" in line]
        assert 1 <= len(errors) <= 3, errors
        os.unlink(filler)
        after_id = wait_for(lambda: _try_submit(client), 10,
                            "a submit accepted once space returned")
        assert client.wait(after_id, timeout=10) == 7
        more = [client.submit("sample.add", [n, 2]) for n in range(20)]
        assert client.wait_many(more, timeout=20) == [n + 2 for n in range(20)]
    assert node.status()["workers"]["executor"]["restarts"] == 0
    ledger_log = (node.log_dir / "ledger.log").read_text()
    assert "ledger writes again" in ledger_log
    verify = node.ctl("ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _try_submit(client: akita.Client) -> str | None:
    try:
        return client.submit("sample.add", [3, 4])
    except akita.TaskRejected as exc:
        if exc.code != "disk_full":
            raise
        return None
