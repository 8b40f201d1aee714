#!/usr/bin/env python3
"""Load (figures, not a test): N tiny machines (default 20) created, started from the box's saved
boot, reached over SSH, stopped and destroyed through one daemon, each step for all N at once;
the scenario is tests/provider/load_scenario.py, which tests/provider/test_load.py asserts on.
Prints per step each machine's seconds (min/median/max) and the step's wall time, the whole
run's wall time, machine.state and machine.list latencies while the machines start against the
same calls on the idle daemon a moment before (the baseline: same script, same host), what ran
meanwhile, and the leak counts. Needs root (a network namespace, TAP devices) and uses
target/release/{xhyve,xhyve-provider} and target/boxes/tiny.

usage: sudo provider/benches/load.py [N]

Measured 2026-12-06 on the 2-core nested kvm_pvm host (shared, load average 20-26), N=20: 11 min
3 s in all; machine.start (from the saved boot) 15.8/17.7/18.8 s, to the exec's answer
493/524/534 s, machine.stop 36.1 s median; machine.state median 0.31 ms idle, 0.37 ms while the
20 started (1.2x), max 3.2 and 48 ms; no call failed, nothing left (SECURITY.md, "What a load of
machines does to the daemon")."""

import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests/provider")]
from load_scenario import report, run, warm_up, wrong_answers  # noqa: E402
from test_machines import Home  # noqa: E402
from test_shared_net import namespace, ns_wrapper  # noqa: E402


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    provider = ROOT / "target/release/xhyve-provider"
    xhyve = ROOT / "target/release/xhyve"
    with tempfile.TemporaryDirectory(prefix="xhyve-load-bench-") as d, namespace("xhyve-load") as ns:
        d = pathlib.Path(d)
        box = d / "tiny.box"
        subprocess.run([str(ROOT / "boxes/package.sh"), str(box), str(ROOT / "target/boxes/tiny"),
                        "--fast-start"], check=True, capture_output=True)
        h = Home(ns_wrapper(d / "provider", ns, provider), d / "home")
        try:
            print(f"first machine, booted alone (saves the boot), to SSH: {warm_up(h, box, xhyve):.1f} s",
                  flush=True)
            figs = run(h, ns, n, xhyve)
            print(report(figs))
            for e in figs["errors"] + figs.get("idle", {}).get("errors", []) + figs.get("busy", {}).get("errors", []):
                print(f"failed call: {e}")
            for w in wrong_answers(figs):
                print(f"wrong answer: {w}")
            for k, v in figs.get("leaks", {}).items():
                if v:
                    print(f"left behind, {k}: {v}")
        finally:
            h.close()


if __name__ == "__main__":
    main()
