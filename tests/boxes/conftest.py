"""The Debian box's tests share one guest (a module-scoped fixture), so a failure's guest console
is not under the test's tmp_path where tests/conftest.py looks: this hook tags a failure (of the
test or of the fixture booting the guest) whose guest console shows the nested host's process
crash, with tests/conftest.py's tag and scanner, so tests/run reruns it once, as the others."""

import pytest


def root_conftest(config):
    """tests/conftest.py as pytest loaded it (a module named conftest cannot import another)."""
    return next(p for p in config.pluginmanager.get_plugins() if hasattr(p, "GUEST_CRASH_TAG"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    if call.excinfo is not None and call.when in ("setup", "call"):
        root = root_conftest(item.config)
        crashes = [c for d in getattr(item.module, "CRASH_DIRS", []) for c in root.guest_crashes(d)]
        e = call.excinfo.value
        first = str(e.args[0]) if e.args else repr(e)
        if crashes and root.GUEST_CRASH_TAG not in first:
            e.args = (f"{root.GUEST_CRASH_TAG}: {'; '.join(crashes[:5])}\n{first}", *e.args[1:])
    yield
