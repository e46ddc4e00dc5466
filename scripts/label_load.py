"""Bounded load test of a MONAI Label app server on this machine (loopback only).

``clients`` threads each send ``POST /infer/<task>?image=<id>&output=json`` back to back for ``duration`` seconds,
cycling through every infer task the server lists (``GET /info/``) and the given datastore images (default: all of
them; ``bundle:id`` gives an image to the tasks of one bundle only, e.g. a radiograph to the 2D bundles). It prints (and with ``--out`` writes) one JSON object: clients, duration, requests, failures (any status
other than 200, or no answer) and, per task, requests, failures and p50 / p95 latency in ms; with ``--server_pid``
also the server's resident memory at the start and the end (from ``/proc``, Linux).

Run it against a server started as in ``scripts/monailabel_app/README.md`` on 127.0.0.1::

    python scripts/label_load.py --url http://127.0.0.1:8000 --clients 4 --duration 120 --server_pid <pid>

Bounds: at most 16 clients and 600 s; any host other than a loopback address is refused (this is not a tool for
loading a server someone else runs). Standard library only, so any environment can run it.
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
import socket
import statistics
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_CLIENTS = 16
MAX_DURATION_S = 600.0


def loopback_url(url: str) -> str:
    """``url`` without a trailing slash; raises ValueError unless its host resolves only to loopback addresses."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url {url!r}: expected http://<host>:<port>")
    addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 80)}
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise ValueError(
            f"--url {url!r}: {parts.hostname} is not a loopback address; this script loads local servers only"
        )
    return url.rstrip("/")


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.load(response)


def _rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


@dataclass
class TaskStats:
    """Latencies (s) of the answered requests of one task and the count of failures."""

    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        ms = [1000 * t for t in self.latencies]
        cuts = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
        return {
            "requests": sum(self.statuses.values()),
            "failures": self.failures,
            "p50_ms": round(cuts[49], 1) if cuts else None,
            "p95_ms": round(cuts[94], 1) if cuts else None,
            "statuses": dict(sorted(self.statuses.items())),
        }


def task_images(tasks: list[str], images: list[str]) -> list[tuple[str, str]]:
    """Every (task, image) pair to request: ``id`` goes to every task, ``bundle:id`` to the tasks ``bundle_*``."""
    pairs = []
    for entry in images:
        bundle, _, image = entry.rpartition(":")
        pairs += [(task, image) for task in tasks if not bundle or task.startswith(f"{bundle}_")]
    return pairs


def run_load(url: str, clients: int, duration: float, images: list[str] | None = None,
             server_pid: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Load the server at ``url`` (loopback) and return the figures described in the module docstring."""
    if not 1 <= clients <= MAX_CLIENTS:
        raise ValueError(f"--clients {clients}: between 1 and {MAX_CLIENTS}")
    if not 0 < duration <= MAX_DURATION_S:
        raise ValueError(f"--duration {duration}: more than 0 and at most {MAX_DURATION_S:g} s")
    url = loopback_url(url)
    tasks = sorted(_get_json(f"{url}/info/")["models"])
    images = images or sorted(_get_json(f"{url}/datastore/?output=all")["objects"])
    every_pair = task_images(tasks, images)
    if not every_pair:
        raise ValueError(f"{url}: no (infer task, image) pair among tasks {tasks} and images {images}")
    stats = {task: TaskStats() for task in tasks}
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def client(index: int) -> None:
        for task, image in itertools.islice(itertools.cycle(every_pair), index, None):  # clients start apart
            if time.monotonic() >= deadline:
                return
            query = urllib.parse.urlencode({"image": image, "output": "json"})
            request = urllib.request.Request(f"{url}/infer/{task}?{query}", data=b"", method="POST")
            start = time.monotonic()
            try:
                with urllib.request.urlopen(request, timeout=600) as response:
                    response.read()
                    status = str(response.status)
            except urllib.error.HTTPError as err:
                status = str(err.code)
            except OSError as err:
                status = type(err).__name__
            elapsed = time.monotonic() - start
            with lock:
                entry = stats[task]
                entry.statuses[status] = entry.statuses.get(status, 0) + 1
                if status == "200":
                    entry.latencies.append(elapsed)
                else:
                    entry.failures += 1

    rss_start = _rss_mb(server_pid)
    began = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    per_task = {task: entry.summary() for task, entry in stats.items()}
    return {
        "url": url,
        "clients": clients,
        "duration_s": round(time.monotonic() - began, 1),
        "images": images,
        "requests": sum(t["requests"] for t in per_task.values()),
        "failures": sum(t["failures"] for t in per_task.values()),
        "tasks": per_task,
        "server_rss_mb": {"start": rss_start, "end": _rss_mb(server_pid)} if server_pid else None,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server on this machine")
    parser.add_argument("--clients", type=int, default=4, help=f"concurrent clients (at most {MAX_CLIENTS})")
    parser.add_argument("--duration", type=float, default=120.0, help=f"seconds (at most {MAX_DURATION_S:g})")
    parser.add_argument(
        "--images", default="", help="comma-separated datastore ids or bundle:id (default: every image, every task)"
    )
    parser.add_argument("--server_pid", type=int, default=None, help="sample the server's resident memory")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    images = [i for i in args.images.split(",") if i] or None
    result = run_load(args.url, args.clients, args.duration, images, args.server_pid)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
