"""Fixtures of the Vagrant end-to-end tests (defined in vagrant_util.py, which the tests also
import helpers from)."""

from vagrant_util import box_catalog, vagrant, vagrant_gem  # noqa: F401
