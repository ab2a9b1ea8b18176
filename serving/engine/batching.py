"""The embedded CPU engine: a Hugging Face causal LM behind a batching scheduler.

Requests land in a queue; one scheduler thread takes everything waiting (up to
``max_batch_size`` rows, after a short ``batch_wait_s`` to let simultaneous arrivals join),
left-pads the prompts into one batch and runs a single decode loop with a KV cache over it.
Every row samples with its own request's temperature, top-p and seed, so requests with
different parameters still share each forward pass. Requests that arrive while a batch runs
wait for the next one (static batching: simple, and on a CPU the per-step overhead is what
batching amortises).

What may enter the queue is decided by :mod:`serving.engine.admission` (bounded in requests
and tokens, prompts tokenized off the event loop). A batch that fails is not the end of its
requests: each one that has not produced output yet is run again alone, so a request that
breaks the engine fails alone and its batch-mates complete. A request whose client went
away is dropped when the scheduler reaches it.

Text is detokenised incrementally: a delta is released only once it cannot change, that is
when it does not end in an incomplete UTF-8 sequence and cannot be the start of a stop string.
Weights load from safetensors only.

With traces exported, each request gets two spans under its HTTP span: ``queue wait`` (queued
until a batch took it) and ``generation`` (that batch until its last token); the scheduler
thread only stamps the time, the spans are made on the request's own side.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from observability.tracing_http import http
from serving.engine.admission import Admission, AdmissionLimits, Ticket
from serving.engine.protocol import (
    ChoiceDelta,
    EngineLoad,
    PromptLogprobs,
    SamplingParams,
    Usage,
)
from serving.errors import InvalidRequest, ServingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchConfig:
    max_batch_size: int = 32  # rows (a request with n choices takes n rows)
    batch_wait_s: float = 0.005
    max_model_len: int | None = None  # defaults to the model's max_position_embeddings
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.batch_wait_s < 0:
            raise ValueError(f"batch_wait_s must be >= 0, got {self.batch_wait_s}")


class EngineFailure(ServingError):
    error_type = "internal_error"


@dataclass
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[object], None]
    ticket: Ticket | None = None
    cancelled: bool = False
    started: bool = False  # some output went out: it cannot be re-run from the start
    scheduled_ns: int = 0  # when a batch took it (wall clock, for its trace)


@dataclass
class _Row:
    request: _Request
    index: int
    decode: Callable[[list[int]], str]
    eos_ids: frozenset[int]
    ids: list[int] = field(default_factory=list)
    emitted: int = 0
    done: bool = False

    def push(self, token: int) -> ChoiceDelta | None:
        params = self.request.params
        if token in self.eos_ids:
            return self._finish(self.decode(self.ids), "stop")
        self.ids.append(token)
        text = self.decode(self.ids)
        if params.stop:
            start = max(0, self.emitted - max(len(s) for s in params.stop))
            hits = [i for i in (text.find(s, start) for s in params.stop) if i >= 0]
            if hits:
                return self._finish(text[: min(hits)], "stop")
        if len(self.ids) >= params.max_tokens:
            return self._finish(text, "length")
        safe = len(text) - 1 if text.endswith("\ufffd") else len(text)
        if params.stop:
            safe = min(safe, len(text) - max(len(s) for s in params.stop) + 1)
        if safe <= self.emitted:
            return None
        delta = ChoiceDelta(self.index, text[self.emitted : safe])
        self.emitted = safe
        return delta

    def _finish(self, text: str, reason: str) -> ChoiceDelta:
        self.done = True
        delta = ChoiceDelta(self.index, text[self.emitted :], reason)
        self.emitted = len(text)
        return delta


class BatchingEngine:
    """Serves one model directory; call :meth:`start` before :meth:`generate`."""

    def __init__(self, model_dir: Path, served_model_name: str, config: BatchConfig | None = None):
        self.model_dir = Path(model_dir)
        self.served_model_name = served_model_name
        self.config = config or BatchConfig()
        self._inbox: queue.Queue[_Request] = queue.Queue()
        self._running = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = torch.Generator().manual_seed(0)
        self.batches_run = 0
        self.largest_batch = 0  # requests in the biggest batch so far; shows batching works
        self.dropped = 0  # requests whose client went away before a batch took them
        self.tracing = http(__name__)

    def start(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not (self.model_dir / "config.json").is_file():
            raise ValueError(f"model dir {self.model_dir} has no config.json; pass a HF model dir")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=torch.float32, use_safetensors=True
        ).eval()
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else next(iter(self.eos_ids), 0)
        self.max_model_len = self.config.max_model_len or self.model.config.max_position_embeddings
        vocab = self.model.get_input_embeddings().num_embeddings
        longest = max((len(t) for t in self.tokenizer.get_vocab()), default=1)
        self.admission = Admission(
            self.config.admission,
            max_model_len=self.max_model_len,
            max_batch_size=self.config.max_batch_size,
            vocab_size=vocab,
            max_chars_per_token=longest,
            tokenize=lambda text: self.tokenizer(text)["input_ids"],
        )
        self._thread = threading.Thread(target=self._loop, name="engine-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self.admission.close()

    def ready(self) -> bool:
        """Liveness: the model is loaded and the scheduler thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def accepting(self) -> bool:
        """Readiness: alive, and the queue has room for more work."""
        return self.ready() and self.admission.accepting()

    def load(self) -> EngineLoad:
        return EngineLoad(
            running=self._running,
            waiting=self.admission.queued_requests if self._thread else 0,
            extra={
                "batches_run": self.batches_run,
                "largest_batch": self.largest_batch,
                "dropped": self.dropped,
            },
        )

    async def generate(
        self, prompt: str | list[int], params: SamplingParams
    ) -> AsyncIterator[ChoiceDelta | Usage]:
        self.admission.check_logit_bias(params.logit_bias)
        self.admission.check_room()
        prompt_ids = await self.admission.prompt_ids(prompt)
        if not prompt_ids:
            raise InvalidRequest("prompt must not be empty", "prompt")
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise InvalidRequest(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds "
                f"the model's context of {self.max_model_len} tokens; shorten one of them",
                "max_tokens",
            )
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[object] = asyncio.Queue()

        def emit(item: object) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # the client's loop is gone; the row finishes unseen
                request.cancelled = True

        ticket = self.admission.admit(len(prompt_ids) + params.max_tokens * params.n)
        request = _Request(prompt_ids, params, emit, ticket)
        queued_ns = time.time_ns()
        self._inbox.put(request)
        try:
            while True:
                item = await items.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Usage):
                    return
        finally:
            request.cancelled = True
            self.admission.release(ticket)  # a client gone while queued frees its place now
            if self.tracing.enabled:
                self._trace(queued_ns, request.scheduled_ns)

    def _trace(self, queued_ns: int, scheduled_ns: int) -> None:
        done_ns = time.time_ns()
        if not scheduled_ns:  # its client left before a batch took it
            self.tracing.phases(("queue wait", queued_ns, done_ns))
            return
        self.tracing.phases(
            ("queue wait", queued_ns, scheduled_ns), ("generation", scheduled_ns, done_ns)
        )

    async def score(self, prompt: str, top_n: int = 0) -> PromptLogprobs:
        """Log-likelihood of every prompt token given the ones before it (one forward pass).

        Runs beside the scheduler rather than in it: a scoring pass is one prefill with no
        decode loop, and inference-mode forwards share the weights read-only.
        """
        self.admission.check_room()
        encoded = await self.admission.tokenized(
            prompt, lambda text: self.tokenizer(text, return_offsets_mapping=True)
        )
        ids, spans = encoded["input_ids"], encoded["offset_mapping"]
        if not ids:
            raise InvalidRequest("prompt must not be empty", "prompt")
        if len(ids) > self.max_model_len:
            raise InvalidRequest(
                f"prompt ({len(ids)} tokens) exceeds the model's context of "
                f"{self.max_model_len} tokens; shorten it",
                "prompt",
            )
        ticket = self.admission.admit(len(ids))  # scoring is bounded like generation
        try:
            logprobs, top = await asyncio.to_thread(self._score, ids, top_n)
        finally:
            self.admission.release(ticket)
        decode = self.tokenizer.decode
        tops = [None] + [{decode([t]): lp for t, lp in row} if top_n else None for row in top]
        return PromptLogprobs(
            tokens=tuple(
                prompt[a:b] if b > a else decode([i]) for i, (a, b) in zip(ids, spans, strict=True)
            ),
            offsets=tuple(a for a, _ in spans),
            logprobs=(None, *logprobs),
            top=tuple(tops),
        )

    @torch.inference_mode()
    def _score(self, ids: list[int], top_n: int) -> tuple[list[float], list[list]]:
        logits = self.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, :-1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        chosen = logp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()
        if not top_n:
            return chosen, [[] for _ in chosen]
        values, indices = logp.topk(top_n, dim=-1)
        pairs = zip(indices.tolist(), values.tolist(), strict=True)
        return chosen, [list(zip(i, v, strict=True)) for i, v in pairs]

    # -- scheduler thread -------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                first = self._inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            batch, rows = [first], first.params.n
            deadline = time.monotonic() + self.config.batch_wait_s
            while rows < self.config.max_batch_size:
                try:
                    nxt = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                batch.append(nxt)
                rows += nxt.params.n
            for request in batch:
                self.admission.release(request.ticket)
            live = [r for r in batch if not r.cancelled]  # clients gone while queued
            now_ns = time.time_ns()
            for request in live:
                request.scheduled_ns = now_ns
            self.dropped += len(batch) - len(live)
            batch = live
            self._running = len(batch)
            self.batches_run += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            started = time.monotonic()
            try:
                self._run_isolated(batch)
            finally:
                self._running = 0
                self.admission.note_batch(time.monotonic() - started)

    def _run_isolated(self, batch: list[_Request]) -> None:
        """Run ``batch``; if it fails, run each request that has no output yet alone."""
        try:
            self._run_batch(batch)
            return
        except Exception as exc:  # one bad request must not fail the others, nor the loop
            if len(batch) == 1:
                log.exception("request failed in the engine")
                batch[0].emit(EngineFailure(f"generation failed: {exc}"))
                return
            log.warning("batch of %d failed (%s); running its requests alone", len(batch), exc)
        for request in batch:
            if request.started:
                request.emit(EngineFailure("generation failed in a batch after output began"))
            elif not request.cancelled:
                self._run_isolated([request])

    @torch.inference_mode()
    def _run_batch(self, batch: list[_Request]) -> None:
        if not batch:
            return
        decode = self._decoder()
        rows = [_Row(req, i, decode, self.eos_ids) for req in batch for i in range(req.params.n)]
        width = max(len(r.request.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            prompt = row.request.prompt_ids
            ids[i, width - len(prompt) :] = torch.tensor(prompt)
            mask[i, width - len(prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        temps = torch.tensor([r.request.params.temperature for r in rows])
        top_ps = torch.tensor([r.request.params.top_p for r in rows])
        generators = [self._generator(r) for r in rows]
        bias = self._bias(rows, self.model.get_input_embeddings().num_embeddings)

        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        for _ in range(max(r.request.params.max_tokens for r in rows)):
            logits = out.logits[:, -1, :].float()
            if bias is not None:
                logits = logits + bias[:, : logits.shape[-1]]
            next_ids = self._sample(logits, temps, top_ps, generators)
            for row, token in zip(rows, next_ids.tolist(), strict=True):
                if row.done:
                    continue
                delta = row.push(token)
                if delta is not None:
                    row.request.started = True
                    row.request.emit(delta)
                if row.done:
                    self._maybe_emit_usage(row.request, rows)
            if all(r.done or r.request.cancelled for r in rows):
                break
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.model(
                input_ids=next_ids[:, None],
                attention_mask=mask,
                position_ids=positions,
                past_key_values=out.past_key_values,
                use_cache=True,
            )

    def _decoder(self) -> Callable[[list[int]], str]:
        tokenizer = self.tokenizer
        return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)

    @staticmethod
    def _bias(rows: list[_Row], vocab: int) -> torch.Tensor | None:
        if not any(r.request.params.logit_bias for r in rows):
            return None
        bias = torch.zeros((len(rows), vocab))
        for i, row in enumerate(rows):
            for token, value in row.request.params.logit_bias:
                bias[i, token] = value
        return bias

    def _generator(self, row: _Row) -> torch.Generator | None:
        seed = row.request.params.seed
        return None if seed is None else torch.Generator().manual_seed(seed + row.index)

    def _sample(
        self,
        logits: torch.Tensor,
        temps: torch.Tensor,
        top_ps: torch.Tensor,
        generators: list[torch.Generator | None],
    ) -> torch.Tensor:
        chosen = logits.argmax(-1)
        sampled = (temps > 0).nonzero().flatten().tolist()
        if not sampled:
            return chosen
        probs = torch.softmax(logits / temps.clamp(min=1e-5)[:, None], dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        sorted_p[(sorted_p.cumsum(-1) - sorted_p) >= top_ps[:, None]] = 0.0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        for i in sampled:
            generator = generators[i] if generators[i] is not None else self._rng
            chosen[i] = torch.multinomial(probs[i], 1, generator=generator)[0]
        return chosen

    @staticmethod
    def _maybe_emit_usage(request: _Request, rows: list[_Row]) -> None:
        mine = [r for r in rows if r.request is request]
        if all(r.done for r in mine):
            completion = sum(len(r.ids) for r in mine)
            request.emit(Usage(len(request.prompt_ids), completion))
