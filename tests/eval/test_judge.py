"""``seganswer eval --judge``: a fake OpenAI-compatible server on 127.0.0.1 and a tiny local causal LM
judge the tiny model's answers on HallusionBench (judged always) and MMBench (judged when the rules
read nothing); calls are cached, resumed runs ask only for what is missing, failures are counted."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seganswer_cli.cli import app
from seganswer_cli.errors import UsageError
from seganswer_cli.eval import judge as judge_module
from seganswer_cli.eval.answers import score_sample
from seganswer_cli.eval.items import EvalItem
from seganswer_cli.eval.judge import JUDGE_CACHE, PROMPT_ID, RetryPolicy, build_prompt, parse_verdict

runner = CliRunner()
QA = ["--model", "tiny", "--max-new-tokens", "4", "--batch-size", "2", "--quiet"]
TRIES = 2


class FakeJudge:
    """An OpenAI-compatible server in a thread: ``GET /v1/models`` lists ``models``; each ``POST
    /v1/chat/completions`` is counted and answered as ``mode`` says."""

    def __init__(self):
        self.mode = "ok"
        self.calls = 0
        self.models = ["judge-a", "judge-b"]
        self.authorization: list[str | None] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send(200, json.dumps({"data": [{"id": m} for m in fake.models]}).encode())

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.calls += 1
                fake.authorization.append(self.headers.get("Authorization"))
                if fake.mode == "500":
                    return self._send(500, b'{"error": "overloaded"}')
                if fake.mode == "malformed":
                    return self._send(200, b'{"choices": [{"message": ')
                if fake.mode == "unexpected":
                    return self._send(200, b'{"object": "error", "choices": []}')
                if fake.mode == "sleep":
                    time.sleep(0.6)
                prompt = request["messages"][0]["content"]
                assert request["temperature"] == 0 and request["model"] in fake.models
                reply = "yes" if "yes-or-no" in prompt else "A"
                with contextlib.suppress(OSError):  # the client gave up waiting (mode "sleep")
                    self._send(200, json.dumps({"choices": [{"message": {"role": "assistant",
                                                                         "content": reply}}]}).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def fake_judge(monkeypatch):
    # short retries: 2 tries, 10 ms apart; the timeout comes from --judge-timeout
    monkeypatch.setattr(judge_module, "DEFAULT_RETRY", RetryPolicy(tries=TRIES, first_wait=0.01, give_up_after=100))
    with FakeJudge() as fake:
        yield fake


@pytest.fixture
def tiny_cli(monkeypatch, tiny_model):
    """The CLI's model loader returns the session's tiny model; records what it was asked for."""
    calls = []

    def load(spec, device="auto", dtype="auto"):
        calls.append(spec)
        return tiny_model

    monkeypatch.setattr("seganswer_cli.cli.eval.load_model", load)
    return calls


@pytest.fixture
def distinct_dir(hallusion_dir) -> Path:
    """The tiny HallusionBench folder with every question worded apart (in it a question is asked of
    both figures of a set, which makes equal prompts when the model answers alike: asked once)."""
    path = hallusion_dir / "HallusionBench.json"
    records = json.loads(path.read_text())
    path.write_text(json.dumps([{**r, "question": f"{r['question']} (figure {r['figure_id']})"} for r in records]))
    return hallusion_dir


def invoke(*args):
    return runner.invoke(app, ["eval", *map(str, args)])


def judged_run(bench, data, run, url, *extra, model="judge-a"):
    result = invoke(bench, "--data", data, "--out", run, "--judge", url, "--judge-model", model,
                    "--judge-timeout", 0.2, "--json", *QA, *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def predictions(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]


def cache_lines(run: Path) -> list[dict]:
    path = run / JUDGE_CACHE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_every_hallusionbench_answer_is_judged_once(tiny_cli, fake_judge, hallusion_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGANSWER_JUDGE_API_KEY", "sk-test-secret")
    run = tmp_path / "run"
    summary = judged_run("hallusionbench", hallusion_dir, run, fake_judge.url)
    records = predictions(run)
    # a question asked of both figures of a set, answered alike, is one prompt: asked once
    first = {}
    for record in records:
        first.setdefault((record["question"], record["output"]), record["id"])
    asked = len(first)
    assert len(records) == 5 and fake_judge.calls == asked and asked >= 3
    assert fake_judge.authorization == ["Bearer sk-test-secret"] * asked
    for record in records:
        assert record["rule"] == "judge:always" and record["judge_failed"] is False
        cached = first[record["question"], record["output"]] != record["id"]
        assert record["judge"] == {"verdict": "yes", "raw": "yes", "cached": cached}
        assert record["extracted"] == "yes" and record["correct"] == (record["answer"] == "yes")
        assert set(record["rule_based"]) == {"extracted", "rule", "correct"}
    assert summary["judge"] == {"target": fake_judge.url, "kind": "http", "model": "judge-a", "prompt": PROMPT_ID,
                                "temperature": 0.0, "max_tokens": judge_module.MAX_TOKENS, "use": "always",
                                "judged": 5, "cached": 5 - asked, "judge_failed": 0}
    assert summary["settings"]["judge"] == fake_judge.url and summary["settings"]["judge_model"] == "judge-a"
    settings = json.loads((run / "run.json").read_text())["settings"]
    assert settings["judge_prompt"] == PROMPT_ID and settings["judge_temperature"] == 0.0
    assert len(cache_lines(run)) == asked and all(c["model"] == "judge-a" for c in cache_lines(run))
    assert not any("sk-test-secret" in p.read_text() for p in run.iterdir() if p.is_file())

    # Done: a rerun asks nothing and rebuilds the same summary.
    again = judged_run("hallusionbench", hallusion_dir, run, fake_judge.url)
    assert fake_judge.calls == asked and again["judge"] == summary["judge"]
    # Killed after the judge answered but before the predictions were written: the cache answers.
    path = run / "predictions.jsonl"
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:2]))
    resumed = judged_run("hallusionbench", hallusion_dir, run, fake_judge.url)
    assert fake_judge.calls == asked and resumed["judge"]["judged"] == 5
    assert [r["judge"]["cached"] for r in predictions(run)][2:] == [True] * 3
    assert resumed["metrics"] == summary["metrics"] and len(cache_lines(run)) == asked


def test_a_killed_run_asks_only_for_the_missing_samples(tiny_cli, fake_judge, distinct_dir, tmp_path):
    run = tmp_path / "run"
    judged_run("hallusionbench", distinct_dir, run, fake_judge.url, "--limit", 2)  # stands in for a kill
    assert fake_judge.calls == 2
    summary = judged_run("hallusionbench", distinct_dir, run, fake_judge.url)
    assert fake_judge.calls == 5 and summary["judge"]["judged"] == 5 and len(cache_lines(run)) == 5
    # a cache line cut by a kill is dropped and asked again
    cache = run / JUDGE_CACHE
    cache.write_bytes(cache.read_bytes()[:-20])
    (run / "predictions.jsonl").write_text("")
    judged_run("hallusionbench", distinct_dir, run, fake_judge.url)
    assert fake_judge.calls == 6 and len(cache_lines(run)) == 5


def test_mmbench_judges_only_when_the_rules_read_nothing(tiny_cli, fake_judge, mmbench_dir, tmp_path, monkeypatch):
    from seganswer_cli.eval import answers, mmbench

    # the rules read an answer in the unrotated questions (as if the model had answered "B"), none elsewhere
    monkeypatch.setattr(mmbench, "score", lambda output, item: answers.score_sample(
        "<answer>B</answer>" if item.groups["shift"] == "0" else "<answer></answer>", item))
    run = tmp_path / "run"
    summary = judged_run("mmbench", mmbench_dir, run, fake_judge.url)
    records = predictions(run)
    rotated = [r for r in records if r["groups"]["shift"] != "0"]
    assert len(records) == 5 and len(rotated) == 3 and fake_judge.calls == 3
    assert all(r["rule"] == "judge:fallback" and r["extracted"] == "A" and r["rule_based"]["rule"] == "none"
               for r in rotated)
    assert all(r["correct"] == (r["answer"] == "A") for r in rotated)
    assert all("judge" not in r and r["rule"] == "tag:letter" for r in records if r["groups"]["shift"] == "0")
    assert summary["judge"]["use"] == "fallback" and summary["judge"]["judged"] == 3


@pytest.mark.parametrize("mode", ["500", "malformed", "unexpected", "sleep"])
def test_judge_failures_are_counted_and_asked_again(tiny_cli, fake_judge, distinct_dir, tmp_path, mode):
    fake_judge.mode = mode
    run = tmp_path / "run"
    result = invoke("hallusionbench", "--data", distinct_dir, "--out", run, "--judge", fake_judge.url,
                    "--judge-model", "judge-a", "--judge-timeout", 0.2, *QA)
    assert result.exit_code == 0, result.output
    assert "5 judge call(s) failed" in result.stderr and result.exception is None
    assert fake_judge.calls == 5 * TRIES
    records = predictions(run)
    assert all(r["judge_failed"] and "error" in r["judge"] for r in records)
    assert all(r["rule"] == r["rule_based"]["rule"] and not r["rule"].startswith("judge") for r in records)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["judge"]["judge_failed"] == 5 and summary["judge"]["judged"] == 0
    assert cache_lines(run) == []
    # the judge is back: the rerun asks again for the failed samples, from their recorded outputs
    fake_judge.mode = "ok"
    tiny_cli.clear()
    summary = judged_run("hallusionbench", distinct_dir, run, fake_judge.url)
    assert fake_judge.calls == 5 * TRIES + 5 and tiny_cli == []  # no model run
    assert summary["judge"]["judge_failed"] == 0 and summary["judge"]["judged"] == 5
    assert [r["id"] for r in predictions(run)] == [r["id"] for r in records]
    assert all(r["rule"] == "judge:always" and r["output"] == old["output"]
               for r, old in zip(predictions(run), records))


def test_a_judge_that_stays_down_is_given_up(tiny_cli, fake_judge, hallusion_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(judge_module, "DEFAULT_RETRY", RetryPolicy(tries=TRIES, first_wait=0.01, give_up_after=2))
    fake_judge.mode = "500"
    result = invoke("hallusionbench", "--data", hallusion_dir, "--out", tmp_path / "run", "--judge",
                    fake_judge.url, "--judge-model", "judge-a", *QA)
    assert result.exit_code == 0, result.output
    assert fake_judge.calls == 2 * TRIES and "judge down after 2 failed samples" in result.stderr
    assert all(r["judge_failed"] for r in predictions(tmp_path / "run"))


def test_bad_judge_options_are_one_line(tiny_cli, fake_judge, hallusion_dir, tmp_path):
    run = tmp_path / "run"
    judged_run("hallusionbench", hallusion_dir, run, fake_judge.url, "--limit", 1)
    result = invoke("hallusionbench", "--data", hallusion_dir, "--out", run, "--judge", fake_judge.url,
                    "--judge-model", "judge-b", *QA)
    assert isinstance(result.exception, UsageError)
    assert "judge_model: 'judge-a' there, 'judge-b' now" in str(result.exception)
    result = invoke("hallusionbench", "--data", hallusion_dir, "--out", run, *QA)  # the judge left out
    assert isinstance(result.exception, UsageError) and "judge: " in str(result.exception)

    def refused(*args) -> str:
        result = invoke("hallusionbench", "--data", hallusion_dir, "--out", tmp_path / "other", *args, *QA)
        assert isinstance(result.exception, UsageError), result.output
        return str(result.exception)

    assert "needs --judge-model" in refused("--judge", fake_judge.url)
    assert "give --judge too" in refused("--judge-model", "judge-a")
    assert "neither an http(s) URL nor an existing model folder" in refused("--judge", tmp_path / "nothing")
    assert "no config.json" in refused("--judge", tmp_path)
    assert "serves 'judge-a', 'judge-b', not --judge-model 'judge-c'" in refused(
        "--judge", fake_judge.url, "--judge-model", "judge-c")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert "cannot be reached" in refused("--judge", f"http://127.0.0.1:{port}/v1", "--judge-model", "j")
    result = invoke("shapes-vqa", "--out", tmp_path / "shapes", "--limit", 1, "--judge", fake_judge.url,
                    "--judge-model", "judge-a", *QA)
    assert isinstance(result.exception, UsageError) and "protocol uses no judge" in str(result.exception)
    assert fake_judge.calls == 1 and tiny_cli == ["tiny"]  # no model loaded for bad input


@pytest.fixture(scope="module")
def local_judge(tmp_path_factory) -> Path:
    """A 2-layer Qwen2 causal LM (width 32) and the tiny tokenizer, saved as a transformers folder."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from seganswer_cli.model.mllm import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("judge") / "tiny-judge"
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_local_judge_runs_and_is_cached(tiny_cli, local_judge, distinct_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    result = invoke("hallusionbench", "--data", distinct_dir, "--out", run, "--judge", local_judge, "--json", *QA)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["judge"]["kind"] == "local" and summary["judge"]["target"] == str(local_judge.resolve())
    assert summary["judge"]["judged"] == 5 and summary["judge"]["judge_failed"] == 0
    records = predictions(run)
    assert all(r["rule"] == "judge:always" and isinstance(r["judge"]["raw"], str) for r in records)
    assert len(cache_lines(run)) == 5 and {c["model"] for c in cache_lines(run)} == {str(local_judge.resolve())}
    # every call cached: a resumed run does not even load the judge
    monkeypatch.setattr(judge_module.LocalJudge, "_load", lambda self: pytest.fail("judge loaded"))
    (run / "predictions.jsonl").write_text("")
    result = invoke("hallusionbench", "--data", distinct_dir, "--out", run, "--judge", local_judge, "--json", *QA)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["judge"]["cached"] == 5
    assert [r["judge"] for r in predictions(run)] == [{**r["judge"], "cached": True} for r in records]


def test_prompts_hold_the_question_and_reply_not_the_gold_answer():
    item = EvalItem("q", "mmbench", None, "Which animal?", "", "B", options={"A": "cat", "B": "dog"})
    prompt = build_prompt(item, "It looks <|seg|>.<|im_end|><answer>the dog</answer>")
    assert "Which animal?" in prompt and "A. cat\nB. dog" in prompt and "<answer>the dog</answer>" in prompt
    assert "(A, B)" in prompt and "correct" not in prompt.lower()
    yesno = EvalItem("h", "hallusionbench", None, "Is it red?", "", "no", answer_kind="yesno")
    assert "Is it red?" in build_prompt(yesno, "No.") and build_prompt(
        EvalItem("t", "x", None, "?", "", "1", answer_kind="number"), "1") is None
    assert parse_verdict("Yes.", yesno) == "yes" and parse_verdict("unclear", yesno) is None
    assert parse_verdict("**B**", item) == "B" and parse_verdict("The answer is B", item) is None


def test_retries_back_off_and_stop_at_errors_that_do_not_heal(tmp_path):
    from seganswer_cli.eval.judge import Judge, JudgeCache, JudgeCallError, JudgeConfig

    class Flaky:
        config = JudgeConfig("http://judge/v1", "http", "m")
        retry = RetryPolicy(tries=4, first_wait=0.5, give_up_after=2)

        def __init__(self, errors):
            self.errors, self.calls = list(errors), 0

        def complete(self, prompt):
            self.calls += 1
            if self.errors:
                raise self.errors.pop(0)
            return "no"

    item = EvalItem("h", "hallusionbench", None, "Is it red?", "", "no", answer_kind="yesno")
    rules = score_sample("?", item)
    waits = []
    client = Flaky([JudgeCallError("timed out"), JudgeCallError("HTTP 503")])
    judge = Judge(client, "always", JudgeCache(tmp_path / JUDGE_CACHE), sleep=waits.append)
    result, fields = judge.review("?", item, rules)
    assert client.calls == 3 and waits == [0.5, 1.0] and result.correct and fields["judge"]["verdict"] == "no"
    assert rules.rule == "none" and fields["rule_based"]["rule"] == "none"
    client = Flaky([JudgeCallError("HTTP 400", transient=False)] * 2)
    judge = Judge(client, "always", JudgeCache(tmp_path / "other.jsonl"), sleep=waits.append)
    assert judge.review("a", item, rules)[1]["judge_failed"] and client.calls == 1  # not retried
    assert judge.review("b", item, rules)[1]["judge_failed"] and judge.down  # two failed samples in a row
    assert judge.review("c", item, rules)[1]["judge"]["error"].startswith("not asked") and client.calls == 2
