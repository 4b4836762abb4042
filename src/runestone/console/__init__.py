"""The operations console: ``GET /console``, a page served by the gateway itself.

``ConsoleStats`` keeps an hour of traffic in memory (a telemetry subscriber);
``_views`` turns it, the alias table, the breakers and the usage report into the JSON
the page reads; ``static/`` holds the page (HTML, CSS and JavaScript of its own, no
build step, nothing fetched from elsewhere).
"""

from pathlib import Path

from runestone.console._stats import ConsoleStats
from runestone.console._views import WINDOWS

STATIC = Path(__file__).parent / "static"

__all__ = ["STATIC", "WINDOWS", "ConsoleStats"]
