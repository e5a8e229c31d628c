import unittest

import app
from taskworker import InvalidInput


class InflectTest(unittest.TestCase):
    def test_word_forms_come_from_the_library(self):
        status, out = app.plugin.call("inflect_task", {"word": "octopus"})
        self.assertEqual(status, "success")
        self.assertEqual(out["plural"], "octopi")
        self.assertTrue(out["library"].startswith("inflection "))

    def test_an_empty_word_is_invalid_input(self):
        with self.assertRaises(InvalidInput):
            app.plugin.call("inflect_task", {"word": ""})


if __name__ == "__main__":
    unittest.main()
