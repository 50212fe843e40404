"""Continuous S3 load through a VIP, and a watch on the router's next-hops: what a roll costs a real client.

:class:`S3Load` starts one worker process inside the lab's client namespace (``ip netns exec``), so every socket
it opens lives there. The process runs ``workers`` threads, each with its own boto3 client (keep-alive
connections, botocore's default retries), over TLS to real RGW through the VIP: small PUTs and GETs (body
checked), and every ``big_every``-th operation a 16 MiB multipart upload (two 8 MiB parts) read back whole.
It counts requests sent, the retries botocore needed (``ResponseMetadata.RetryAttempts``) and requests that
failed after those retries (including a GET body cut mid-stream, which botocore does not retry). SIGTERM makes
it finish the operation in hand and write its counts as JSON.

:class:`HopWatch` polls the router's kernel route for each VIP (every ``interval`` ≤ 50 ms) and records the
fewest next-hops seen and every change.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from ober.atomic import write_atomic
from ober.errors import OberError

SMALL = 64 * 1024
BIG = 16 * 1024 * 1024
PART = 8 * 1024 * 1024
STOP_TIMEOUT = 120.0
FINISH_TIMEOUT = 30.0
"""After SIGTERM, how long the worker lets the operations in hand finish before it writes its counts."""


@dataclass
class LoadResult:
    """What the client saw."""

    sent: int = 0
    """Requests made (each retry not counted: botocore's attempts are in ``retries``)."""
    retries: int = 0
    """Retry attempts botocore made (requests that needed one or more)."""
    retried_requests: int = 0
    failed: int = 0
    """Requests that failed after botocore's retries."""
    multipart_uploads: int = 0
    unfinished: int = 0
    """Operations still waiting for an answer when the client was stopped (neither sent nor failed)."""
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    """The first failures, one line each (kind and message)."""

    def line(self) -> str:
        """``1234 requests, 3 retried (5 retries), 0 failed, 12 multipart uploads in 30.1s``."""
        return (
            f"{self.sent} requests, {self.retried_requests} retried ({self.retries} retries), {self.failed} failed "
            f"after retries, {self.multipart_uploads} multipart uploads of 16 MiB, in {self.seconds:.1f}s"
            + (f", {self.unfinished} still waiting at the end" if self.unfinished else "")
        )


@dataclass(frozen=True)
class LoadConfig:
    """What the worker process needs (written to a file it reads)."""

    endpoint: str
    ca: str
    access_key: str
    secret_key: str
    bucket: str = "ober-load"
    workers: int = 4
    big_every: int = 40
    """Every so many small PUT/GET pairs, a worker uploads 16 MiB (the lab's RGW keeps objects in 1 GiB of RAM and
    reclaims overwritten ones after its garbage-collection delay: a higher rate fills it)."""
    result: str = ""


class S3Load:
    """The load client, running in a namespace until stopped; a context manager."""

    def __init__(self, ns: str, config: LoadConfig, workdir: Path) -> None:
        self.ns = ns
        self.config = config
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.result_path = workdir / "s3load-result.json"
        self.log = workdir / "s3load.log"

    def start(self, ready_timeout: float = 60.0) -> S3Load:
        """Start the worker process and wait until its first requests went through.

        Raises:
            OberError: the process died or made no successful request within ``ready_timeout``.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.result_path.unlink(missing_ok=True)
        config_path = self.workdir / "s3load.json"
        config_path.write_text(json.dumps(asdict(self.config) | {"result": str(self.result_path)}))
        config_path.chmod(0o600)
        ready = self.workdir / "s3load.ready"
        ready.unlink(missing_ok=True)
        argv = ["ip", "netns", "exec", self.ns, sys.executable, "-m", "ober.lab.s3load", str(config_path)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + ready_timeout
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise OberError(f"the S3 load client did not start: {_tail(self.log)}")
            time.sleep(0.1)
        return self

    def stop(self) -> LoadResult:
        """Ask the worker to finish (SIGTERM) and return its counts."""
        process = self.process
        if process is None:
            return LoadResult()
        self.process = None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        try:
            return LoadResult(**json.loads(self.result_path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise OberError(f"the S3 load client left no result ({exc}): {_tail(self.log)}") from None

    def __enter__(self) -> S3Load:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.process is not None:
            self.stop()


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


class HopWatch:
    """Polls ``next_hops(vip)`` for each VIP in a thread; a context manager.

    Attributes:
        fewest: per VIP, the fewest next-hops seen while watching.
        changes: (seconds since start, VIP, next-hops) at every change.
    """

    def __init__(self, next_hops: Callable[[str], Sequence[str]], vips: Sequence[str], interval: float = 0.05) -> None:
        self.next_hops = next_hops
        self.vips = list(vips)
        self.interval = interval
        self.fewest: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.changes: list[tuple[float, str, tuple[str, ...]]] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="hop-watch", daemon=True)
        self._started = 0.0

    def _poll(self) -> None:
        last: dict[str, tuple[str, ...]] = {}
        while not self._stop.is_set():
            began = time.monotonic()
            for vip in self.vips:
                try:
                    hops = tuple(sorted(self.next_hops(vip)))
                except OberError:
                    continue  # one failed query is not a missing route
                self.fewest[vip] = min(self.fewest.get(vip, len(hops)), len(hops))
                self.most[vip] = max(self.most.get(vip, len(hops)), len(hops))
                if last.get(vip) != hops:
                    self.changes.append((round(began - self._started, 3), vip, hops))
                    last[vip] = hops
            self.polls += 1
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - began)))

    def start(self) -> HopWatch:
        """Start polling."""
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> HopWatch:
        """Stop polling (returns self, for the figures)."""
        self._stop.set()
        self._thread.join(10)
        return self

    def lowest(self) -> int:
        """The fewest next-hops any VIP had."""
        return min(self.fewest.values()) if self.fewest else 0

    def __enter__(self) -> HopWatch:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


# --- the worker process (runs inside the client namespace) --------------------------------------------------------


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.result = LoadResult()

    def request(self, response: Any) -> None:
        attempts = int(response.get("ResponseMetadata", {}).get("RetryAttempts", 0))
        with self.lock:
            self.result.sent += 1
            self.result.retries += attempts
            self.result.retried_requests += 1 if attempts else 0

    def failure(self, what: str, exc: BaseException) -> None:
        attempts = 0
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            attempts = int(response.get("ResponseMetadata", {}).get("RetryAttempts", 0))
        with self.lock:
            self.result.sent += 1
            self.result.failed += 1
            self.result.retries += attempts
            if len(self.result.errors) < 20:
                self.result.errors.append(f"{what}: {exc.__class__.__name__}: {str(exc)[:200]}")


def _client(config: LoadConfig) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=config.endpoint,
        aws_access_key_id=config.access_key,
        aws_secret_access_key=config.secret_key,
        region_name="us-east-1",
        verify=config.ca,
        # botocore's defaults (legacy mode, 5 attempts) are what "the client's default retries" means;
        # RGW 16 refuses the aws-chunked trailing checksums new SDKs send by default over TLS.
        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required"),
    )


def _worker(index: int, config: LoadConfig, counts: _Counts, stop: threading.Event) -> None:
    s3 = _client(config)
    small = os.urandom(SMALL)
    big = os.urandom(BIG)
    big_sum = hashlib.sha256(big).hexdigest()
    n = 0
    while not stop.is_set():
        n += 1
        key = f"w{index}/obj{n % 50}"
        try:
            counts.request(s3.put_object(Bucket=config.bucket, Key=key, Body=small))
        except Exception as exc:  # every failure is counted, none ends the worker
            counts.failure("put", exc)
            continue
        try:
            got = s3.get_object(Bucket=config.bucket, Key=key)
            body = got["Body"].read()
            counts.request(got)
            if body != small:
                counts.failure("get", ValueError("body differs"))
        except Exception as exc:
            counts.failure("get", exc)
        if config.big_every and n % config.big_every == 0:
            _multipart(s3, config, f"w{index}/big", big, big_sum, counts)
    _clean(s3, config, index)


def _clean(s3: Any, config: LoadConfig, index: int) -> None:
    """Remove what this worker wrote, so repeated runs do not fill the backend (not counted: the load is over).

    Also the parts of multipart uploads an accident cut off (this run's or an earlier one's): RGW keeps them until
    aborted, and the lab's OSD holds everything in RAM.
    """
    with contextlib.suppress(Exception):
        listed = s3.list_objects_v2(Bucket=config.bucket, Prefix=f"w{index}/")
        keys = [{"Key": item["Key"]} for item in listed.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=config.bucket, Delete={"Objects": keys, "Quiet": True})
    with contextlib.suppress(Exception):
        uploads = s3.list_multipart_uploads(Bucket=config.bucket, Prefix=f"w{index}/").get("Uploads", [])
        for upload in uploads:
            s3.abort_multipart_upload(Bucket=config.bucket, Key=upload["Key"], UploadId=upload["UploadId"])


def _multipart(s3: Any, config: LoadConfig, key: str, big: bytes, digest: str, counts: _Counts) -> None:
    try:
        started = s3.create_multipart_upload(Bucket=config.bucket, Key=key)
        counts.request(started)
        parts = []
        for number, offset in enumerate(range(0, len(big), PART), 1):
            done = s3.upload_part(
                Bucket=config.bucket,
                Key=key,
                UploadId=started["UploadId"],
                PartNumber=number,
                Body=big[offset : offset + PART],
            )
            counts.request(done)
            parts.append({"ETag": done["ETag"], "PartNumber": number})
        counts.request(
            s3.complete_multipart_upload(
                Bucket=config.bucket, Key=key, UploadId=started["UploadId"], MultipartUpload={"Parts": parts}
            )
        )
        with counts.lock:
            counts.result.multipart_uploads += 1
    except Exception as exc:
        counts.failure("multipart", exc)
        if "started" in locals():
            # Parts of an upload never completed stay in RGW (RAM, in the lab's memstore) until aborted.
            with contextlib.suppress(Exception):
                s3.abort_multipart_upload(Bucket=config.bucket, Key=key, UploadId=started["UploadId"])
        return
    try:
        got = s3.get_object(Bucket=config.bucket, Key=key)
        body = got["Body"].read()
        counts.request(got)
        if hashlib.sha256(body).hexdigest() != digest:
            counts.failure("get big", ValueError("checksum differs"))
    except Exception as exc:
        counts.failure("get big", exc)


def worker_main(argv: Sequence[str] | None = None) -> int:
    """The worker process: run the load until SIGTERM, then write the counts to the config's result file."""
    parser = argparse.ArgumentParser(prog="python -m ober.lab.s3load")
    parser.add_argument("config")
    args = parser.parse_args(argv)
    path = Path(args.config)
    config = LoadConfig(**json.loads(path.read_text()))
    stop = threading.Event()
    # The handlers only note the signal: Event.set() in a handler can deadlock on the lock the main thread holds
    # inside stop.wait() (as it froze ober health); the loop below sets the event within 0.1 s.
    signalled: list[int] = []
    signal.signal(signal.SIGTERM, lambda number, _frame: signalled.append(number))
    signal.signal(signal.SIGINT, lambda number, _frame: signalled.append(number))
    s3 = _client(config)
    try:
        s3.create_bucket(Bucket=config.bucket)
    except Exception as exc:
        if "BucketAlreadyOwnedByYou" not in str(exc) and "BucketAlreadyExists" not in str(exc):
            print(f"cannot create bucket {config.bucket}: {exc}", flush=True)
            return 1
    counts = _Counts()
    started = time.monotonic()
    threads = [
        threading.Thread(target=_worker, args=(i, config, counts, stop), daemon=True) for i in range(config.workers)
    ]
    for thread in threads:
        thread.start()
    ready = path.parent / "s3load.ready"
    while not signalled:
        if not ready.exists() and counts.result.sent > counts.result.failed:
            ready.touch()  # the first request went through: the caller may start what it measures
        time.sleep(0.1)
    stop.set()
    # Bounded: a request in hand may wait on botocore's timeouts; what it would add is not worth a lost result.
    deadline = time.monotonic() + FINISH_TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    counts.result.unfinished = sum(thread.is_alive() for thread in threads)
    counts.result.seconds = round(time.monotonic() - started, 2)
    result = Path(config.result)
    write_atomic(result, json.dumps(asdict(counts.result)), 0o644)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
