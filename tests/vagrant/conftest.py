"""Fixtures of the Vagrant end-to-end tests (defined in vagrant_util.py, which the tests also
import helpers from)."""

from vagrant_util import (box_catalog, provider_bin, tiny_box_file, vagrant,  # noqa: F401
                          vagrant_gem)
