"""The tests' name for the harness, which lives in muc_guard.testing.prosody."""

from muc_guard.testing.prosody import *  # noqa: F401,F403
from muc_guard.testing.prosody import __all__  # noqa: F401
