"""REST client of the collector (no Textual import: the CLI uses it too)."""

from __future__ import annotations

from typing import Any

import httpx

from z4j_tui import credentials


# A login session that ended: the fix is always the same.
SESSION_GONE = {"session_expired", "session_ended"}


class ClientError(Exception):
    """A request failed; the message is the server's (or the network's) reason."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Client:
    """``url``: --url, else $Z4J_URL, else the URL last logged in to. ``token``:
    given, else $Z4J_API_TOKEN, else the stored ``z4j login`` for the URL."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = credentials.resolve_url(url)
        self.token = token if token is not None else credentials.resolve_token(self.url)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the collector at {self.url}: {exc}") from None
        if response.status_code >= 400:
            code = None
            try:
                body = response.json()
                code = body.get("code")
                reason = f"{body.get('message')} ({code})"
            except (ValueError, AttributeError):
                reason = response.text.strip()[:200] or response.reason_phrase
            if response.status_code == 401 and code in SESSION_GONE:
                raise ClientError(f"session expired: run `z4j login --url {self.url}`", 401, code)
            if response.status_code == 401 and code == "unauthorized" and not self.token:
                raise ClientError(f"401: not logged in to {self.url}: run `z4j login --url {self.url} --email …`, "
                                  f"or set Z4J_API_TOKEN", 401, code)
            raise ClientError(f"{response.status_code}: {reason}", response.status_code, code)
        if response.status_code == 204 or not response.content:
            return None
        if response.headers.get("content-type", "").startswith("text/csv"):
            return response.text
        return response.json()

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/health")

    def list_tasks(self, project: str, **filters: Any) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v not in (None, "")}
        return self.request("GET", f"/api/v1/projects/{project}/tasks", params=params)

    def task(self, project: str, task_id: str, engine: str | None = None) -> dict[str, Any]:
        params = {"engine": engine} if engine else {}
        return self.request("GET", f"/api/v1/projects/{project}/tasks/{task_id}", params=params)

    def task_tree(self, project: str, task_id: str, engine: str | None = None) -> dict[str, Any]:
        params = {"engine": engine} if engine else {}
        return self.request("GET", f"/api/v1/projects/{project}/tasks/{task_id}/tree", params=params)

    def task_counts(self, project: str) -> dict[str, int]:
        return self.request("GET", f"/api/v1/projects/{project}/tasks/counts")

    def workers(self, project: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/v1/projects/{project}/workers")

    def queues(self, project: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/v1/projects/{project}/queues")

    def agents(self, project: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/v1/projects/{project}/agents")

    def send_command(self, project: str, action: str, args: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
        body = {"action": action, "args": args or {}, **{k: v for k, v in options.items() if v is not None}}
        return self.request("POST", f"/api/v1/projects/{project}/commands", json=body)

    def command(self, project: str, command_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/projects/{project}/commands/{command_id}")

    # ------------------------------------------------------------ accounts (public routes answer without a token)

    def login(self, email: str, password: str) -> dict[str, Any]:
        return self.request("POST", "/api/v1/auth/login", json={"email": email, "password": password})

    def logout(self) -> None:
        self.request("POST", "/api/v1/auth/logout")

    def setup(self, token: str, email: str, password: str, name: str = "") -> dict[str, Any]:
        return self.request("POST", "/api/v1/setup", json={"token": token, "email": email, "password": password,
                                                           "name": name})

    def invitation(self, token: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/invitations/{token}")

    def accept_invitation(self, token: str, password: str | None, name: str = "") -> dict[str, Any]:
        return self.request("POST", "/api/v1/invitations/accept", json={"token": token, "password": password,
                                                                         "name": name})

    def request_reset(self, email: str) -> dict[str, Any]:
        return self.request("POST", "/api/v1/auth/password-reset", json={"email": email})

    def complete_reset(self, token: str, password: str) -> None:
        self.request("POST", "/api/v1/auth/password-reset/complete", json={"token": token, "password": password})

    def me(self) -> dict[str, Any]:
        return self.request("GET", "/api/v1/auth/me")

    # ------------------------------------------------------------ sessions

    def sessions(self, user_id: int | None = None) -> list[dict[str, Any]]:
        path = "/api/v1/auth/sessions" if user_id is None else f"/api/v1/users/{user_id}/sessions"
        return self.request("GET", path)

    def end_session(self, session_id: int) -> None:
        self.request("DELETE", f"/api/v1/auth/sessions/{session_id}")

    def end_user_sessions(self, user_id: int) -> None:
        self.request("DELETE", f"/api/v1/users/{user_id}/sessions")

    # ------------------------------------------------------------ users, projects, members (RBAC on the server)

    def users(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/users")

    def create_user(self, email: str, password: str, name: str = "", superuser: bool = False) -> dict[str, Any]:
        return self.request("POST", "/api/v1/users", json={"email": email, "password": password, "name": name,
                                                           "superuser": superuser})

    def update_user(self, user_id: int, **change: bool) -> dict[str, Any]:
        return self.request("PATCH", f"/api/v1/users/{user_id}", json=change)

    def projects(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/projects")

    def create_project(self, slug: str, name: str = "") -> dict[str, Any]:
        return self.request("POST", "/api/v1/projects", json={"slug": slug, "name": name})

    def members(self, project: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/v1/projects/{project}/members")

    def set_member(self, project: str, user_id: int, role: str) -> dict[str, Any]:
        return self.request("PUT", f"/api/v1/projects/{project}/members/{user_id}", json={"role": role})

    def remove_member(self, project: str, user_id: int) -> None:
        self.request("DELETE", f"/api/v1/projects/{project}/members/{user_id}")

    def invite(self, project: str, email: str, role: str, expires_hours: float | None = None) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/projects/{project}/invitations",
                            json={"email": email, "role": role, "expires_hours": expires_hours})

    # ------------------------------------------------------------ API tokens and agents

    def tokens(self, project: str, everyone: bool = False) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/v1/projects/{project}/tokens", params={"all": "true"} if everyone else {})

    def create_token(self, project: str, name: str, role: str, expires_days: float) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/projects/{project}/tokens",
                            json={"name": name, "role": role, "expires_days": expires_days})

    def revoke_token(self, project: str, token_id: int) -> None:
        self.request("DELETE", f"/api/v1/projects/{project}/tokens/{token_id}")

    def create_agent(self, project: str, name: str) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/projects/{project}/agents", json={"name": name})

    def revoke_agent(self, project: str, agent_id: int) -> None:
        self.request("DELETE", f"/api/v1/projects/{project}/agents/{agent_id}")

    def rotate_agent(self, project: str, agent_id: int) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/projects/{project}/agents/{agent_id}/rotate")

    # ------------------------------------------------------------ roles, actions, schedules, trends (the console)

    def my_role(self, project: str) -> str | None:
        """The caller's role on ``project`` (an API token: the lower of its
        role and its user's), or None when it has none."""
        for row in self.projects():
            if row.get("slug") == project:
                return row.get("role")
        return None

    def action(self, project: str, path: str, body: dict[str, Any] | None = None,
               method: str = "POST") -> dict[str, Any] | None:
        """One change under the project: the typed actions (docs/api.md#actions:
        ``tasks/ID/retry``, ``queues/Q/purge``…) and schedule changes; None
        values are left out of the body."""
        payload = {k: v for k, v in (body or {}).items() if v is not None}
        return self.request(method, f"/api/v1/projects/{project}/{path}",
                            json=payload if method != "DELETE" else None)

    def schedules(self, project: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/v1/projects/{project}/schedules")

    def audit_verify(self, project: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/projects/{project}/audit/verify")

    def trends(self, project: str, **params: Any) -> dict[str, Any]:
        query = {k: v for k, v in params.items() if v not in (None, "")}
        return self.request("GET", f"/api/v1/projects/{project}/trends", params=query)

    # ------------------------------------------------------------ audit log

    def audit(self, project: str | None, **filters: Any) -> dict[str, Any]:
        """One page, newest first; ``project=None`` is the instance log (superusers)."""
        params = {k: v for k, v in filters.items() if v not in (None, "")}
        path = "/api/v1/audit" if project is None else f"/api/v1/projects/{project}/audit"
        return self.request("GET", path, params=params)
