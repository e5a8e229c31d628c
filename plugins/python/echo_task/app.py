"""echo_task in Python: repeats `message` `multiply` times, space-separated;
`work_ms` simulates work (as the Rust echo_task)."""

import time

from taskworker import InvalidInput, Plugin

MAX_MULTIPLY = 10_000
MAX_WORK_MS = 60_000

plugin = Plugin()


@plugin.skill(
    "echo_task",
    version="1.0.0",
    description="Repeats `message` `multiply` times, space-separated (Python)",
    input_schema={
        "type": "object",
        "required": ["message"],
        "properties": {
            "message": {"type": "string"},
            "multiply": {"type": "integer", "minimum": 0, "maximum": MAX_MULTIPLY},
            "work_ms": {"type": "integer", "minimum": 0, "maximum": MAX_WORK_MS},
        },
        "additionalProperties": False,
    },
)
def echo(ctx, params):
    message = params.get("message")
    multiply = params.get("multiply", 1)
    work_ms = params.get("work_ms", 0)
    if not isinstance(message, str):
        raise InvalidInput("echo_task params: `message` must be a string")
    for name, value, top in (("multiply", multiply, MAX_MULTIPLY), ("work_ms", work_ms, MAX_WORK_MS)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
            raise InvalidInput(f"echo_task params: `{name}` must be an integer in 0..={top}")
    ctx.info(f"processing message {message!r} x{multiply} (python)")
    if work_ms:
        ctx.progress(0.0, "working")
        time.sleep(work_ms / 1000)
    ctx.progress(1.0, "done")
    # processed_message last: avtomatika takes a result's last key as the job's `result`.
    return {
        "multiplied_by": multiply,
        "original_message": message,
        "processed_message": " ".join([message] * multiply),
    }


Handler = plugin.handler()
