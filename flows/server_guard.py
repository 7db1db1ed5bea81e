"""The temporary Prefect server ends with the process that started it, even one killed with SIGKILL.

Without a configured `PREFECT_API_URL`, Prefect 3.8.8 runs flows against a temporary server:
`prefect.server.api.server.SubprocessASGIServer` starts `python -m uvicorn ... prefect.server.api.server:create_app`
with `subprocess.Popen`, handing it this process's environment, and stops it from an `atexit` hook. A process killed
by SIGKILL (or by a signal it does not handle) runs no `atexit` hooks, so each such stop left a server running,
holding a port and 150-200 MB.

Prefect offers no hook into that command, but the command is uvicorn's, whose options can all be given as
`UVICORN_<OPTION>` environment variables, and whose `--loop` takes the import string of an event-loop factory.
`guard_environment` (in the process that starts flows) names `guarded_loop` in `UVICORN_LOOP` and itself in
`MULTIEMBED_SERVER_PARENT`; in the server, uvicorn calls `guarded_loop` before it loads the app, and it starts a
watchdog thread before making the loop uvicorn would have made. The watchdog polls the server's parent pid: once it
has changed (the parent died, and the server was handed to init or a subreaper) it sends the server SIGTERM, uvicorn's
graceful stop, and SIGKILL if that has not ended it within `KILL_AFTER_S`.

Why not the alternatives: `prctl(PR_SET_PDEATHSIG)` fires when the *thread* that forked the server ends, and Prefect
may start the server from a worker thread; it, like a pipe whose write end the parent holds, would also need
arguments (`preexec_fn`, `pass_fds`) that Prefect's `Popen` call does not pass, so Prefect's code would have to be
patched. Polling `getppid` costs one system call every `POLL_S`.

A server that cannot import the loop factory does not start, and the run fails once Prefect's startup timeout has run
out; that would happen where, for example, the working directory, which heads the server's path, holds a `flows.py`
of the user's. So the guard is only set where a new interpreter, started as the server is, imports this very file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

PARENT_ENV = "MULTIEMBED_SERVER_PARENT"  # the pid of the process whose death ends the server
LOOP_ENV = "UVICORN_LOOP"  # uvicorn's --loop
USER_LOOP_ENV = "MULTIEMBED_SERVER_LOOP"  # a UVICORN_LOOP the user had set, which guarded_loop then builds
GUARDED_LOOP = f"{__name__}:guarded_loop"
POLL_S = 0.5
KILL_AFTER_S = 5.0

_started = threading.Event()
logger = logging.getLogger(__name__)


@contextmanager
def guard_environment() -> Iterator[None]:
    """While inside, temporary servers started from this process (they inherit its environment) die with it;
    the environment is restored on leaving (a server already started keeps its guard)."""
    if not server_imports_guard():
        logger.warning("the temporary Prefect server is not guarded to end with this process: a new Python "
                       "started from here does not import %s (%s)", __name__, __file__)
        yield
        return
    names = (PARENT_ENV, LOOP_ENV, USER_LOOP_ENV)
    saved = {name: os.environ.get(name) for name in names}
    os.environ[PARENT_ENV] = str(os.getpid())
    if saved[LOOP_ENV] not in (None, GUARDED_LOOP):
        os.environ[USER_LOOP_ENV] = saved[LOOP_ENV]
    os.environ[LOOP_ENV] = GUARDED_LOOP
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def server_imports_guard() -> bool:
    """Whether a Python started from here with this environment, its path headed by the folder Prefect passes as
    uvicorn's `--app-dir`, imports this file; it takes a new interpreter's start, a fraction of a second."""
    import prefect

    probe = (f"import sys; sys.path.insert(0, {str(prefect.__module_path__.parent)!r}); "
             f"import {__name__} as m; print(m.__file__)")
    try:
        found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        return found.returncode == 0 and os.path.samefile(found.stdout.strip().rsplit("\n", 1)[-1], __file__)
    except (OSError, subprocess.TimeoutExpired):
        return False


def guarded_loop() -> asyncio.AbstractEventLoop:
    """uvicorn's event-loop factory in a guarded server: start the watchdog, then make the loop the user's
    `UVICORN_LOOP` (default `auto`) names. The variables are taken out of the environment, so that processes the
    server starts are not guarded against the wrong parent."""
    parent = os.environ.pop(PARENT_ENV, None)
    inner = os.environ.pop(USER_LOOP_ENV, "auto")
    os.environ.pop(LOOP_ENV, None)
    if parent is not None and parent.isdigit():
        start_watchdog(int(parent))
    return _loop_factory(inner)()


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The loop factory uvicorn itself would use for `--loop name` (a built-in name or an import string)."""
    from uvicorn.config import LOOP_FACTORIES
    from uvicorn.importer import import_from_string

    if name not in LOOP_FACTORIES:
        return import_from_string(name)
    target = LOOP_FACTORIES[name]
    return asyncio.new_event_loop if target is None else import_from_string(target)(use_subprocess=False)


def start_watchdog(parent: int) -> bool:
    """Watch `parent` from a daemon thread, once per process; whether a watchdog runs. A process that is not
    `parent`'s child while `parent` lives (a grandchild that inherited the variables) is not watched."""
    if os.getppid() != parent and _alive(parent):
        return False
    if not _started.is_set():
        _started.set()
        threading.Thread(target=_watch, args=(parent,), name="server-guard", daemon=True).start()
    return True


def _alive(pid: int) -> bool:
    """Whether a process `pid` exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch(parent: int) -> None:
    """Return only by ending this process: SIGTERM once `parent` is no longer its parent, SIGKILL if still here
    `KILL_AFTER_S` later."""
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(KILL_AFTER_S)
    os.kill(os.getpid(), signal.SIGKILL)
