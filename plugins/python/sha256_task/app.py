"""sha256_task in Python: the SHA-256 of one of the job's files, read as it
streams in, and a derived file (the input's first `derived_bytes` bytes,
each inverted) written as `derived_name` (needs the `[objects]` grant:
read, write)."""

import hashlib

from taskworker import Plugin, InvalidInput, create_object, open_object

plugin = Plugin()
INVERT = bytes(255 - i for i in range(256))


@plugin.skill(
    "sha256_file_py", version="1.0.0",
    description="SHA-256 of one of the job's files, and a derived file (Python)",
    input_schema={"type": "object", "required": ["input"],
                  "properties": {"input": {"type": "string"},
                                 "derived_bytes": {"type": "integer", "minimum": 0},
                                 "derived_name": {"type": "string"}}})
def sha256_file(ctx, params):
    if not isinstance(params.get("input"), str):
        raise InvalidInput("sha256_file_py params: `input` must be a string")
    left = int(params.get("derived_bytes", 0))
    whole, derived = hashlib.sha256(), hashlib.sha256()
    out = create_object(params.get("derived_name", "derived_py.bin")) if left else None
    size = 0
    with open_object(params["input"]) as f:
        for chunk in f:
            whole.update(chunk)
            size += len(chunk)
            if out is not None and left > 0:
                part = chunk[:left].translate(INVERT)
                derived.update(part)
                out.write(part)
                left -= len(part)
    result = {"sha256": whole.hexdigest(), "size": size}
    if out is not None:
        result["derived"] = out.finish()["uri"]
        result["derived_sha256"] = derived.hexdigest()
    ctx.info(f"hashed {size} bytes")
    return result


Handler = plugin.handler()
