"""Load (SECURITY.md, "Load"): 20 tiny machines created, started, reached over SSH, stopped and
destroyed through one daemon, each step for all 20 at once (load_scenario.py, which
provider/benches/load.py runs too). Every call answers; each guest says its own host name, MAC
and leased address; afterwards nothing of them is left: no runner or xhyve process, no TAP
device, no TCP or UDP socket, no file in the machines' or scratch folders, no lease, and the
daemon's descriptors and threads are what they were before. machine.state and machine.list are
polled meanwhile: their latencies, idle and under load, are printed, never asserted (a slow
host is not a failure)."""

import os

from load_scenario import leak_count, report, run, warm_up, wrong_answers
from test_machines import Home
from test_shared_net import namespace, ns_wrapper

MACHINES = int(os.environ.get("XHYVE_LOAD_MACHINES", "20"))


def test_twenty_machines_through_one_daemon_at_once(provider_bin, tiny_box_file, tmp_path):
    xhyve = provider_bin.parent / "xhyve"
    assert xhyve.is_file(), "xhyve next to xhyve-provider: build it"
    with namespace("xhyve-load") as ns:
        h = Home(ns_wrapper(tmp_path / "provider", ns, provider_bin), tmp_path / "home")
        try:
            print(f"first machine, booted alone, to SSH: {warm_up(h, tiny_box_file, xhyve):.1f} s")
            figs = run(h, ns, MACHINES, xhyve)
            print(report(figs))
            assert figs["errors"] == [], figs["errors"]
            for phase in ("idle", "busy"):
                assert figs[phase]["errors"] == [], (phase, figs[phase]["errors"])
            assert wrong_answers(figs) == [], figs["answers"]
            assert len(figs["during"]["tap_devices"]) == MACHINES, figs["during"]
            assert figs["stopped"] == ["stopped"] * MACHINES, figs["stopped"]
            assert leak_count(figs["leaks"]) == 0, figs["leaks"]
        except BaseException:
            h.print_logs()
            raise
        finally:
            h.close()
