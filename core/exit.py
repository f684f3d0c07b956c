"""Deterministic process exit for programs that used a Temporal client or worker.

temporalio 1.35 can abort during interpreter finalization (sdk-python issue #300), turning
a clean run into a crash. Entry points flush their output and leave with os._exit instead.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any


def exit_now(entry: Callable[..., Any], *args: Any) -> None:
    code = 0
    try:
        entry(*args)
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if done.code is not None and not isinstance(done.code, int):
            sys.stderr.write(f"{done.code}\n")
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        logging.getLogger(__name__).exception("unhandled error")
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
