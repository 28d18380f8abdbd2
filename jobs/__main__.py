"""``python -m jobs``: the ``maskjobs`` command where only the code is shipped (a Ray job's entrypoint)."""

from __future__ import annotations

from jobs.cli.main import app

if __name__ == "__main__":
    app(prog_name="maskjobs")
