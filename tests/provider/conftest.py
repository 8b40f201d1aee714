"""Fixtures of the provider's end-to-end tests (defined in provider_util.py, which the tests also
import helpers from: a module name no other test directory uses)."""

from provider_util import (assert_clean, box_server, daemon, daemon_factory, home,  # noqa: F401
                           make_box)
