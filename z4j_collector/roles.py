"""Project roles, lowest first (PRODUCT.md §5)."""

from __future__ import annotations

from z4j_collector.errors import CollectorError

ROLES = ("viewer", "operator", "admin", "owner")


def rank(role: str) -> int:
    return ROLES.index(role)


def at_least(role: str | None, needed: str) -> bool:
    return role is not None and rank(role) >= rank(needed)


def lowest(*roles: str | None) -> str | None:
    """The weaker of several roles; None when any is None (no access)."""
    if any(r is None for r in roles):
        return None
    return min(roles, key=rank)  # type: ignore[arg-type]


def check_role(role: str) -> str:
    if role not in ROLES:
        raise CollectorError(f"role must be one of {', '.join(ROLES)}, got {role!r}", code="bad_role")
    return role
