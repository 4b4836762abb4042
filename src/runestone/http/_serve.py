"""The application as ``runestone serve`` runs it: one per worker process.

Process-wide tuning belongs here, not in ``create_app``, which also builds the app for
applications that mount it and own their process.
"""

from __future__ import annotations

import gc

from runestone.config import Settings
from runestone.http import RunestoneApp, create_app
from runestone.http._server import configure

#: A request allocates a few thousand objects, so Python's default first threshold (700)
#: ran a collection every request or so (5% of the gateway's instructions per request);
#: cycles are rare here, and wait a little longer.
GC_THRESHOLDS = (10_000, 10, 10)


def serve_app() -> RunestoneApp:
    settings = Settings.from_env()
    configure(settings.edge)  # this worker's connections, before it accepts any
    app = create_app(settings)
    # What start-up made lives as long as the process: out of every collection's way.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return app
