"""Stop a long-running command's loop on SIGTERM/SIGINT (relay_outbox and aiworker's run_worker).

It lives in outbox, the lower layer, so that aiworker can import it without an import cycle.
"""

import signal
from collections.abc import Callable
from types import FrameType


def stop_on_signals() -> Callable[[], bool]:
    """Make SIGTERM and SIGINT set a flag; return a function that reads it.

    The handlers only set the flag (no exception is raised where the signal lands), so the
    loop finishes its current step and then cleans up: the relay its batch, the supervisor
    stopping qcluster within its stop timeout. Call it from the main thread.
    """
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return lambda: stopping
