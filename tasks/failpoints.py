"""Named points at which a run can be killed on purpose, so tests can prove a kill anywhere is repaired.

`MULTIEMBED_FAILPOINT=<name>` makes the process kill itself with SIGKILL the first time it reaches the point
of that name (as the OOM killer or a lost node would: no cleanup, no `finally`). Unset, a point costs one
environment lookup. The points are the boundaries of a run: `planned`, `diffed`, `staged:<n>` (after the
n-th shard is staged), `intent-written`, `committed:<table>`, `before-rejects`, `before-runs`,
`before-cleanup`.
"""

from __future__ import annotations

import os
import signal

FAILPOINT_ENV = "MULTIEMBED_FAILPOINT"


def reached(name: str) -> None:
    """Die here, at once, if this is the point `MULTIEMBED_FAILPOINT` names."""
    if os.environ.get(FAILPOINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
