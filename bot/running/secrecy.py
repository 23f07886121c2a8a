"""Keeping the bot's secrets (its token, the webhook's secret) inside the bot's process.

- The process is not dumpable (``PR_SET_DUMPABLE`` 0), from its first line on: another process of the same
  user, a child of the bot included, can neither trace it nor read its ``/proc/<pid>/environ`` or ``mem``, and
  a crash leaves no core file.  Root can still do all of that.
- Once Settings holds what it needs, the environment keeps only the variables named below, never a secret.
  Every process the bot starts gets exactly that environment (a spawned child inherits its parent's C
  ``environ``, whatever ``multiprocessing`` is told), so neither a file reader parsing a stranger's file nor the
  code a Hub repository ships finds a secret there, nor any variable the list does not name.
- The environment a process was started with stays in its memory, where ``/proc/<pid>/environ`` reads it,
  however the variables change later.  The variables kept are copied out of it, then it is zeroed: that file
  shows nothing, even to root.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

from bot.settings import SECRET_VARIABLES

PR_SET_DUMPABLE = 4  # prctl(2)
ENV_START_FIELD, ENV_END_FIELD = 50, 51  # of /proc/<pid>/stat, counting from 1 (proc(5))
# What the bot's processes read from the environment after start-up.  Settings are read once, at start, and
# never from here again.
ALLOWED_VARIABLES = frozenset(
    {
        # the system: programs, home, user, language, time zone, temporary files, terminal
        *("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM"),
        # Python, and libraries the loader finds only so (OpenVINO archives) or is told to load (jemalloc)
        *("PYTHONPATH", "PYTHONHOME", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING"),
        *("PYTHONUTF8", "PYTHONFAULTHANDLER", "PYTHONWARNINGS", "LD_LIBRARY_PATH", "LD_PRELOAD"),
        # reaching the Hub: proxies and certificates
        *("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy"),
        *("no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"),
        # Hugging Face's caches, Hub address and manners (never its token), XDG's cache, torch's home
        *("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_XET_CACHE", "HF_MODULES_CACHE", "HF_ENDPOINT"),
        *("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_HUB_DISABLE_PROGRESS_BARS"),
        *("HF_HUB_ENABLE_HF_TRANSFER", "HF_HUB_DISABLE_XET", "HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"),
        *("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "TORCH_HOME"),
        # python-telegram-bot, in the bot's own process (bot/__init__.py)
        "PTB_TIMEDELTA",
    }
)
# Locale parts, and the thread and tuning settings of OpenMP, oneTBB, MKL, OpenBLAS and OpenVINO.
ALLOWED_PREFIXES = ("LC_", "OMP_", "KMP_", "MKL_", "TBB_", "OPENBLAS_", "OV_", "OPENVINO_")


def make_undumpable() -> None:
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def allowed(name: str, also: tuple[str, ...] = ()) -> bool:
    """``also``: prefixes a command needs beyond the bot's (``phi3bot serve``: Ray's ``RAY_``)."""
    listed = name in ALLOWED_VARIABLES or name.startswith((*ALLOWED_PREFIXES, *also))
    return name.upper() not in SECRET_VARIABLES and listed


def keep_allowed_environment(also: tuple[str, ...] = ()) -> None:
    """Called once Settings are read, while this process has a single thread (libc's environment is not
    thread-safe to change)."""
    for name in [name for name in os.environ if not allowed(name, also)]:
        del os.environ[name]
    if sys.platform == "linux":
        _wipe_original_environment()


def _wipe_original_environment() -> None:
    """libc's ``environ`` points into the original block for every variable never set since: ``clearenv`` and
    setting each one again copies them to the heap, and then nothing points into the block."""
    ctypes.CDLL(None, use_errno=True).clearenv()
    for name, value in os.environb.items():
        os.putenv(name, value)  # setenv(3), which copies
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()  # after the command name, field 3 on
    start, end = (int(fields[number - 3]) for number in (ENV_START_FIELD, ENV_END_FIELD))
    ctypes.memset(start, 0, end - start)
