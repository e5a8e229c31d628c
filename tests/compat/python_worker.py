"""A worker built with the real avtomatika-worker 1.0b20 SDK, for the
compatibility tests. Configured by the SDK's own environment variables
(ORCHESTRATOR_URL, WORKER_ID, WORKER_TOKEN, HEARTBEAT_INTERVAL, ...).

Skills (names chosen by PY_SKILL_PREFIX, default empty):
  <prefix>echo_task : the scenario's echo, marks its data with served_by=python
  <prefix>py_fail   : raises, which the SDK reports as TRANSIENT_ERROR
  <prefix>py_event  : sends the event `ready` with {"score": params.score}
                      (the SDK's send_event), then sleeps params.sleep seconds
  <prefix>py_sha256 : params.input is an s3:// file (the SDK downloads it
                      first); returns its SHA-256 and size, and writes the
                      digest to a file the SDK uploads (data.digest_file),
                      and an empty one (data.empty_file)
  <prefix>py_read   : params.digest_file is an s3:// file; returns its text
"""

import asyncio
import hashlib
import os

from avtomatika_worker import Worker
import avtomatika_worker.s3 as sdk_s3

# avtomatika-worker 1.0b20 awaits obstore's synchronous `get` (its pinned
# obstore 0.11 has `get` and `get_async`), so every S3 download fails with
# "object builtins.GetResult can't be used in 'await' expression" and a
# task with an s3:// param never reaches its handler. The one name is
# pointed at the awaitable variant, as an SDK user must do until the SDK
# is fixed; the wire (s3:// params, data_metadata, keys) is untouched.
if getattr(sdk_s3, "obstore_get", None) is not None:
    from obstore import get_async

    sdk_s3.obstore_get = get_async

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


@worker.skill(f"{prefix}py_sha256")
async def py_sha256(params: dict, task_id: str, **kwargs):
    digest = hashlib.sha256()
    size = 0
    with open(params["input"], "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    out_dir = os.path.join(os.environ["TASK_FILES_DIR"], task_id)
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, "digest.txt")
    with open(out, "w") as f:
        f.write(digest.hexdigest())
    empty = os.path.join(out_dir, "empty.txt")
    open(empty, "w").close()
    return {"data": {"sha256": digest.hexdigest(), "size": size, "digest_file": out,
                     "empty_file": empty}}


@worker.skill(f"{prefix}py_read")
async def py_read(params: dict, **kwargs):
    with open(params["digest_file"]) as f:
        return {"data": {"text": f.read()}}


if __name__ == "__main__":
    worker.run()
