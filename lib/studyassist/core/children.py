"""Child processes that die with their parent, started without ``preexec_fn``.

``preexec_fn`` runs Python between fork and exec. In a parent with threads (gRPC's, a health
check's channel) the forked child can block there forever on a lock another thread held at the
fork: the launcher hung that way in ``Popen`` with its child never reaching exec. Instead the child
runs a tiny shim: ask the kernel for SIGTERM when the parent dies (``PR_SET_PDEATHSIG``), check the
parent is still the one that started it (it may have died before prctl), then exec the command.

The death signal follows the *thread* that forked the child: start children from a thread that
lives as long as the process (the main thread, or the event loop's), never from a worker thread.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

_EXEC_SHIM = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"  # 1 = PR_SET_PDEATHSIG
    "os.getppid() == int(sys.argv[1]) or sys.exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def dying_with_this_process(command: Sequence[str]) -> list[str]:
    """``command`` (its executable an absolute path, e.g. ``sys.executable``) wrapped in the shim."""
    if not os.path.isabs(command[0]):
        raise ValueError(f"the executable must be an absolute path, not {command[0]!r}")
    return [sys.executable, "-c", _EXEC_SHIM, str(os.getpid()), *command]
