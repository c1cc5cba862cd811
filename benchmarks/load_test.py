"""Bounded load test of ``textdistill serve`` on the loopback interface.

Sends a fixed number of ``POST /v1/classify`` requests from a fixed number of concurrent
clients, once per concurrency level, and stops by itself. Reports requests/s, texts/s,
p50/p99/mean latency (client-side, full round trip), the error count and the mean batch
size the server formed (from ``/v1/stats``), as Markdown rows on stdout and as JSON.

Either starts the server itself (``--model DIR``: ``python -m textdistill serve`` as a
subprocess on a free loopback port, stopped with SIGINT at the end) or targets a running
one (``--url``, loopback addresses only: this is a local benchmark, not a load generator
for other machines).

Examples::

    python benchmarks/load_test.py --model runs/bilstm-onnx --concurrency 1,32 --requests 2000
    python benchmarks/load_test.py --model runs/teacher --data data/THUCNews/test.txt \\
        --texts-per-request 4 --out results/load.json
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --requests 500

The client is one asyncio process (httpx); at thousands of requests per second on few cores
it competes with the server for CPU, so compare runs made on the same machine and settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
READY_TIMEOUT_S = 120.0
DEFAULT_MAX_TEXTS = 256  # textdistill serve --max-texts
SAMPLE_TEXTS = (
    "詹姆斯砍下三双湖人客场逆转勇士",
    "央行宣布下调存款准备金率0.5个百分点",
    "网游新作公测首日玩家数突破百万",
    "高考志愿填报指南：如何选择专业",
    "沪指震荡收涨创业板指涨逾1%",
    "房企三月销售额同比下降两成",
    "新款手机发布搭载自研芯片",
    "电影票房破十亿成年度冠军",
    "国足热身赛两球战胜对手",
    "基金经理调仓加码消费板块",
    "",
    "国务院常务会议部署稳就业举措",
    "明星夫妇官宣离婚引热议",
    "联赛第十轮主队补时绝杀",
    "银行理财产品收益率持续走低",
    "开放世界游戏获年度最佳",
)


@dataclass
class LevelResult:
    """One concurrency level's numbers; latencies in milliseconds."""

    concurrency: int
    requests: int
    texts_per_request: int
    errors: int
    seconds: float
    requests_per_s: float
    texts_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    mean_batch_texts: float | None


def read_texts(path: Path | None) -> list[str]:
    """Texts of a data file (``text<TAB>label`` or one text per line), or built-in titles."""
    if path is None:
        return list(SAMPLE_TEXTS)
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    texts = [line.split("\t", 1)[0] for line in lines if line.strip()]
    if not texts:
        raise SystemExit(f"{path}: no texts")
    return texts


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_loopback(url: str) -> str:
    host = urlparse(url).hostname or ""
    if host not in LOOPBACK:
        raise SystemExit(f"--url must point at this machine ({', '.join(sorted(LOOPBACK))})")
    return url.rstrip("/")


def wait_ready(base: str, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode} before it was ready")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"{base} was not ready within {timeout:.0f} s")


@contextlib.contextmanager
def started_server(args: argparse.Namespace, log_path: Path) -> Iterator[str]:
    """``textdistill serve`` on a free loopback port; yields its base URL; SIGINT at the end."""
    port = free_port()
    cmd = [sys.executable, "-m", "textdistill", "serve", "--model", str(args.model)]
    cmd += ["--port", str(port), "--log-level", "warning", "--workers", str(args.workers)]
    cmd += ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)]
    if args.texts_per_request > DEFAULT_MAX_TEXTS:
        cmd += ["--max-texts", str(args.texts_per_request)]
    if args.backend:
        cmd += ["--backend", args.backend]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    base = f"http://127.0.0.1:{port}"
    cpus = args.server_cpus
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Pinned before exec, so every thread the server starts stays on these CPUs.
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
    try:
        try:
            wait_ready(base, proc, READY_TIMEOUT_S)
        except SystemExit as err:
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise SystemExit(f"{err}\n--- server log ({log_path}) ---\n{tail}") from None
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Connection:
    """One keep-alive HTTP/1.1 connection: a simulated client.

    A minimal client on asyncio streams rather than httpx's connection pool, whose own
    per-request cost under many concurrent connections would otherwise be measured as
    server latency. It speaks just what the service answers: ``Content-Length`` bodies.
    """

    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post_json(self, path: str, payload: bytes) -> tuple[int, bytes]:
        """Send one POST; returns (status, body). Reconnects if the server closed."""
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        writer.write(head.encode("ascii") + payload)
        try:
            return await asyncio.wait_for(self._read_response(reader), self.timeout)
        except BaseException:
            await self.close()
            raise

    async def _read_response(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split()[1])
        length, close = None, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            elif name.strip().lower() == "connection" and "close" in value.lower():
                close = True
        body = await reader.readexactly(length) if length is not None else await reader.read()
        if close or length is None:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            self._streams = None
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()


def _payloads(texts: Sequence[str], n: int, k: int) -> list[bytes]:
    """Request bodies, built before timing so that JSON encoding is not measured."""
    return [
        json.dumps({"texts": [texts[(i * k + j) % len(texts)] for j in range(k)]}).encode()
        for i in range(n)
    ]


async def _run_level(
    base: str, texts: Sequence[str], n_requests: int, concurrency: int, k: int, warmup: int
) -> tuple[list[float], int, float]:
    """Latencies (s) of successful requests, error count, wall seconds of the timed part."""
    url = urlparse(base)
    clients = [Connection(url.hostname or "127.0.0.1", url.port or 80) for _ in range(concurrency)]
    latencies: list[float] = []
    errors = 0
    next_index = 0

    async def worker(client: Connection, payloads: list[bytes]) -> None:
        nonlocal errors, next_index
        while next_index < len(payloads):
            payload = payloads[next_index]
            next_index += 1
            start = time.perf_counter()
            try:
                status, body = await client.post_json("/v1/classify", payload)
                ok = status == 200 and len(json.loads(body)["results"]) == k
            except (OSError, ValueError, KeyError, IndexError, asyncio.IncompleteReadError):
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    try:
        if warmup:
            await asyncio.gather(*(worker(c, _payloads(texts, warmup, k)) for c in clients))
        latencies.clear()
        errors, next_index = 0, 0
        payloads = _payloads(texts, n_requests, k)
        start = time.perf_counter()
        await asyncio.gather(*(worker(c, payloads) for c in clients))
        return latencies, errors, time.perf_counter() - start
    finally:
        await asyncio.gather(*(c.close() for c in clients))


def _batch_stats(base: str) -> dict[str, Any] | None:
    with contextlib.suppress(httpx.HTTPError, ValueError):
        r = httpx.get(f"{base}/v1/stats", timeout=5)
        if r.status_code == 200:
            stats: dict[str, Any] = r.json()
            return stats
    return None


def run_level(
    base: str, texts: Sequence[str], n_requests: int, concurrency: int, k: int, warmup: int
) -> LevelResult:
    before = _batch_stats(base)
    latencies, errors, seconds = asyncio.run(
        _run_level(base, texts, n_requests, concurrency, k, warmup)
    )
    after = _batch_stats(base)
    mean_batch = None
    if before is not None and after is not None:
        batches = after["batches"] - before["batches"]
        mean_batch = (after["texts"] - before["texts"]) / batches if batches else None
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([np.nan])
    ok = len(latencies)
    return LevelResult(
        concurrency=concurrency,
        requests=n_requests,
        texts_per_request=k,
        errors=errors,
        seconds=seconds,
        requests_per_s=ok / seconds,
        texts_per_s=ok * k / seconds,
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=float(ms.mean()),
        mean_batch_texts=mean_batch,
    )


MD_HEADER = (
    "| model | backend | clients | requests | texts/req | req/s | texts/s | p50 ms | p99 ms "
    "| errors | mean batch |\n"
    "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
)


def markdown_row(model: str, backend: str, r: LevelResult) -> str:
    batch = f"{r.mean_batch_texts:.1f}" if r.mean_batch_texts is not None else "–"
    return (
        f"| {model} | {backend} | {r.concurrency} | {r.requests} | {r.texts_per_request} "
        f"| {r.requests_per_s:,.1f} | {r.texts_per_s:,.1f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
        f"| {r.errors} | {batch} |"
    )


def _cpu_list(value: str) -> set[int]:
    try:
        return {int(c) for c in value.split(",") if c.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a comma-separated list of CPU numbers: {value!r}"
        ) from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", type=Path, help="Model folder: start a server for it.")
    target.add_argument(
        "--url", help="A running server on this machine, e.g. http://127.0.0.1:8000"
    )
    p.add_argument("--backend", choices=["torch", "onnx"], help="Server backend (with --model).")
    p.add_argument("--workers", type=int, default=1, help="Server worker processes.")
    p.add_argument("--threads", type=int, help="Server inference threads per worker.")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--requests", type=int, default=1000, help="Timed requests per level.")
    p.add_argument("--concurrency", default="1,32", help="Comma-separated client counts.")
    p.add_argument("--texts-per-request", type=int, default=1)
    p.add_argument("--warmup", type=int, default=20, help="Untimed requests per level.")
    p.add_argument("--data", type=Path, help="Texts: a THUCNews-style file or one per line.")
    p.add_argument("--out", type=Path, help="Write the results as JSON here.")
    p.add_argument(
        "--server-cpus",
        type=_cpu_list,
        help="Pin the started server to these CPUs (e.g. 0), so that it and the client "
        "do not compete for the same cores.",
    )
    p.add_argument("--client-cpus", type=_cpu_list, help="Pin this client to these CPUs.")
    args = p.parse_args(argv)
    try:
        args.levels = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    except ValueError:
        p.error(f"--concurrency: comma-separated integers, got {args.concurrency!r}")
    for name in ("requests", "texts_per_request", "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not args.levels or min(args.levels) < 1:
        p.error("--concurrency: client counts must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client_cpus:
        os.sched_setaffinity(0, args.client_cpus)
    texts = read_texts(args.data)
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"textdistill-load-{os.getpid()}.log"
    with contextlib.ExitStack() as stack:
        if args.model is not None:
            base = stack.enter_context(started_server(args, log_path))
        else:
            base = check_loopback(args.url)
            wait_ready(base, None, 10)
        info = httpx.get(f"{base}/v1/model", timeout=10).json()
        model, backend = str(info.get("name")), str(info.get("backend"))
        results = []
        print(MD_HEADER)
        for level in args.levels:
            r = run_level(base, texts, args.requests, level, args.texts_per_request, args.warmup)
            results.append(r)
            print(markdown_row(model, backend, r), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "model": info,
            "settings": {
                k: str(v) if isinstance(v, Path) else sorted(v) if isinstance(v, set) else v
                for k, v in vars(args).items()
                if k != "levels"
            },
            "machine": {
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
            },
            "results": [asdict(r) for r in results],
        }
        args.out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", "utf-8")
        print(f"\nwritten to {args.out}")
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
