"""Micro-batching of concurrent classification requests (no web framework involved).

Requests put their texts on a queue; one worker task takes whole requests from it until the
batch holds ``max_batch_size`` texts or the oldest request has waited ``max_wait_ms``, runs
the batch on a single inference thread (off the event loop, so the server keeps accepting
requests meanwhile) and resolves each request's future with its own slice. Under load,
requests that arrive during one inference form the next batch. A request larger than
``max_batch_size`` runs as its own batch (chunked by ``predict``). The HTTP service
(:mod:`textdistill.deploy.serve`) is one user; anything with an asyncio loop can be another.

**Health.** A model whose outputs are not finite (damaged weights) fails its batch with
:class:`ModelUnavailable` and leaves the batcher unhealthy for good (:attr:`problem`): a
model that produced NaN once cannot be trusted on the next batch either, and the process
should be replaced rather than kept in rotation. :meth:`probe` checks the model before any
request; any other exception fails only its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from textdistill.runtime.classifier import Classifier, ModelOutputError, Prediction

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue holds ``max_queue_texts`` texts already."""


class ServiceClosed(Exception):
    """The service shut down before the request was answered."""


class InferenceFailed(Exception):
    """The model raised on the batch this request was in (the cause is chained)."""


class ModelUnavailable(InferenceFailed):
    """The model's outputs were not finite on this batch: it cannot predict (see the docs)."""


PROBE_TEXT = "warm-up"
"""The text :func:`probe` classifies (any visible text reaches the model)."""


def probe(classifier: Classifier) -> str | None:
    """Classify :data:`PROBE_TEXT` on the calling thread: None when that worked, else why not.

    Never raises (a model that cannot predict is reported, and the caller decides).
    """
    try:
        classifier.predict([PROBE_TEXT])
    except Exception as err:  # whatever breaks the model must be reported, not raised
        log.error("probe prediction failed: %s: %s", type(err).__name__, err)
        return f"the probe prediction failed: {err}"
    return None


@dataclass
class BatchResult:
    """One request's predictions and how its batch went."""

    predictions: list[Prediction]
    queue_ms: float
    batch_texts: int
    batch_ms: float


@dataclass
class BatchStats:
    requests: int = 0
    texts: int = 0
    batches: int = 0
    largest_batch: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean_batch_texts"] = self.texts / self.batches if self.batches else 0.0
        return d


@dataclass
class _Job:
    texts: list[str]
    top_k: int
    future: asyncio.Future[BatchResult]
    enqueued: float


class MicroBatcher:
    """Gathers concurrent requests into batches for one classifier (see the module docs).

    All methods but :meth:`close`'s executor shutdown run on the event loop; the model runs
    on one dedicated thread, so batches never compete with each other for the CPU.
    """

    def __init__(
        self,
        classifier: Classifier,
        *,
        max_batch_size: int = 64,
        max_wait_ms: float = 5.0,
        max_queue_texts: int = 10_000,
    ) -> None:
        self.classifier = classifier
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue_texts = max_queue_texts
        self.stats = BatchStats()
        self._executor = _inference_thread()
        self._closed = False
        self._pending: deque[_Job] = deque()
        self._pending_texts = 0
        self._inflight: list[_Job] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._model_problem: str | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queued_texts(self) -> int:
        """Texts waiting for a batch (not counting the batch running now)."""
        return self._pending_texts

    @property
    def problem(self) -> str | None:
        """Why requests cannot be answered, or None: the model cannot predict (a failed
        :meth:`probe` or non-finite outputs on a batch), or the worker stopped."""
        if self._model_problem is not None:
            return self._model_problem
        if self._task is not None and self._task.done():
            return "the batching worker stopped"
        return None

    @property
    def healthy(self) -> bool:
        """No :attr:`problem`: the worker runs, or has not started yet (it starts with the
        first request or the lifespan), and the model has not failed."""
        return self.problem is None

    def probe(self) -> str | None:
        """:func:`probe` of the classifier; a failure leaves the batcher unhealthy."""
        problem = probe(self.classifier)
        if problem is not None:
            self._model_problem = problem
        return problem

    def start(self) -> None:
        """Start the worker on the running loop; restart it if it stopped.

        On a new event loop (a test client's) the queue starts afresh: futures of another
        loop cannot be resolved from this one.
        """
        loop = asyncio.get_running_loop()
        if self._closed:
            # Started again after close() (a second lifespan on the same app, as test
            # clients run): close() shut the old thread down.
            self._executor = _inference_thread()
            self._closed = False
        if self.running and self._loop is loop:
            return
        if self._loop is not loop:
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._pending.clear()
            self._pending_texts = 0
        elif self._task is not None and not self._task.cancelled():
            log.error("the batching worker stopped (%r); restarting it", self._task.exception())
        self._task = loop.create_task(self._work(), name="textdistill-batcher")

    async def warmup(self) -> str | None:
        """:meth:`probe` on the inference thread before serving, so that the first client does
        not pay for lazy set-up (thread-local state included); returns its problem."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.probe)

    async def classify(self, texts: list[str], top_k: int = 1) -> BatchResult:
        """Queue ``texts`` and wait for their batch; raises :class:`Overloaded` when full."""
        self.start()
        assert self._loop is not None and self._wakeup is not None
        if self._pending_texts + len(texts) > self.max_queue_texts:
            raise Overloaded
        job = _Job(texts, top_k, self._loop.create_future(), time.perf_counter())
        self._pending.append(job)
        self._pending_texts += len(texts)
        self._wakeup.set()
        return await job.future

    async def close(self) -> None:
        """Stop the worker and fail the requests still queued or running."""
        if self._task is not None:
            self._task.cancel()
            # A worker that had already died has logged why; nothing to add here.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._fail([*self._inflight, *self._pending], ServiceClosed())
        self._pending.clear()
        self._pending_texts = 0
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._closed = True

    async def _work(self) -> None:
        while True:
            self._inflight = await self._next_batch()
            try:
                await self._run(self._inflight)
            except Exception as err:  # a bug here must neither strand requests nor stop us
                log.exception("batching failed")
                self._fail(self._inflight, err)
            self._inflight = []

    @staticmethod
    def _fail(jobs: list[_Job], err: BaseException) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(err)

    async def _next_batch(self) -> list[_Job]:
        assert self._wakeup is not None
        while not self._pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        # The oldest request's deadline, not the worker's: a request that queued while the
        # previous batch ran has already waited.
        deadline = self._pending[0].enqueued + self.max_wait
        while self._pending_texts < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        return self._take()

    def _take(self) -> list[_Job]:
        """Whole requests from the front of the queue up to ``max_batch_size`` texts."""
        jobs = [self._pending.popleft()]
        size = len(jobs[0].texts)
        while self._pending and size + len(self._pending[0].texts) <= self.max_batch_size:
            job = self._pending.popleft()
            jobs.append(job)
            size += len(job.texts)
        self._pending_texts -= size
        return jobs

    async def _run(self, jobs: list[_Job]) -> None:
        live = [j for j in jobs if not j.future.done()]  # skip requests already cancelled
        if not live:
            return
        texts = [t for j in live for t in j.texts]
        k = max(j.top_k for j in live)
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            preds = await loop.run_in_executor(self._executor, self._predict, texts, k)
        except ModelOutputError as err:
            # Logged by the classifier; the traceback would add nothing.
            self._model_problem = str(err)
            failure: InferenceFailed = ModelUnavailable(str(err))
            failure.__cause__ = err
            self._fail(live, failure)
            return
        except Exception as err:
            log.exception("inference failed on a batch of %d texts", len(texts))
            failure = InferenceFailed(f"{type(err).__name__}: {err}")
            failure.__cause__ = err
            self._fail(live, failure)
            return
        batch_ms = (time.perf_counter() - start) * 1000
        self._record(len(live), len(texts))
        offset = 0
        for j in live:
            mine = [_truncate_top_k(p, j.top_k) for p in preds[offset : offset + len(j.texts)]]
            offset += len(j.texts)
            if not j.future.done():
                queue_ms = (start - j.enqueued) * 1000
                j.future.set_result(BatchResult(mine, queue_ms, len(texts), batch_ms))

    def _predict(self, texts: list[str], top_k: int) -> list[Prediction]:
        return self.classifier.predict(texts, top_k=top_k, batch_size=self.max_batch_size)

    def _record(self, requests: int, texts: int) -> None:
        self.stats.requests += requests
        self.stats.texts += texts
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, texts)


def _inference_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="textdistill-infer")


def _truncate_top_k(p: Prediction, k: int) -> Prediction:
    return p if len(p.top_k) <= k else dataclasses.replace(p, top_k=p.top_k[:k])
