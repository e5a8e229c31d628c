"""{{name}}: a task plugin in Python (componentize-py).

Test:  python3 -m unittest
Build: ./build.sh    (→ {{name}}.wasm)
Try:   worker-host run {{name}}.wasm --params '{"name": "World"}'
"""

from taskworker import InvalidInput, Plugin

plugin = Plugin()


@plugin.skill(
    "{{name}}",
    version="0.1.0",
    description="Greets `name`",
    input_schema={"type": "object", "required": ["name"],
                  "properties": {"name": {"type": "string"}}},
)
def run(ctx, params):
    name = params.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("{{name}} params: `name` must be a non-empty string")
    ctx.info(f"greeting {name}")
    ctx.progress(1.0, "done")
    return {"text": f"Hello, {name}!"}


# The class componentize-py exports.
Handler = plugin.handler()
