"""Hub ids with no network (``sources``): the local cache first, ``HF_HUB_OFFLINE`` honoured, and
otherwise one short probe of the configured endpoint before any download; each refusal is one line
naming the option that takes a local copy. This machine's tests never reach the network: the
endpoint is pointed at a closed local port, the cache at an empty or hand-made folder."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seganswer_cli.cli import main
from seganswer_cli.model import sources


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released: connecting is refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """An empty hub cache, no offline variable, and the endpoint at a closed local port."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    return endpoint


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["seganswer", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err


def put_in_cache(cache: Path, repo_id: str, files: Path) -> Path:
    """``files`` as huggingface_hub's cache holds a downloaded snapshot of ``repo_id``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(files, repo / "snapshots" / commit)
    return repo / "snapshots" / commit


def test_probe_of_a_closed_port_is_fast_and_false():
    start = time.monotonic()
    assert not sources.endpoint_reachable(f"http://127.0.0.1:{closed_port()}")
    assert time.monotonic() - start < 1.0
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert sources.endpoint_reachable(f"http://127.0.0.1:{server.getsockname()[1]}")


def test_probe_gives_up_on_a_name_lookup_that_does_not_answer(monkeypatch):
    def slow_resolver(*args, **kwargs):
        time.sleep(1.5)
        raise socket.gaierror("Temporary failure in name resolution")

    monkeypatch.setattr(sources.socket, "create_connection", slow_resolver)
    start = time.monotonic()
    assert not sources.endpoint_reachable("https://hub.invalid", timeout=0.2)
    assert time.monotonic() - start < 1.0


def test_unreachable_hub_is_one_line_naming_the_option(monkeypatch, capsys, tmp_path, no_hub):
    start = time.monotonic()
    code, err = run_cli(monkeypatch, capsys, "model", "init", "qwen2.5-vl-7b", "--out", tmp_path / "out")
    assert time.monotonic() - start < 10  # no retries: one refused connection
    assert code == 1 and err.count("\n") == 1, err
    assert err.strip() == (
        "error: Qwen/Qwen2.5-VL-7B-Instruct: no local folder of that name and not in the hub cache, and the hub "
        f"({no_hub}) cannot be reached; download it on a machine with network access and pass its folder with "
        "--mllm (train-stage1: --mllm-path) (or set HF_HUB_OFFLINE=1 to skip the hub)"
    )
    assert not (tmp_path / "out").exists()


def test_sam_unreachable_is_said_before_the_mllm_loads(monkeypatch, capsys, tmp_path, no_hub, published_mllm):
    def not_loaded(*args, **kwargs):
        raise AssertionError("the MLLM was loaded before SAM 2.1 was found")

    monkeypatch.setattr("seganswer_cli.model.mllm.load_mllm", not_loaded)
    code, err = run_cli(monkeypatch, capsys, "model", "init", "qwen2.5-vl-7b", "--mllm", published_mllm,
                        "--out", tmp_path / "out")
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("error: facebook/sam2.1-hiera-large: no local folder") and "--sam (train-stage1: --sam-path)" in err


def test_offline_variable_is_honoured_without_a_probe(monkeypatch, capsys, tmp_path, no_hub):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sources, "endpoint_reachable", lambda *a, **k: pytest.fail("probed while offline"))
    code, err = run_cli(monkeypatch, capsys, "model", "info", "someone/seganswer-model")
    assert code == 1 and err.count("\n") == 1, err
    assert err.strip() == (
        "error: someone/seganswer-model: no local folder of that name and not in the hub cache, and it cannot be "
        "downloaded as a hub id while offline (HF_HUB_OFFLINE is set); download it on a machine with network "
        "access and pass its folder with --model"
    )


def test_missing_local_path_shaped_like_a_hub_id(monkeypatch, capsys, tmp_path, no_hub):
    """``runs/model`` where ``runs/`` is a local folder: a missing path, never looked up on the hub."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    monkeypatch.setattr(sources, "cached_snapshot", lambda *a: pytest.fail("looked up in the hub cache"))
    monkeypatch.setattr(sources, "endpoint_reachable", lambda *a, **k: pytest.fail("probed the hub"))
    code, err = run_cli(monkeypatch, capsys, "model", "info", "runs/model")
    assert code == 1 and err.strip() == "error: model folder not found: runs/model", err
    code, err = run_cli(monkeypatch, capsys, "model", "init", "qwen2.5-vl-7b", "--mllm", "runs/qwen", "--out", "o")
    assert code == 1 and err.strip() == "error: MLLM folder not found: runs/qwen", err


def test_hub_id_in_the_local_cache_loads_offline(monkeypatch, capsys, tmp_path, no_hub, published_mllm, published_sam):
    """The preset's hub id found in huggingface_hub's cache: no network, no option needed."""
    from huggingface_hub import constants

    put_in_cache(Path(constants.HF_HUB_CACHE), "Qwen/Qwen2.5-VL-7B-Instruct", published_mllm)
    monkeypatch.setattr(sources, "endpoint_reachable", lambda *a, **k: pytest.fail("probed with the files cached"))
    out = tmp_path / "out"
    code, err = run_cli(monkeypatch, capsys, "model", "init", "qwen2.5-vl-7b", "--sam", published_sam, "--out", out)
    assert code in (0, None), err
    card = json.loads((out / "seganswer.json").read_text())
    assert card["mllm_source"] == "Qwen/Qwen2.5-VL-7B-Instruct" and card["sam_source"] == str(published_sam)


@pytest.mark.slow
def test_model_init_of_the_7b_preset_with_no_network_fails_fast(tmp_path):
    """The whole command as a user runs it (a fresh process, huggingface_hub's own environment
    variables): one line, seconds, not minutes of retries."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
               PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "seganswer_cli", "model", "init", "qwen2.5-vl-7b", "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=120, env=env)
    elapsed = time.monotonic() - start
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert lines[0].startswith("error: Qwen/Qwen2.5-VL-7B-Instruct: no local folder") and "--mllm" in lines[0]
    assert "HF_HUB_OFFLINE" in lines[0] and "Traceback" not in out.stderr
    assert elapsed < 60, elapsed  # the import of torch and transformers dominates; the probe takes milliseconds
    assert not (tmp_path / "out").exists()
