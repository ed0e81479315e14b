"""REST client of the collector (no Textual import: the CLI uses it too)."""

from __future__ import annotations

import os
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:7400"


class ClientError(Exception):
    """A request failed; the message is the server's (or the network's) reason."""


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = (url or os.environ.get("Z4J_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("Z4J_API_TOKEN")
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
            try:
                body = response.json()
                reason = f"{body.get('message')} ({body.get('code')})"
            except ValueError:
                reason = response.text.strip()[:200] or response.reason_phrase
            raise ClientError(f"{response.status_code}: {reason}")
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
