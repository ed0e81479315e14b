"""A worker that installs an engine extra gets the agent and nothing of the
collector or the console: no Litestar, Textual or SQLAlchemy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("litestar", "textual", "sqlalchemy", "alembic", "aiosqlite", "psycopg", "uvicorn", "typer", "httpx", "rich")
PROBE = (
    "import sys, z4j_agents, z4j_agents.bare, z4j_agents.runtime, z4j_agents.protocol, z4j_agents.redaction, "
    "z4j_agents.config\n"
    f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
    "print(','.join(loaded))\n"
)


def test_agent_modules_import_nothing_heavy():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "", f"the agent imported {out.stdout.strip()}"


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory) -> Path:
    """A fresh environment with only ``z4j[celery]``, as a worker would have."""
    uv = shutil.which("uv")
    assert uv, "uv is needed to build the worker environment (scripts/test.sh installs it)"
    env_dir = tmp_path_factory.mktemp("worker") / "venv"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(env_dir), "UV_PYTHON_DOWNLOADS": "never"}
    subprocess.run(
        [uv, "sync", "--frozen", "--quiet", "--python", sys.executable, "--extra", "celery", "--no-default-groups"],
        cwd=ROOT, env=env, check=True, timeout=600,
    )
    return env_dir / "bin" / "python"


def test_celery_extra_installs_no_collector_or_console(worker_env):
    out = subprocess.run(
        [str(worker_env), "-c", "import importlib.util as u; print([m for m in %r if u.find_spec(m)])" % (HEAVY[:6],)],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "[]", f"z4j[celery] installed {out.stdout.strip()}"
    out = subprocess.run([str(worker_env), "-c", "import celery, z4j_agents.bare; " + PROBE],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"the agent imported {out.stdout.strip()}"


def test_z4j_command_in_a_worker_env_says_what_is_missing(worker_env):
    out = subprocess.run([str(worker_env.parent / "z4j"), "status"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "pip install 'z4j[cli]'" in out.stderr
