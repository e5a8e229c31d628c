"""A small guest SDK for task plugins written in Python (componentize-py).

A skill is a function from a params dict to a result dict:

    from taskworker import Plugin, InvalidInput

    plugin = Plugin()

    @plugin.skill("greet", version="1.0.0", description="Says hello",
                  input_schema={"type": "object", "required": ["name"]})
    def greet(ctx, params):
        ctx.info(f"greeting {params['name']}")
        return {"text": f"Hello, {params['name']}!"}

    Handler = plugin.handler()   # the class componentize-py exports

Raise Transient / Permanent / InvalidInput (or return ctx.status("custom") )
to end otherwise than with `success`. Off WebAssembly (plain `python3`, e.g.
the plugin's own tests) the host calls print to stderr.

The job's files (the manifest's `[objects]` grant) stream through
`open_object` and `create_object`:

    with open_object(params["input"]) as f:       # an s3:// URI or a name
        for chunk in f: digest.update(chunk)
    out = create_object("result.txt"); out.write(b"..."); info = out.finish()
    return {"result": info["uri"]}                # named in data_metadata
"""

import json
import sys

try:  # inside the component
    from wit_world import exports
    from wit_world.imports import host, objects, types
    from componentize_py_types import Err
    IN_WASM = True
except ImportError:  # plain Python: the plugin's tests
    IN_WASM = False


class TaskFailure(Exception):
    kind = "permanent"

    def __init__(self, message, details=None):
        super().__init__(message)
        self.message = message
        self.details = details


class Transient(TaskFailure):
    kind = "transient"


class Permanent(TaskFailure):
    kind = "permanent"


class InvalidInput(TaskFailure):
    kind = "invalid_input"


class Dependency(TaskFailure):
    kind = "dependency"


class ObjectFailure(Permanent):
    """The host refused an object call (a grant or bound crossed, no
    such object); uncaught, it fails the task with the host's message."""


def _object_call(fn, *args):
    if not IN_WASM:
        raise ObjectFailure("objects are only available to a plugin run by the worker host")
    try:
        return fn(*args)
    except Err as e:
        raise ObjectFailure(str(e.value)) from None


_CHUNK = 1 << 20


class ObjectReader:
    """An object being read, front to back; iterate for its chunks."""

    def __init__(self, inner):
        self._inner = inner
        self.size = inner.size()

    def read(self, n=_CHUNK):
        """At most `n` bytes (at most 1 MiB); b"" at the end."""
        return _object_call(self._inner.read, max(0, min(int(n), _CHUNK)))

    def __iter__(self):
        while chunk := self.read():
            yield chunk

    def close(self):
        if self._inner is not None:
            self._inner.__exit__(None, None, None)
            self._inner = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ObjectWriter:
    """An object being written: nothing is stored until `finish()`, and a
    writer closed unfinished leaves nothing."""

    def __init__(self, inner):
        self._inner = inner
        self._buffer = bytearray()

    def write(self, data):
        self._buffer += data
        if len(self._buffer) >= 256 << 10:
            self._flush()

    def _flush(self):
        for at in range(0, len(self._buffer), _CHUNK):
            _object_call(self._inner.write, bytes(self._buffer[at:at + _CHUNK]))
        self._buffer.clear()

    def finish(self):
        """Stores the object: {"uri", "size", "etag"}."""
        self._flush()
        info = _object_call(self._inner.finish)
        self.close()
        return {"uri": info.uri, "size": info.size, "etag": info.etag}

    def close(self):
        if self._inner is not None:
            self._inner.__exit__(None, None, None)
            self._inner = None


def open_object(uri):
    """One of the job's files to read: an s3:// URI, or a name of the job's
    files (the client's upload first, else an earlier task's output)."""
    return ObjectReader(_object_call(lambda: objects.open(uri)))


def create_object(name):
    """The job's output `name` (s3://<bucket>/<job>/<name>)."""
    return ObjectWriter(_object_call(lambda: objects.create(name)))


class Context:
    """The task being run, and the host's services for it."""

    def __init__(self, task_id="test-task", job_id="test-job", task_type=""):
        self.task_id, self.job_id, self.task_type = task_id, job_id, task_type
        self._status = "success"

    def _log(self, level, message):
        if IN_WASM:
            host.log(getattr(host.LogLevel, level.upper()), str(message))
        else:
            print(f"[{level.upper()}] {message}", file=sys.stderr)

    def debug(self, message):
        self._log("debug", message)

    def info(self, message):
        self._log("info", message)

    def warn(self, message):
        self._log("warn", message)

    def error(self, message):
        self._log("error", message)

    def progress(self, fraction, message=""):
        fraction = min(1.0, max(0.0, float(fraction)))
        if IN_WASM:
            host.progress(fraction, str(message))
        else:
            print(f"[progress {fraction:.0%}] {message}", file=sys.stderr)

    def status(self, status):
        """End with this (declared) status instead of `success`."""
        self._status = status


class Plugin:
    def __init__(self):
        self._skills = {}

    def skill(self, name, version="1.0.0", description="", input_schema=None,
              output_schema=None, statuses=()):
        def register(fn):
            self._skills[name] = (fn, version, description, input_schema,
                                  output_schema, list(statuses))
            return fn
        return register

    def call(self, task_type, params, ctx=None):
        """Runs a skill on a params dict: (status, result dict)."""
        ctx = ctx or Context(task_type=task_type)
        entry = self._skills.get(task_type)
        if entry is None:
            raise InvalidInput(f"this plugin does not serve {task_type!r}")
        fn, _, _, _, _, statuses = entry
        if not isinstance(params, dict):
            raise InvalidInput(f"{task_type} params must be a JSON object")
        result = fn(ctx, params)
        if ctx._status != "success" and ctx._status not in statuses:
            raise Permanent(f"{task_type} ended with undeclared status {ctx._status!r}")
        return ctx._status, result if result is not None else {}

    def handler(self):
        plugin = self

        class Handler:
            def describe(self):
                return [
                    types.Skill(
                        name=name, version=version, description=description,
                        input_schema=json.dumps(ins) if ins is not None else None,
                        output_schema=json.dumps(outs) if outs is not None else None,
                        output_statuses=statuses,
                    )
                    for name, (_, version, description, ins, outs, statuses)
                    in plugin._skills.items()
                ]

            def execute(self, task):
                ctx = Context(task.task_id, task.job_id, task.task_type)
                try:
                    try:
                        params = json.loads(task.params)
                    except ValueError as e:
                        raise InvalidInput(f"{task.task_type} params: {e}")
                    status, result = plugin.call(task.task_type, params, ctx)
                    return types.TaskOutput(status=status, data=json.dumps(result))
                except TaskFailure as e:
                    kind = getattr(types.ErrorKind, e.kind.upper())
                    details = json.dumps(e.details) if e.details is not None else None
                    raise Err(types.TaskError(kind=kind, message=e.message, details=details))
                except Exception as e:  # a bug in the plugin: not worth retrying
                    raise Err(types.TaskError(kind=types.ErrorKind.PERMANENT,
                                              message=f"{type(e).__name__}: {e}", details=None))

        return Handler
