import unittest

import app
from taskworker import InvalidInput


class EchoTest(unittest.TestCase):
    def test_the_scenario_message_is_repeated(self):
        status, out = app.plugin.call("echo_task", {"message": "Hello World", "multiply": 3})
        self.assertEqual(status, "success")
        self.assertEqual(out["processed_message"], "Hello World Hello World Hello World")

    def test_bad_params_are_invalid_input(self):
        with self.assertRaises(InvalidInput):
            app.plugin.call("echo_task", {"message": "x", "multiply": "three"})


if __name__ == "__main__":
    unittest.main()
