"""A worker built with the real avtomatika-worker 1.0b20 SDK, for the
compatibility tests. Configured by the SDK's own environment variables
(ORCHESTRATOR_URL, WORKER_ID, WORKER_TOKEN, HEARTBEAT_INTERVAL, ...).

Skills (names chosen by PY_SKILL_PREFIX, default empty):
  <prefix>echo_task : the scenario's echo, marks its data with served_by=python
  <prefix>py_fail   : raises, which the SDK reports as TRANSIENT_ERROR
  <prefix>py_event  : sends the event `ready` with {"score": params.score}
                      (the SDK's send_event), then sleeps params.sleep seconds
"""

import asyncio
import os

from avtomatika_worker import Worker

prefix = os.getenv("PY_SKILL_PREFIX", "")
worker = Worker(worker_type="python-worker", max_concurrent_tasks=5)


@worker.skill(f"{prefix}echo_task")
async def echo_task(params: dict, **kwargs):
    message = params.get("message", "")
    multiply = int(params.get("multiply", 1))
    return {
        "data": {
            "processed_message": " ".join([message] * multiply),
            "original_message": message,
            "multiplied_by": multiply,
            "served_by": "python",
        }
    }


@worker.skill(f"{prefix}py_fail")
async def py_fail(params: dict, **kwargs):
    raise RuntimeError("python skill failed on purpose")


@worker.skill(f"{prefix}py_event")
async def py_event(params: dict, send_event=None, **kwargs):
    await send_event("ready", {"score": int(params.get("score", 9))})
    await asyncio.sleep(float(params.get("sleep", 5)))
    return {"data": {"late": True}}


if __name__ == "__main__":
    worker.run()
