"""An engine agent's options from its environment (Z4J_<ENGINE>_HEARTBEAT_S,
Z4J_<ENGINE>_QUEUE_DEPTH_S, Z4J_<ENGINE>_QUEUES): one reading and one error
wording for every engine. A bad value is a ConfigError, which the agent's
bootstrap reports in one line before the worker runs without z4j."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from z4j_agents.config import ConfigError


def seconds(env: Mapping[str, str], name: str, *, above_zero: bool = False) -> float | None:
    """The finite, non-negative number of seconds in ``env[name]`` (above 0 with
    ``above_zero``); None when unset or empty."""
    raw = env.get(name)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}")
    if above_zero and value == 0:
        raise ConfigError(f"{name} must be above 0, got {raw!r}")
    return value


def names(env: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    """A comma-separated list in ``env[name]``, blanks dropped; None when unset or empty."""
    raw = env.get(name)
    if not raw:
        return None
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def engine_options(env: Mapping[str, str], engine: str, *, queues: bool = True) -> dict[str, Any]:
    """``heartbeat_s`` (above 0), ``queue_depth_s`` (0: no sampling) and, with ``queues``,
    the extra ``queues`` to sample, from Z4J_<ENGINE>_…; only those that are set."""
    prefix = f"Z4J_{engine.upper()}_"
    found = {"heartbeat_s": seconds(env, prefix + "HEARTBEAT_S", above_zero=True),
             "queue_depth_s": seconds(env, prefix + "QUEUE_DEPTH_S")}
    if queues:
        found["queues"] = names(env, prefix + "QUEUES")
    return {key: value for key, value in found.items() if value is not None}
