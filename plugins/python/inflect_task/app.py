"""inflect_task: English word forms with the `inflection` library from PyPI
(pure Python, bundled into the component at build time)."""

import inflection

from taskworker import InvalidInput, Plugin

plugin = Plugin()


@plugin.skill(
    "inflect_task",
    version="1.0.0",
    description="Plural, singular, title and snake case of `word` (inflection from PyPI)",
    input_schema={"type": "object", "required": ["word"],
                  "properties": {"word": {"type": "string", "maxLength": 1000}}},
)
def inflect(ctx, params):
    word = params.get("word")
    if not isinstance(word, str) or not word or len(word) > 1000:
        raise InvalidInput("inflect_task params: `word` must be a string of 1 to 1000 characters")
    ctx.info(f"inflecting {word!r} with inflection {inflection.__version__}")
    return {
        "plural": inflection.pluralize(word),
        "singular": inflection.singularize(word),
        "title": inflection.titleize(word),
        "underscore": inflection.underscore(word),
        "library": f"inflection {inflection.__version__}",
    }


Handler = plugin.handler()
