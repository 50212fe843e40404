"""The lab's Debian node image: built once with debootstrap, cached, used read-only.

It also carries a newer HAProxy than the host's (Debian 13 has 3.0), so rendered configs can be checked against
both versions without touching the host's packages.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from ober.errors import OberError

SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "haproxy",
    "python3",
    "python3-venv",
    "iproute2",
    "iputils-ping",
    "curl",
    "ca-certificates",
    # Fleet tests log in as a non-root user too, whose commands run with sudo.
    "sudo",
)
DEFAULT_IMAGE = Path(os.environ.get("OBER_LAB_IMAGE", "/var/cache/ober/image-trixie"))
STAMP = ".ober-image"
BUILD_TIMEOUT = 1800


def image_ready(image: Path = DEFAULT_IMAGE) -> bool:
    """Tell whether a complete image with today's package list is there (the stamp is written last)."""
    try:
        return (image / STAMP).read_text() == _stamp()
    except OSError:
        return False


def _stamp() -> str:
    return f"suite={SUITE}\npackages={','.join(PACKAGES)}\n"


def ensure_image(image: Path = DEFAULT_IMAGE, *, mirror: str = MIRROR) -> Path:
    """Build the image unless it is already there; a half-built image is never left in its place.

    Raises:
        OberError: not root, debootstrap missing, or the build failed (its last output line is quoted).
    """
    if image_ready(image):
        return image
    if os.geteuid() != 0:
        raise OberError("building the lab image needs root", "run as root (sudo)")
    if shutil.which("debootstrap") is None:
        raise OberError("debootstrap is not installed", "apt-get install debootstrap")
    image.parent.mkdir(parents=True, exist_ok=True)
    # Two builders at once (parallel tests, a test beside `ober lab up`) would remove each other's work: the second
    # waits for the first and then finds the image ready.
    with image.with_name(image.name + ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image_ready(image):
            return image
        return _build(image, mirror)


def _build(image: Path, mirror: str) -> Path:
    work = image.with_name(image.name + ".building")
    _remove(work)
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(work), mirror]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        _remove(work)
        raise OberError(f"debootstrap did not finish in {BUILD_TIMEOUT}s", "check the mirror is reachable") from None
    if done.returncode != 0:
        _remove(work)
        last = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        raise OberError(f"debootstrap failed: {last[0]}", f"check that {mirror} is reachable")
    (work / STAMP).write_text(_stamp())
    shutil.rmtree(image, ignore_errors=True)
    work.rename(image)
    return image


def _remove(work: Path) -> None:
    """Remove a partial build; a debootstrap that was killed can leave its /proc mounted inside, unmount it first."""
    prefix = f"{work}/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if len(line.split()) > 1]
    for mount in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False, timeout=30)
    shutil.rmtree(work, ignore_errors=True)
