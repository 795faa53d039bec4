"""Whether the Hugging Face Hub can be reached, checked once per process.

Without a network the hub clients retry each request for tens of seconds and print a line per
retry. layercut asks once (a TCP connection to the hub's endpoint, a few seconds at most); when
the hub is out of reach, hub ids and `hf:` datasets are read from the local cache only
(`local_files_only` / offline mode), and fail in one line when they are not there.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

DEFAULT_ENDPOINT = "https://huggingface.co"
TRUE_WORDS = ("1", "true", "yes", "on")


def offline_requested() -> bool:
    """The user said so: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE / HF_DATASETS_OFFLINE) is set."""
    return any(os.environ.get(name, "").strip().lower() in TRUE_WORDS
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_reachable() -> bool:
    """False when offline mode is requested, else whether the hub endpoint answers (asked once)."""
    return not offline_requested() and _endpoint_answers()


@functools.lru_cache(maxsize=1)
def _endpoint_answers(timeout: float = 3.0) -> bool:
    """True when a TCP connection to the hub endpoint ($HF_ENDPOINT) opens within `timeout` seconds."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT))
    host = endpoint.hostname or ""
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def use_offline_datasets() -> None:
    """Put the `datasets` library in offline mode (its flags are read at import, so set both)."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import datasets.config as datasets_config
    except ImportError:
        return
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if hasattr(datasets_config, name):
            setattr(datasets_config, name, True)
