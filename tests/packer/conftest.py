"""Fixtures of the Packer plugin's end-to-end tests (defined in packer_util.py, which the tests
also import helpers from: a module name no other test directory uses)."""

from packer_util import packer, rpc  # noqa: F401
