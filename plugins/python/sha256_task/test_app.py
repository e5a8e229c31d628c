import unittest

import app
from taskworker import ObjectFailure, InvalidInput


class Sha256Test(unittest.TestCase):
    def test_the_input_must_be_named(self):
        with self.assertRaises(InvalidInput):
            app.plugin.call("sha256_file_py", {"input": 3})

    def test_objects_need_the_worker_host(self):
        with self.assertRaises(ObjectFailure) as e:
            app.plugin.call("sha256_file_py", {"input": "in.bin"})
        self.assertIn("worker host", str(e.exception))


if __name__ == "__main__":
    unittest.main()
