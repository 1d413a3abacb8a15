"""A disk that loses power: an ext4 file system on a loop device the test creates.

What a power cut leaves behind is the block device as it stood at one instant: whatever
the kernel had already handed to the device survives; whatever still sat in the page cache
above it (written but never fsynced) is gone. Killing the writers first does not give that
instant: a SIGKILLed process's fdatasync already inside the kernel runs to completion and
carries everything dirty with it. So the cut is taken while the node is still running:

- the node's file system (ext4) lives on a loop device over `disk.img`;
- `disk.img` itself lives on an XFS file system (a second loop device) that supports
  reflinks, and `cut()` clones it with FICLONE. XFS takes the file's I/O lock for the clone,
  so the copy is the device's content between two of the loop device's writes: a true
  point-in-time image, with every later write (and any fsync still in flight) left out;
- `recovered()` mounts the clone on a third loop device, so ext4 replays its journal and
  SQLite then recovers its WAL, as they would when the machine comes back up.

The ext4 file system is mounted with `commit=300` so that ext4's own 5 s journal timer does
not push unsynced data to the device during a test: only an fsync puts data on the device
(the kernel's 30 s dirty writeback is longer than any test here).

What this does not model: a drive that acknowledges a flush it has not done, or reorders
writes in its own volatile cache (the loop device writes through, in order). That is the
kernel's and the drive's side of the contract; the ledger's side, asking for an fsync before
it acknowledges, is what this catches.

Needs root, `losetup`, `mkfs.ext4`, `mkfs.xfs` (Debian: xfsprogs) and free loop devices;
`available()` says what is missing.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

IMAGE_BYTES = 192 << 20  # sparse: only what the test writes takes room
HOST_BYTES = 320 << 20   # mkfs.xfs refuses anything under 300 MB; also sparse
FICLONE = 0x40049409    # linux/fs.h: _IOW(0x94, 9, int)


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


def available() -> str:
    """Empty when a loop-device file system can be made here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "needs root to attach a loop device and mount it"
    for tool in ("losetup", "mkfs.ext4", "mkfs.xfs", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/dev/loop-control").exists():
        return "no /dev/loop-control: this kernel has no loop devices"
    return ""


class LoopDisk:
    """An ext4 file system on a loop device over `root/host/disk.img`, mounted at `root/mnt`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = root / "host"
        self.image = self.host / "disk.img"
        self.mount_point = root / "mnt"
        self._attached: list[str] = []
        self._mounted: list[Path] = []

    def create(self) -> Path:
        """Make, format and mount the disk; returns the mount point."""
        host_image = self.root / "host.img"
        with open(host_image, "wb") as f:
            f.truncate(HOST_BYTES)
        host_device = self._attach(host_image)
        _run("mkfs.xfs", "-q", "-f", "-m", "reflink=1", host_device)
        self._mount(host_device, self.host, "")
        with open(self.image, "wb") as f:
            f.truncate(IMAGE_BYTES)
        device = self._attach(self.image)
        _run("mkfs.ext4", "-q", "-F", device)
        self._mount(device, self.mount_point, "commit=300,noauto_da_alloc")
        return self.mount_point

    def cut(self) -> Path:
        """The device's content at this instant, as a new image file (a reflink clone)."""
        snapshot = self.host / "after-cut.img"
        with open(self.image, "rb") as src, open(snapshot, "wb") as dst:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
        return snapshot

    @contextmanager
    def recovered(self, snapshot: Path) -> Iterator[Path]:
        """Mount `snapshot` (journal replayed) and yield its mount point."""
        where = self.root / "recovered"
        self._mount(self._attach(snapshot), where, "")
        try:
            yield where
        finally:
            self._unmount(where)

    def destroy(self) -> None:
        """Unmount and detach everything this disk attached; safe to call twice."""
        for where in list(reversed(self._mounted)):
            self._unmount(where)
        for device in reversed(self._attached):
            subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
        self._attached.clear()

    def _attach(self, image: Path) -> str:
        device = _run("losetup", "--find", "--show", str(image))
        self._attached.append(device)
        return device

    def _mount(self, device: str, where: Path, options: str) -> None:
        where.mkdir(exist_ok=True)
        _run("mount", *(("-o", options) if options else ()), device, str(where))
        self._mounted.append(where)

    def _unmount(self, where: Path) -> None:
        if where in self._mounted:
            # Lazy: a process killed a moment ago may still hold a file open.
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)
            self._mounted.remove(where)
