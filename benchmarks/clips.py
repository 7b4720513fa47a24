"""The test suite's procedural clips (``tests/clips.py``), for benchmarks run from a checkout.

The package does not ship test fixtures; the benchmarks sit beside the tests and borrow them.
The checkout's root goes first on ``sys.path`` so that ``tests`` is this checkout's test
package (torch-fidelity installs a ``tests`` package of its own).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.clips import make_batch, make_test_clip, write_test_shards  # noqa: E402

__all__ = ["make_batch", "make_test_clip", "write_test_shards"]
