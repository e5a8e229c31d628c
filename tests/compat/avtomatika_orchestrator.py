"""The real avtomatika 1.0b30 orchestrator, set up as the scenario describes,
for the compatibility tests: blueprints test_flow (echo_task) and failing_flow
(failing_task), in-memory storage, tokens and port from the environment
(API_HOST, API_PORT, CLIENT_TOKEN, GLOBAL_WORKER_TOKEN, ORCHESTRATOR_SECRET_KEY).
"""

from avtomatika import Blueprint, OrchestratorEngine
from avtomatika.config import Config
from avtomatika.storage.memory import MemoryStorage

test_flow = Blueprint("test_flow", api_endpoint="/jobs/test", api_version="v1")


@test_flow.handler("start", is_start=True)
async def start(context, actions):
    data = context.initial_data
    actions.dispatch_task(
        task_type="echo_task",
        params={
            "message": data.get("message", "Hello from Orchestrator!"),
            "multiply": data.get("multiply", 2),
        },
        transitions={"success": "finished", "failure": "failed"},
    )


# avtomatika reports status "finished" only for an end state named "finished".
@test_flow.handler("finished", is_end=True)
async def finished(context, actions):
    pass


@test_flow.handler("failed", is_end=True)
async def failed(context, actions):
    pass


failing_flow = Blueprint("failing_flow", api_endpoint="/jobs/failing", api_version="v1")


@failing_flow.handler("start", is_start=True)
async def failing_start(context, actions):
    actions.dispatch_task(
        task_type="failing_task",
        params={},
        transitions={"success": "finished", "failure": "failed"},
    )


@failing_flow.handler("finished", is_end=True)
async def failing_finished(context, actions):
    pass


@failing_flow.handler("failed", is_end=True)
async def failing_failed(context, actions):
    pass


# Runs any task type named in the job's data, e.g. {"task": "panic"}.
any_task = Blueprint("any_task", api_endpoint="/jobs/any", api_version="v1")


@any_task.handler("start", is_start=True)
async def any_start(context, actions):
    actions.dispatch_task(
        task_type=context.initial_data["task"],
        params=context.initial_data.get("params", {}),
        transitions={"success": "finished", "failure": "failed", "needs_review": "finished"},
    )


@any_task.handler("finished", is_end=True)
async def any_finished(context, actions):
    pass


@any_task.handler("failed", is_end=True)
async def any_failed(context, actions):
    pass


if __name__ == "__main__":
    engine = OrchestratorEngine(MemoryStorage(), Config())
    engine.register_blueprint(test_flow)
    engine.register_blueprint(failing_flow)
    engine.register_blueprint(any_task)
    engine.run()
