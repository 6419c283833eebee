"""The numerical guard of the fast path; it lives in :mod:`asyrp.bench.guard` (this name stays importable)."""

from asyrp.bench.guard import *  # noqa: F401,F403
from asyrp.bench.guard import GUARD_BOUNDS, SPEED_FIELDS, numerical_guard  # noqa: F401
