"""Where a model part comes from: a local folder, the hub's local cache, or the hub itself.

``local_folder(source, ...)`` turns what the user gave (``--model``, ``--mllm``, ``--sam``, a
preset's hub id) into a folder on this machine, or refuses in one line that says what to pass:

1. a folder that exists is used as it is;
2. a path that cannot be a hub id (``./x``, ``/x``, ``~/x``, more than one ``/``), or an ``a/b``
   whose ``a`` is a local folder, is a missing local path, never looked up on the hub;
3. a hub id (``org/name``) is looked up in huggingface_hub's local cache first (no network);
4. with ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set, a hub id not in the cache is refused;
5. otherwise the hub's endpoint (huggingface_hub's configured ``ENDPOINT``) is probed with one
   short TCP connection before any download: unreachable, it is refused at once instead of after
   minutes of retries.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

from seganswer_cli.errors import ModelFolderError

#: Seconds the connectivity probe waits for the hub's endpoint to accept a connection.
PROBE_TIMEOUT_S = 3.0

#: Files a download fetches (a model repository may also hold other formats: ``.bin``, ``.pt``, ``.gguf``).
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"]


def looks_like_hub_id(source: str) -> bool:
    """``org/name`` with no ``./``, ``/`` or ``~`` in front.

    >>> looks_like_hub_id("Qwen/Qwen2.5-VL-7B-Instruct"), looks_like_hub_id("./a/b"), looks_like_hub_id("a/b/c")
    (True, False, False)
    """
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value (read now, not at import)."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> str:
    """The hub endpoint huggingface_hub is configured with (``HF_ENDPOINT`` or its default)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def endpoint_reachable(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether ``endpoint`` (a URL) accepts a TCP connection within ``timeout`` seconds. The name
    lookup is bounded too: it runs in a daemon thread that is given up on (a resolver that does
    not answer would otherwise block for its own, much longer, timeout)."""
    parts = urlsplit(endpoint)
    if not parts.hostname:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    connected: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((parts.hostname, port), timeout=timeout):
                connected.append(True)
        except OSError:
            pass

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)  # returns as soon as the connection is made or refused
    return bool(connected)


def cached_snapshot(repo_id: str) -> Path | None:
    """The folder of ``repo_id`` in huggingface_hub's local cache, or None (never touches the network)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


#: Each part a source is found for: its name in messages and the option that takes a local copy.
PARTS = {
    "mllm": ("MLLM", "--mllm (train-stage1: --mllm-path)"),
    "sam": ("SAM 2.1", "--sam (train-stage1: --sam-path)"),
    "model": ("model", "--model"),
}


def local_folder(source: str, part: str) -> Path:
    """A local folder holding ``source`` (see the module docstring), downloading a hub id when the
    hub can be reached. ``part`` (a key of ``PARTS``) names what it is and the option that takes a
    local copy. Refusals are ``ModelFolderError``, one line."""
    what, flag = PARTS[part]
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelFolderError(f"{source}: not a folder")
    if not looks_like_hub_id(source) or Path(source.split("/")[0]).is_dir():
        raise ModelFolderError(f"{what} folder not found: {source}")
    cached = cached_snapshot(source)
    if cached is not None:
        return cached
    advice = f"download it on a machine with network access and pass its folder with {flag}"
    if hub_offline():
        raise ModelFolderError(
            f"{source}: no local folder of that name and not in the hub cache, and it cannot be downloaded "
            f"as a hub id while offline (HF_HUB_OFFLINE is set); {advice}"
        )
    endpoint = hub_endpoint()
    if not endpoint_reachable(endpoint):
        raise ModelFolderError(
            f"{source}: no local folder of that name and not in the hub cache, and the hub ({endpoint}) cannot "
            f"be reached; {advice} (or set HF_HUB_OFFLINE=1 to skip the hub)"
        )
    return download(source, what=what)


def download(repo_id: str, *, what: str) -> Path:
    """``repo_id``'s files (``DOWNLOAD_PATTERNS``) in the hub cache; one line when the hub refuses."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=DOWNLOAD_PATTERNS))
    except GatedRepoError:
        raise ModelFolderError(f"{repo_id}: the hub repository is gated; log in (hf auth login) and accept its terms") from None
    except RepositoryNotFoundError:
        raise ModelFolderError(f"{what} not found: {repo_id} is neither a local folder nor a hub repository") from None
    except Exception as e:  # network, disk, auth: one clear line
        reason = " ".join(str(e).split())[:300]
        raise ModelFolderError(f"cannot download {repo_id} from the hub: {reason}") from None
