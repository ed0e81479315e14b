"""Which storage backends the tests cover (Z4J_TEST_DBS), and the one a
client-side test runs on.

Storage behaviour is tested on every backend in DBS. A test of a client (the
console's screens, the ``z4j`` client commands) that only talks to the API
runs on ONE_DB: what the server does on each database is shown by the
collector's own tests, and a few end-to-end console tests stay on both.

Standard library and pytest only (conftest.py imports it).
"""

from __future__ import annotations

import os

import pytest

DBS = [d.strip() for d in os.environ.get("Z4J_TEST_DBS", "sqlite,postgres").split(",") if d.strip()]
ONE_DB = "sqlite" if "sqlite" in DBS else (DBS[0] if DBS else "sqlite")


def on_one_db(fixture: str = "db_url"):
    """Runs the test on ONE_DB only: ``fixture`` (``db_url``, which the
    ``collector`` fixture uses, or a module fixture parametrized by database)
    takes that one value instead of every database."""
    return pytest.mark.parametrize(fixture, [ONE_DB], ids=[ONE_DB], indirect=True)
