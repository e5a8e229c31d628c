import unittest

import app
from taskworker import InvalidInput


class PluginTest(unittest.TestCase):
    def test_it_greets(self):
        status, out = app.plugin.call("{{name}}", {"name": "World"})
        self.assertEqual((status, out["text"]), ("success", "Hello, World!"))

    def test_bad_params_are_invalid_input(self):
        with self.assertRaises(InvalidInput):
            app.plugin.call("{{name}}", {"name": 7})


if __name__ == "__main__":
    unittest.main()
