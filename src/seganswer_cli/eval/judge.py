"""The optional judge model: reads which answer an output gives where a benchmark's protocol asks one.

Some official protocols read answers with a language model (``Protocol.judge``): HallusionBench and
MMVP judge every answer (``always``); MMBench and HR-Bench ask one only when their rules read nothing
(``fallback``). ``seganswer eval BENCH --judge URL|FOLDER`` does the same, after the rule-based
scoring (``answers.py``):

- ``always``: every output is judged; the judge's verdict decides ``correct`` and the rule's result
  is kept beside it (``rule_based``).
- ``fallback``: only outputs whose rules read no answer (``rule == "none"``) are judged.
- ``never``: ``--judge`` is refused (``check_protocol``): a judge there would change the protocol.

The judge is asked which answer the output gives (an option letter, or yes/no), never whether it is
right: it does not see the ground truth, and ``correct`` is the verdict compared with it as the rules'
answer is. For a yes/no question this is the same test as HallusionBench's correct / incorrect /
unclear check. A judge is an OpenAI-compatible chat endpoint (``http://host:port/v1``: vLLM, SGLang)
or a local transformers causal-LM folder; it runs greedy (temperature 0).

Every reply is cached in the run folder (``judge_cache.jsonl``, keyed by a hash of the judge model and
the prompt text), so a resumed run never asks twice. A call that fails (refused, timed out, HTTP
error, a body that is not a chat completion) is retried with exponential backoff; when every try
fails the sample is marked ``judge_failed`` and keeps its rule-based score, and the run goes on. After
``RetryPolicy.give_up_after`` failed samples in a row the judge is taken as down for the rest of the
invocation (those samples are marked failed without asking). Typical use (what ``eval`` does)::

    config = JudgeConfig.from_options("http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-7B-Instruct")
    judge = Judge(client_for(config), use="always", cache=JudgeCache(run / JUDGE_CACHE))
    result, fields = judge.review(output, item, spec.score(output, item))
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from seganswer_cli import jsonl
from seganswer_cli.errors import ModelFolderError, UsageError
from seganswer_cli.eval.answers import is_correct
from seganswer_cli.eval.items import EvalItem, SampleResult
from seganswer_cli.eval.protocol import JudgeUse

JUDGE_CACHE = "judge_cache.jsonl"
API_KEY_VARIABLES = ("SEGANSWER_JUDGE_API_KEY", "OPENAI_API_KEY")
"""Where the endpoint's API key is read from, first set wins; it is sent, never written to disk."""
TEMPERATURE = 0.0
MAX_TOKENS = 16
"""Longest judge reply: a letter or one word is asked for."""

# -- prompts ---------------------------------------------------------------------------------------

CHOICE_TEMPLATE = """\
You are checking the reply another model gave to a multiple-choice question. Read the question, \
the options and the reply, and decide which one option the reply picks.

Question: {question}
Options:
{options}

Reply:
{reply}

Respond with the letter of the option the reply picks ({letters}) and nothing else. \
If the reply picks no option, picks more than one, or cannot be read as a pick, respond with the \
word none."""

YESNO_TEMPLATE = """\
You are checking the reply another model gave to a yes-or-no question. Read the question and the \
reply, and decide whether the reply answers yes or no.

Question: {question}

Reply:
{reply}

Respond with one word and nothing else: yes if the reply answers yes, no if it answers no, \
unclear if it answers neither or both."""

TEMPLATES = {"choice": CHOICE_TEMPLATE, "yesno": YESNO_TEMPLATE}
#: The prompts' identity, recorded in the run's settings: a change of wording is another judge.
PROMPT_ID = "match-v1/" + hashlib.sha256("\n\n".join(TEMPLATES.values()).encode()).hexdigest()[:10]


def build_prompt(item: EvalItem, output: str) -> str | None:
    """The judge prompt for ``output`` (the model's raw text) on ``item``; ``None`` for answer kinds
    the judge does not read (free text, numbers, masks)."""
    from seganswer_cli.model.conversation import model_turns

    reply = "\n".join(model_turns(output)).strip() or "(empty)"
    if item.answer_kind == "choice" and item.options:
        options = "\n".join(f"{letter}. {text}" for letter, text in item.options.items())
        return CHOICE_TEMPLATE.format(question=item.question, options=options, reply=reply,
                                      letters=", ".join(item.options))
    if item.answer_kind == "yesno":
        return YESNO_TEMPLATE.format(question=item.question, reply=reply)
    return None


def parse_verdict(raw: str, item: EvalItem) -> str | None:
    """The answer a judge reply names: an option letter of ``item`` or ``yes``/``no``; ``None`` when it
    names none (``none``, ``unclear``, or anything else: counted as no answer, so wrong).

    >>> item = EvalItem("q", "mmbench", None, "?", "", "B", options={"A": "cat", "B": "dog"})
    >>> parse_verdict(" (B).", item), parse_verdict("none", item), parse_verdict("C", item)
    ('B', None, None)
    """
    words = raw.strip().split()
    first = words[0].strip("\"'`*()[].,:;!") if words else ""
    if item.answer_kind == "yesno":
        return first.lower() if first.lower() in ("yes", "no") else None
    letter = first.upper()
    return letter if len(letter) == 1 and letter in item.options else None


# -- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeConfig:
    """Which judge a run asks; recorded in ``run.json``'s settings, so a rerun with another is refused."""

    target: str
    """The endpoint's base URL (``http://127.0.0.1:8000/v1``), or the local model folder as an absolute path."""
    kind: str
    """``http`` (OpenAI-compatible chat completions) or ``local`` (transformers causal LM)."""
    model: str | None
    """The served model name sent in each request (``http``); ``None`` for a local folder (its path names it)."""
    prompt: str = PROMPT_ID
    temperature: float = TEMPERATURE

    @classmethod
    def from_options(cls, judge: str, model: str | None) -> JudgeConfig:
        """From ``--judge`` and ``--judge-model``; ``UsageError`` on a value that is neither an http(s)
        URL nor an existing folder, or a URL without its served model name."""
        if judge.startswith(("http://", "https://")):
            if not model:
                raise UsageError("--judge URL needs --judge-model: the model name the server serves "
                                 "(vLLM: the --served-model-name, or the path it was started with)")
            base = judge.rstrip("/").removesuffix("/chat/completions")
            return cls(base, "http", model)
        path = Path(judge)
        if not path.is_dir():
            raise UsageError(f"--judge {judge!r} is neither an http(s) URL nor an existing model folder")
        if model is not None:
            raise UsageError("--judge-model names the model a judge URL serves; a local judge folder names itself")
        if not (path / "config.json").is_file():
            raise UsageError(f"--judge {judge}: no config.json there; expected a transformers causal-LM folder")
        return cls(str(path.resolve()), "local", None)

    @property
    def model_id(self) -> str:
        """The judge model's name in cache keys: the served name, or the folder."""
        return self.model or self.target

    def settings(self) -> dict[str, Any]:
        """The ``RunSettings`` fields of this judge."""
        return {"judge": self.target, "judge_model": self.model, "judge_prompt": self.prompt,
                "judge_temperature": self.temperature}

    @classmethod
    def from_settings(cls, settings: Any) -> JudgeConfig | None:
        if getattr(settings, "judge", None) is None:
            return None
        kind = "http" if settings.judge.startswith(("http://", "https://")) else "local"
        return cls(settings.judge, kind, settings.judge_model, settings.judge_prompt, settings.judge_temperature)


def check_protocol(benchmark: str, use: JudgeUse) -> None:
    """``UsageError`` when the benchmark's protocol asks no judge."""
    if use == "never":
        raise UsageError(f"{benchmark}'s protocol uses no judge model (its answers are read by rules only); "
                         "drop --judge")


# -- clients ---------------------------------------------------------------------------------------


class JudgeCallError(Exception):
    """One judge call failed; ``transient`` when trying again may help."""

    def __init__(self, message: str, transient: bool = True):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a judge call is tried before its sample is marked ``judge_failed``."""

    tries: int = 4
    """Calls per sample, the first included."""
    first_wait: float = 1.0
    """Seconds before the second try; each later wait doubles."""
    timeout: float = 60.0
    """Seconds a call may take (connect and read)."""
    give_up_after: int = 5
    """Failed samples in a row after which the judge is taken as down for the rest of the invocation."""


DEFAULT_RETRY = RetryPolicy()


class HttpJudge:
    """An OpenAI-compatible ``/chat/completions`` endpoint, spoken with the standard library."""

    def __init__(self, config: JudgeConfig, retry: RetryPolicy | None = None):
        self.config = config
        self.retry = retry or DEFAULT_RETRY
        self._api_key = next((os.environ[v] for v in API_KEY_VARIABLES if os.environ.get(v)), None)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def probe(self) -> None:
        """Ask the endpoint for its models once; ``UsageError`` in one line when it cannot be reached, or
        when it lists its models and ``--judge-model`` is not among them. Any other answer passes."""
        request = urllib.request.Request(f"{self.config.target}/models", headers=self._headers())
        try:
            with urllib.request.urlopen(request, timeout=min(self.retry.timeout, 10.0)) as response:
                body = response.read()
        except urllib.error.HTTPError as e:
            e.close()
            return  # it answers: the calls themselves will tell
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise UsageError(f"judge {self.config.target} cannot be reached ({reason}); start the server "
                             "or drop --judge") from None
        try:
            served = [m["id"] for m in json.loads(body)["data"]]
        except (ValueError, KeyError, TypeError):
            return
        if served and self.config.model not in served:
            raise UsageError(f"judge {self.config.target} serves {', '.join(map(repr, served))}, not "
                             f"--judge-model {self.config.model!r}")

    def complete(self, prompt: str) -> str:
        """The reply's text; ``JudgeCallError`` for this one try."""
        body = json.dumps({
            "model": self.config.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.config.temperature,
            "max_tokens": MAX_TOKENS,
        }).encode()
        request = urllib.request.Request(f"{self.config.target}/chat/completions", data=body,
                                         headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.retry.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:200].decode("utf-8", "replace")
            e.close()
            raise JudgeCallError(f"HTTP {e.code}: {detail}",
                                 transient=e.code in (408, 409, 429) or e.code >= 500) from None
        except (urllib.error.URLError, OSError) as e:
            raise JudgeCallError(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeCallError(f"not a chat completion: {raw[:200].decode('utf-8', 'replace')!r}") from None
        if not isinstance(content, str):
            raise JudgeCallError(f"reply content is {type(content).__name__}, not text")
        return content


class LocalJudge:
    """A transformers causal-LM folder, loaded on the first call (a run with every call cached loads
    nothing), greedy through the tokenizer's chat template (the plain prompt when it has none)."""

    def __init__(self, config: JudgeConfig, device=None):
        self.config = config
        self.device = device or "cpu"
        """Where the judge runs (a ``torch.device`` or its name; the CLI resolves ``--device auto``)."""
        self.retry = RetryPolicy(tries=1, first_wait=0.0)  # a local failure does not heal by waiting
        self._model = None
        self._tokenizer = None

    def probe(self) -> None:
        """Nothing to reach: the folder was checked by ``JudgeConfig.from_options``."""

    def _load(self):
        if self._model is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.config.target)
                model = AutoModelForCausalLM.from_pretrained(self.config.target)
            except (OSError, ValueError) as e:
                raise ModelFolderError(f"judge {self.config.target}: cannot load it as a causal LM ({e})") from None
            self._model = model.to(self.device).eval()
        return self._model, self._tokenizer

    def complete(self, prompt: str) -> str:
        import torch

        model, tokenizer = self._load()
        if tokenizer.chat_template:
            inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                   return_dict=True, return_tensors="pt")
        else:
            inputs = tokenizer(prompt, return_tensors="pt")
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        try:
            with torch.no_grad():
                out = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_TOKENS, pad_token_id=pad)
        except (RuntimeError, ValueError) as e:  # out of memory, a prompt longer than the model takes
            raise JudgeCallError(f"{type(e).__name__}: {str(e)[:200]}", transient=False) from None
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def client_for(config: JudgeConfig, *, timeout: float | None = None, device=None):
    """The client of ``config``: ``HttpJudge`` (``timeout`` overrides the retry policy's) or ``LocalJudge``."""
    if config.kind == "http":
        retry = DEFAULT_RETRY if timeout is None else replace(DEFAULT_RETRY, timeout=timeout)
        return HttpJudge(config, retry)
    return LocalJudge(config, device)


# -- cache -----------------------------------------------------------------------------------------


class JudgeCache:
    """``judge_cache.jsonl``: one line per judge reply, keyed by ``key(model, prompt)``; read once (a
    line cut by a kill is dropped, ``jsonl.repair``), appended per reply."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._replies = {r["key"]: r["raw"] for r in jsonl.repair(self.path, require=("key", "raw"))}

    @staticmethod
    def key(model: str, prompt: str) -> str:
        return hashlib.sha256(json.dumps([model, prompt], ensure_ascii=False).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        return self._replies.get(key)

    def put(self, key: str, model: str, prompt: str, raw: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with jsonl.JsonlAppender(self.path) as sink:
            sink.write({"key": key, "model": model, "prompt_id": PROMPT_ID, "prompt": prompt, "raw": raw})
        self._replies[key] = raw

    def __len__(self) -> int:
        return len(self._replies)


# -- judging ---------------------------------------------------------------------------------------


class Judge:
    """Applies a client to scored samples as the protocol says (``use``), through the cache."""

    def __init__(self, client, use: JudgeUse, cache: JudgeCache, *, sleep=time.sleep):
        self.client = client
        self.config: JudgeConfig = client.config
        self.use = use
        self.cache = cache
        self.sleep = sleep
        self.failed_in_a_row = 0
        self.down: str | None = None
        """Why the judge was given up on in this invocation (``None`` while it is asked)."""

    def wants(self, result: SampleResult) -> bool:
        return self.use == "always" or (self.use == "fallback" and result.rule == "none")

    def review(self, output: str, item: EvalItem, result: SampleResult) -> tuple[SampleResult, dict[str, Any]]:
        """``result`` as the judge has it, and the fields the prediction record gets: ``judge``
        ({verdict, raw, cached} or {error}), ``judge_failed``, ``rule_based`` (the rules' result).
        Unchanged, with no fields, when the protocol does not judge this sample."""
        prompt = build_prompt(item, output) if self.wants(result) else None
        if prompt is None:
            return result, {}
        rule_based = {"extracted": result.extracted, "rule": result.rule, "correct": result.correct}
        key = JudgeCache.key(self.config.model_id, prompt)
        raw, cached = self.cache.get(key), True
        if raw is None:
            cached = False
            try:
                raw = self._ask(prompt)
            except JudgeCallError as e:
                return result, {"judge": {"error": str(e)}, "judge_failed": True, "rule_based": rule_based}
            self.cache.put(key, self.config.model_id, prompt, raw)
        verdict = parse_verdict(raw, item)
        judged = replace(result, extracted=verdict, rule=f"judge:{self.use}", correct=is_correct(verdict, item))
        return judged, {"judge": {"verdict": verdict, "raw": raw, "cached": cached}, "judge_failed": False,
                        "rule_based": rule_based}

    def _ask(self, prompt: str) -> str:
        """The client's reply, tried ``retry.tries`` times with doubling waits; ``JudgeCallError`` with
        the last failure when all fail (at once, when the judge is down)."""
        if self.down is not None:
            raise JudgeCallError(f"not asked: {self.down}")
        retry = self.client.retry
        wait = retry.first_wait
        for attempt in range(1, retry.tries + 1):
            try:
                raw = self.client.complete(prompt)
                self.failed_in_a_row = 0
                return raw
            except JudgeCallError as e:
                error = e
                if not e.transient or attempt == retry.tries:
                    break
                self.sleep(wait)
                wait *= 2
        self.failed_in_a_row += 1
        if self.failed_in_a_row >= retry.give_up_after:
            self.down = f"judge down after {self.failed_in_a_row} failed samples in a row (last: {error})"
        raise JudgeCallError(f"{attempt} tries: {error}")


def judge_summary(config: JudgeConfig | None, use: JudgeUse, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``summary.json``'s ``judge``: who judged, how (the protocol's use) and the counts: ``judged``
    (verdicts used), ``cached`` (of those, read from the cache), ``judge_failed`` (scored by rules)."""
    if config is None:
        return None
    judged = [r for r in records if "judge" in r and not r.get("judge_failed")]
    return {
        "target": config.target,
        "kind": config.kind,
        "model": config.model,
        "prompt": config.prompt,
        "temperature": config.temperature,
        "max_tokens": MAX_TOKENS,
        "use": use,
        "judged": len(judged),
        "cached": sum(bool(r["judge"].get("cached")) for r in judged),
        "judge_failed": sum(bool(r.get("judge_failed")) for r in records),
    }
