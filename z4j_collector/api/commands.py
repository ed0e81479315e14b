"""Commands: send an action to a connected agent and read its result."""

from __future__ import annotations

import msgspec
from litestar import Controller, Request, get, post

from z4j_collector.api.params import check_wait
from z4j_collector.api.schemas import Command, CommandRequest
from z4j_collector.errors import CollectorError
from z4j_collector.guards import access_of


class CommandController(Controller):
    path = "/api/v1/projects/{project:str}/commands"
    tags = ["commands"]

    @post("/", opt={"permission": "actions:write"}, summary="Send a command to an agent", status_code=202)
    async def send(self, request: Request, data: CommandRequest) -> Command:
        if not data.action or len(data.action) > 64:
            raise CollectorError("action must be 1 to 64 characters", code="bad_action")
        check_wait(data.wait)
        access = access_of(request)
        command = await request.app.state.commands.send(
            access.project_id, data.action, data.args,
            actor=access.actor, agent_id=data.agent_id, engine=data.engine, wait_s=data.wait,
        )
        return msgspec.convert(command, Command)

    @get("/{command_id:str}", opt={"permission": "tasks:read"}, summary="A command and its result")
    async def show(self, request: Request, command_id: str) -> Command:
        command = await request.app.state.commands.get(access_of(request).project_id, command_id)
        return msgspec.convert(command, Command)
