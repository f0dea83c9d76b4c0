"""LLM annotator: any category of a taxonomy, labelled by a model behind an OpenAI-compatible endpoint.

As in the paper, each (record, category) is one few-shot request: the system prompt lists the category's values
with their one-line descriptions from the taxonomy, few-shot examples follow as earlier turns, and the model
answers `{"value": V}` (constrained by a JSON schema where the endpoint supports it: vLLM, Ollama, OpenAI).
Categories with an `Unspecified` value offer it; categories without one offer `none` ("no value applies"), which
leaves the marker out. The model sees the last user turn and the final assistant turn, each clipped to `max_chars`
(head and tail kept).

Every answer is validated against the taxonomy. An invalid or unparseable answer is retried with a correction
turn; after `max_attempts` it becomes `Unspecified` with the reason, or for a category without `Unspecified`, no
marker and the reason. HTTP 429/5xx, timeouts and malformed responses are retried with exponential backoff
(honouring Retry-After); when those retries run out the (record, category) is settled the same way, with the
error as the reason. The pipeline writes reasons to `marker_notes`, so every record and category is accounted for.
An endpoint that cannot be reached, or that refuses the credentials or the model (401/403/404), stops the run
instead: marking a whole dataset "Unspecified" for a typo in a URL would be worse than stopping. The run resumes.

Model-decided outcomes are cached on disk (SQLite) under a hash of the request (record text, prompt, few-shot
examples), the model, the taxonomy's name/version and the decoding settings, so a re-run, a resumed run or
`--explain` costs no requests. Transport failures are never cached.

Transport: plain `httpx2` (the HTTP stack of the official `openai` client) rather than `openai.AsyncOpenAI`.
Against a 200 ms endpoint with 64 requests in flight, a loop through the SDK reached 108 requests/s where the same
loop through httpx2 reached 256 (bench/RESULTS_llm.md): the SDK spends ~2.3 ms of CPU per request, mostly in its
parameter transformation, against ~0.9 ms. We need our own retry policy anyway (per-record reasons, stop on auth
errors), so the SDK's retries would be switched off. Concurrency is asyncio on one background event-loop thread
per annotator, so connections are kept alive across the pipeline's chunks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import sqlite3
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from treasure.annotate.base import MarkerNote
from treasure.annotate.options import LLMSettings
from treasure.errors import TaxonomyError, TreasureError
from treasure.records import last_assistant, prompt_text
from treasure.taxonomy import Category, Taxonomy

# Bump when the prompt wording or the answer protocol changes: it is part of provenance and of every cache key.
PROMPT_VERSION = "1"
# The categories the paper tagged with an LLM; the default when no category of the taxonomy says `annotator: llm`.
PAPER_LLM_CATEGORIES = ("domain", "task", "format")
UNSPECIFIED = "Unspecified"
NONE_ANSWER = "none"  # offered to categories without Unspecified: "no value applies", leaves the marker out
_RETRY_STATUS = {408, 409, 429}  # plus every 5xx
_FATAL_STATUS = {401: "refused the API key", 403: "refused access", 404: "has no such model or route"}


def llm_chunk_size(concurrency: int) -> int:
    """The default `--chunk-size` of a run with an LLM. The pipeline waits for a chunk's slowest request before
    the next chunk starts, so a chunk should hold many rounds of requests: at 64 in flight, chunks of 512 reached
    77% of a bare request loop's throughput and chunks of 4096 all of it (bench/RESULTS_llm.md)."""
    return max(512, 64 * concurrency)


def llm_categories(taxonomy: Taxonomy, settings: LLMSettings) -> list[str]:
    """The categories the LLM fills: the explicit list, else `annotator: llm` ones, else the paper's three."""
    if settings.categories:
        for c in settings.categories:
            taxonomy[c]
        return list(settings.categories)
    tagged = [c.name for c in taxonomy if c.annotator == "llm"]
    return tagged or [c for c in PAPER_LLM_CATEGORIES if c in taxonomy]


# ------------------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class FewShot:
    category: str
    value: str | int | float | None  # None: the "none applies" answer
    messages: tuple[dict, ...]


def _fewshot_source(path: str | None):
    if path is None:
        return resources.files("treasure.annotate").joinpath("seeds/llm_fewshot.jsonl")
    if not Path(path).is_file():
        raise TreasureError(f"--llm-fewshot {path}: no such file")
    return Path(path)


def load_fewshot(path: str | None, taxonomy: Taxonomy, categories: list[str]) -> dict[str, list[FewShot]]:
    """Few-shot examples per category. A user's file must be valid; built-in examples that do not fit a user's
    taxonomy (a value it lacks) are dropped, since they were written for the paper's taxonomy."""
    strict = path is not None
    source = _fewshot_source(path)
    out: dict[str, list[FewShot]] = {c: [] for c in categories}
    for lineno, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            ex = json.loads(line)
            cat, raw, messages = ex["category"], ex["value"], ex["messages"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise TreasureError(f"{where}: expected {{category, value, messages}} ({e})") from None
        if cat not in out:
            continue
        try:
            value = None if _is_none(raw, taxonomy[cat]) else taxonomy[cat].coerce(raw)
        except TaxonomyError as e:
            if strict:
                raise TreasureError(f"{where}: {e}") from None
            continue
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and "content" in m for m in messages
        ):
            raise TreasureError(f"{where}: messages must be a list of {{role, content}}")
        out[cat].append(FewShot(cat, value, tuple(messages)))
    return out


def _is_none(raw: Any, cat: Category) -> bool:
    return raw is None or (
        isinstance(raw, str) and raw.strip().lower() == NONE_ANSWER and UNSPECIFIED not in cat.values
    )


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    return f"{text[:head]}\n[... {len(text) - limit} characters cut ...]\n{text[-tail:]}"


def render_conversation(messages: list[dict] | tuple[dict, ...], max_chars: int) -> str:
    """The last user turn and the final assistant turn, as the model is shown them."""
    rec = {"messages": list(messages)}
    user, reply = prompt_text(rec), last_assistant(rec)
    return (
        f"<conversation>\n[user]\n{_clip(user, max_chars)}\n\n[assistant]\n{_clip(reply, max_chars)}\n"
        "</conversation>"
    )


def _choices(cat: Category) -> list[str]:
    return list(cat.values) + ([] if UNSPECIFIED in cat.values else [NONE_ANSWER])


def system_prompt(cat: Category) -> str:
    lines = [
        "You label examples of a language-model training set. Read the conversation and choose its "
        f"`{cat.name}`.",
        f"Category: {cat.name}",
        f"Meaning: {cat.description or cat.name}",
    ]
    if cat.kind == "categorical":
        lines.append("Allowed values:")
        lines += [f"- {v}: {cat.value_descriptions.get(v) or v}" for v in cat.values]
        if UNSPECIFIED not in cat.values:
            lines.append(f"- {NONE_ANSWER}: no value fits; the category does not apply to this example")
        lines.append('Reply with a JSON object only, exactly of the form {"value": "<one allowed value>"}.')
    else:
        bounds = [
            f"at least {cat.min:g}" if cat.min is not None else "",
            f"at most {cat.max:g}" if cat.max else "",
        ]
        kind = "an integer" if cat.kind == "int" else "a number"
        lines.append(
            f"The value is {kind}{' ' + ' and '.join(b for b in bounds if b) if any(bounds) else ''}."
        )
        lines.append('Reply with a JSON object only, exactly of the form {"value": <number>}.')
    return "\n".join(lines)


def _answer_json(value: str | int | float | None) -> str:
    return json.dumps({"value": NONE_ANSWER if value is None else value}, ensure_ascii=False)


def response_format(cat: Category, structured: str) -> dict | None:
    if structured == "none":
        return None
    if structured == "json_object":
        return {"type": "json_object"}
    if cat.kind == "categorical":
        prop: dict[str, Any] = {"type": "string", "enum": _choices(cat)}
    else:
        prop = {"type": "integer" if cat.kind == "int" else "number"}
        if cat.min is not None:
            prop["minimum"] = cat.min
        if cat.max is not None:
            prop["maximum"] = cat.max
    schema = {
        "type": "object",
        "properties": {"value": prop},
        "required": ["value"],
        "additionalProperties": False,
    }
    return {
        "type": "json_schema",
        "json_schema": {"name": f"marker_{cat.name}", "strict": True, "schema": schema},
    }


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)
_OBJECT = re.compile(r"\{.*?\}", re.S)


def parse_answer(text: str | None, cat: Category) -> tuple[str | int | float | None, str | None]:
    """(value, None) for a valid answer (value None: "none applies"), or (None, why it is not valid)."""
    if not text or not text.strip():
        return None, "empty answer"
    body = text.strip()
    if m := _FENCE.match(body):
        body = m.group(1)
    try:
        data: Any = json.loads(body)
    except json.JSONDecodeError:
        found = _OBJECT.search(body)
        if found is None and not body.startswith(("{", "[")):
            data = body.strip(" \t\n\"'.`")  # a bare value, as small models often answer
        else:
            try:
                data = json.loads(found.group(0)) if found else None
            except json.JSONDecodeError:
                found = None
            if found is None:
                return None, f"not JSON: {text[:80]!r}"
    if isinstance(data, dict):
        for key in ("value", cat.name):
            if key in data:
                data = data[key]
                break
        else:
            return None, f"no `value` in {text[:80]!r}"
    if _is_none(data, cat):  # null from a category with Unspecified means Unspecified
        return (UNSPECIFIED if UNSPECIFIED in cat.values else None), None
    try:
        return cat.coerce(data), None
    except TaxonomyError:
        return None, f"{str(data)[:60]!r} is not an allowed value"


def correction(reason: str, cat: Category) -> str:
    allowed = ", ".join(_choices(cat)) if cat.kind == "categorical" else f"a {cat.kind} value"
    return f'That answer is not valid ({reason}). Reply with the JSON object only: {{"value": ...}} with {allowed}.'


# --------------------------------------------------------------------------------------------------- cache


class ResponseCache:
    """Settled answers on disk. SQLite in WAL mode: safe for the processes of `--num-proc` and for Ray workers
    on one machine (on a cluster, point every node at its own local path or accept per-node misses)."""

    def __init__(self, path: str):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=60, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "PRAGMA synchronous=NORMAL"
        )  # a commit survives kill -9; only power loss may lose one
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, outcome TEXT NOT NULL)")

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        with self._lock:
            for i in range(0, len(keys), 500):  # SQLite limits the number of bound parameters
                part = keys[i : i + 500]
                rows = self._db.execute(
                    f"SELECT key, outcome FROM answers WHERE key IN ({','.join('?' * len(part))})", part
                ).fetchall()
                out.update((k, json.loads(v)) for k, v in rows)
        return out

    def put(self, key: str, outcome: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, json.dumps(outcome)))

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ------------------------------------------------------------------------------------------------- requests


class EndpointError(TreasureError):
    """The endpoint is unusable for every request (unreachable, bad key, unknown model): the run stops."""


class _Unanswered(Exception):
    """A request that failed for this record only (retries ran out, or a 4xx such as a too-long prompt)."""


@dataclass
class Outcome:
    """How one (record, category) was settled; also the evidence `--explain` shows."""

    value: str | int | float | None
    answers: list[str]
    note: str | None = None
    cached: bool = False

    def to_cache(self) -> dict:
        return {"value": self.value, "answers": self.answers, "note": self.note}


@dataclass
class _Job:
    record: int
    category: Category
    messages: list[dict]
    key: str


class LLMAnnotator:
    """Fills categories by asking an LLM; see the module docstring. Call `close()` (or rely on process exit)."""

    def __init__(self, taxonomy: Taxonomy, settings: LLMSettings, categories: list[str] | None = None):
        try:
            import httpx2
        except ImportError:
            raise TreasureError("the LLM annotator needs httpx2: pip install 'treasure[llm]'") from None

        if settings.structured not in ("json_schema", "json_object", "none"):
            raise TreasureError(
                f"--llm-structured {settings.structured!r}: expected json_schema, json_object or none"
            )
        if settings.concurrency < 1 or settings.max_attempts < 1 or settings.max_retries < 0:
            raise TreasureError("LLM concurrency and attempts must be at least 1, retries at least 0")
        self.taxonomy, self.settings = taxonomy, settings
        self.categories = tuple(categories or llm_categories(taxonomy, settings))
        self._cats = [taxonomy[c] for c in self.categories]
        shots = load_fewshot(settings.fewshot, taxonomy, list(self.categories))
        self._prefix = {
            c.name: self._prefix_messages(c, shots[c.name][: settings.num_fewshot]) for c in self._cats
        }
        # The prompt's version covers everything the prompts are made of (wording version, taxonomy, examples,
        # settings), not which categories this run asks for, so a marker's provenance does not depend on that.
        recipe = [PROMPT_VERSION, taxonomy.fingerprint(), _fewshot_source(settings.fewshot).read_text(encoding="utf-8"),
                  settings.num_fewshot, settings.max_chars, settings.structured]  # fmt: skip
        self.prompt_version = (
            f"v{PROMPT_VERSION}-{hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:6]}"
        )
        self.name = f"llm:{settings.model}:{self.prompt_version}"
        self._static = {c.name: self._static_key(c) for c in self._cats}
        cache = settings.cache_path()
        self._cache = ResponseCache(cache) if cache else None
        self._httpx = httpx2
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="llm-annotator", daemon=True)
        self._thread.start()
        self._client = None  # created on the loop's thread

    def _prefix_messages(self, cat: Category, shots: list[FewShot]) -> list[dict]:
        msgs = [{"role": "system", "content": system_prompt(cat)}]
        for shot in shots:
            msgs.append(
                {"role": "user", "content": render_conversation(shot.messages, self.settings.max_chars)}
            )
            msgs.append({"role": "assistant", "content": _answer_json(shot.value)})
        return msgs

    def _static_key(self, cat: Category) -> str:
        """Everything of a request's cache key except the record: hashed once per category."""
        s = self.settings
        keyed = {
            "model": s.model, "taxonomy": [self.taxonomy.name, self.taxonomy.version], "prefix": self._prefix[cat.name],
            "format": response_format(cat, s.structured), "temperature": s.temperature,
            "max_tokens": s.max_tokens, "max_attempts": s.max_attempts, "prompt": PROMPT_VERSION,
        }  # fmt: skip
        return hashlib.sha256(json.dumps(keyed, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _job(self, i: int, record: dict, cat: Category) -> _Job:
        shown = render_conversation(record["messages"], self.settings.max_chars)
        messages = [*self._prefix[cat.name], {"role": "user", "content": shown}]
        key = hashlib.sha256(f"{self._static[cat.name]}\x00{shown}".encode()).hexdigest()
        return _Job(i, cat, messages, key)

    # ---------------------------------------------------------------------------------------------- public

    def outcomes(self, records: list[dict]) -> list[dict[str, Outcome]]:
        """Settle every (record, category) the records do not already carry a marker for."""
        jobs = [
            self._job(i, r, c)
            for i, r in enumerate(records)
            for c in self._cats
            if c.name not in r["markers"]
        ]
        found = self._cache.get_many([j.key for j in jobs]) if self._cache else {}
        results: list[dict[str, Outcome]] = [{} for _ in records]
        todo = []
        for job in jobs:
            if job.key in found:
                hit = found[job.key]
                results[job.record][job.category.name] = Outcome(
                    hit["value"], hit["answers"], hit["note"], True
                )
            else:
                todo.append(job)
        if todo:
            settled = asyncio.run_coroutine_threadsafe(self._settle_all(todo), self._loop).result()
            for job, outcome in zip(todo, settled, strict=True):
                results[job.record][job.category.name] = outcome
        return results

    def annotate(self, records: list[dict]) -> list[dict[str, Any]]:
        out = []
        for per_record in self.outcomes(records):
            found: dict[str, Any] = {}
            for cat, o in per_record.items():
                found[cat] = MarkerNote(o.value, o.note) if o.note else o.value
            out.append(found)
        return out

    def explain(self, records: list[dict]) -> list[dict[str, dict]]:
        return [
            {
                cat: {"model": self.settings.model, "prompt_version": self.prompt_version, "answers": o.answers,
                      "value": o.value, "note": o.note, "cached": o.cached}
                for cat, o in per_record.items()
            }
            for per_record in self.outcomes(records)
        ]  # fmt: skip

    def close(self) -> None:
        if self._loop.is_running():
            if self._client is not None:
                asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if self._cache:
            self._cache.close()

    # ------------------------------------------------------------------------------------------------ async

    async def _settle_all(self, jobs: list[_Job]) -> list[Outcome]:
        if self._client is None:
            s = self.settings
            key = os.environ.get(s.api_key_env) or "EMPTY"  # local servers (vLLM, Ollama) accept any key
            self._client = self._httpx.AsyncClient(
                base_url=s.base_url.rstrip("/"),
                headers={"Authorization": f"Bearer {key}"},
                timeout=s.timeout,
                limits=self._httpx.Limits(
                    max_connections=s.concurrency, max_keepalive_connections=s.concurrency
                ),
            )
            self._sem = asyncio.Semaphore(s.concurrency)
        # A TaskGroup cancels the other requests when one raises EndpointError, so the run stops promptly.
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._settle(job)) for job in jobs]
        except BaseExceptionGroup as group:
            first: BaseException = group
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        return [t.result() for t in tasks]

    async def _settle(self, job: _Job) -> Outcome:
        cat, messages, answers = job.category, job.messages, []
        reason = ""
        for _ in range(self.settings.max_attempts):
            try:
                text = await self._complete(messages, cat)
            except _Unanswered as e:
                return self._fallback(cat, answers, f"no answer: {e}")  # not cached: a re-run asks again
            answers.append(text)
            value, problem = parse_answer(text, cat)
            if problem is None:
                outcome = Outcome(
                    value, answers, None if value is not None else "no value applies (model: none)"
                )
                break
            reason = problem
            messages = [*messages, {"role": "assistant", "content": text}, {"role": "user", "content": correction(problem, cat)}]  # fmt: skip
        else:
            outcome = self._fallback(cat, answers, f"invalid answer after {len(answers)} attempts: {reason}")
        if self._cache:
            self._cache.put(job.key, outcome.to_cache())
        return outcome

    @staticmethod
    def _fallback(cat: Category, answers: list[str], why: str) -> Outcome:
        return Outcome(UNSPECIFIED if UNSPECIFIED in cat.values else None, answers, why)

    async def _complete(self, messages: list[dict], cat: Category) -> str:
        """One answer's text. Retries what a retry can fix; raises _Unanswered or EndpointError otherwise."""
        s, httpx = self.settings, self._httpx
        body: dict[str, Any] = {"model": s.model, "messages": messages, "temperature": s.temperature,
                                "max_tokens": s.max_tokens}  # fmt: skip
        if fmt := response_format(cat, s.structured):
            body["response_format"] = fmt
        error = ""
        for retry in range(s.max_retries + 1):
            wait = None
            try:
                async with self._sem:
                    resp = await self._client.post("/chat/completions", json=body)
            except httpx.ConnectError as e:
                error = f"cannot connect to {s.base_url} ({e})"
                if retry == s.max_retries:
                    raise EndpointError(
                        f"LLM endpoint {s.base_url}: {error}; the run can be resumed"
                    ) from None
            except httpx.TimeoutException:
                error = f"timed out after {s.timeout:g}s"
            except httpx.TransportError as e:
                error = f"{type(e).__name__}: {e}"
            else:
                status = resp.status_code
                if status == 200:
                    try:
                        content = resp.json()["choices"][0]["message"]["content"]
                        return content if isinstance(content, str) else ""
                    except (ValueError, KeyError, IndexError, TypeError):
                        error = f"malformed response: {resp.text[:80]!r}"
                elif status in _FATAL_STATUS:
                    raise EndpointError(
                        f"LLM endpoint {s.base_url} {_FATAL_STATUS[status]} (HTTP {status}, model {s.model!r}): "
                        f"{resp.text[:200]}"
                    )
                elif status in _RETRY_STATUS or status >= 500:
                    error = f"HTTP {status}"
                    wait = _retry_after(resp.headers)
                else:  # 400, 413, 422: this request (e.g. a prompt over the context length) will never pass
                    raise _Unanswered(f"HTTP {status}: {resp.text[:120]}")
            if retry < s.max_retries:
                # Exponential backoff with jitter, so that many failed requests do not return at once.
                delay = min(s.backoff * 2**retry, 30.0) * random.uniform(0.75, 1.0)
                await asyncio.sleep(min(wait, 60.0) if wait is not None else delay)
        raise _Unanswered(f"{error} (after {s.max_retries + 1} tries)")


def _retry_after(headers) -> float | None:
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers[name]) / scale)
        except (KeyError, ValueError):
            continue
    return None
