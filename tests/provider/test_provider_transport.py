"""The daemon's transport: unix socket, JSON-RPC errors for bad input, concurrency, one daemon
per home, and `call` starting the daemon."""

import json
import os
import signal
import stat
import subprocess
import threading
import time

from provider_util import Conn


def test_socket_is_private_and_info_lists_methods(daemon, home):
    mode = stat.S_IMODE(os.stat(daemon.sock).st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    info = daemon.call("provider.info")
    assert info["pid"] == daemon.proc.pid
    assert info["socket"] == str(daemon.sock)
    assert {"box.add", "box.list", "box.remove"} <= set(info["methods"])


def test_malformed_json_keeps_connection(daemon):
    c = daemon.conn()
    c.send_raw(b'{"jsonrpc": "2.0", "id": 1, "method": \n')
    r = c.read()
    assert r["error"]["code"] == -32700
    assert "Parse error" in r["error"]["message"] and "line 1" in r["error"]["message"]
    assert r["id"] is None
    c.send_raw(b"\xff\xfe not utf8\n")
    assert c.read()["error"]["code"] == -32700
    resp, _ = c.request("box.list")
    assert resp["result"] == []
    c.close()


def test_invalid_requests(daemon):
    c = daemon.conn()
    for bad in (b"5", b"[]", b'"x"', b'{"jsonrpc": "2.0", "id": 7}'):
        c.send_raw(bad + b"\n")
        r = c.read()
        assert r["error"]["code"] == -32600, (bad, r)
        assert "Invalid request" in r["error"]["message"]
    resp, _ = c.request("box.list")
    assert resp["result"] == []
    c.close()


def test_unknown_method(daemon):
    e = daemon.error("box.ad", {"source": "/x"})
    assert e.code == -32601
    assert '"box.ad"' in e.message and "box.add" in e.message


def test_bad_params_name_the_field(daemon):
    e = daemon.error("box.add", {})
    assert e.code == -32602 and "source" in e.message
    e = daemon.error("box.add", {"source": 5})
    assert e.code == -32602 and "source" in e.message and e.data == {"field": "source"}
    e = daemon.error("box.add", {"source": "/x.box", "nmae": "x"})
    assert e.code == -32602 and "nmae" in e.message
    e = daemon.error("box.add", ["/x.box"])
    assert e.code == -32602 and "object" in e.message
    e = daemon.error("box.remove", {"name": "x", "version": 1})
    assert e.code == -32602 and "version" in e.message
    e = daemon.error("box.list", {"all": True})
    assert e.code == -32602 and "all" in e.message
    e = daemon.error("box.add", {"source": "relative/x.box", "name": "x"})
    assert e.code == -32602 and "absolute" in e.message
    e = daemon.error("box.add", {"source": "/x.box", "name": "../x"})
    assert e.code == -32602 and "name" in e.message
    e = daemon.error("box.add", {"source": "/x.box", "name": "x", "checksum": "abc"})
    assert e.code == -32602 and "checksum_type" in e.message


def test_notifications_and_batches(daemon):
    c = daemon.conn()
    c.send_raw(b'{"jsonrpc": "2.0", "method": "box.list"}\n')  # a notification: no answer
    c.send_raw(b'{"jsonrpc": "2.0", "method": "no.such"}\n')
    c.send_raw(json.dumps([
        {"jsonrpc": "2.0", "id": "a", "method": "box.list"},
        {"jsonrpc": "2.0", "id": "b", "method": "nope"},
        {"jsonrpc": "2.0", "method": "box.list"},
    ]).encode() + b"\n")
    r = c.read()
    assert isinstance(r, list) and len(r) == 2
    assert r[0] == {"jsonrpc": "2.0", "result": [], "id": "a"}
    assert r[1]["error"]["code"] == -32601 and r[1]["id"] == "b"
    c.close()


def test_many_connections_at_once(daemon):
    # A connection in the middle of a line must not hold up the others.
    stalled = daemon.conn()
    stalled.send_raw(b'{"jsonrpc": "2.0", "id": 1, ')
    results, errors = [], []

    def worker(i):
        try:
            c = daemon.conn(timeout=20)
            for j in range(5):
                resp, _ = c.request("provider.info" if j % 2 else "box.list")
                results.append(resp)
            c.close()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(results) == 24 * 5
    stalled.send_raw(b'"method": "box.list"}\n')
    assert stalled.read()["result"] == []
    stalled.close()


def test_second_serve_is_refused(daemon, provider_bin, home):
    p = subprocess.run([str(provider_bin), "serve", "--home", str(home)],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 2
    assert "already serving" in p.stderr and str(daemon.proc.pid) in p.stderr
    # The first daemon still answers.
    assert daemon.call("box.list") == []


def test_sigterm_removes_socket(daemon):
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(10) == 0
    assert not daemon.sock.exists()


def test_call_starts_the_daemon(provider_bin, tmp_path):
    home = tmp_path / "auto"
    env = dict(os.environ, XHYVE_HOME=str(home))
    try:
        p = subprocess.run([str(provider_bin), "call", "box.list"], env=env,
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout) == []
        info = json.loads(subprocess.run([str(provider_bin), "call", "provider.info", "{}"], env=env,
                                         capture_output=True, text=True, timeout=30).stdout)
        assert info["home"] == str(home)
        os.kill(info["pid"], 0)  # running
        p = subprocess.run([str(provider_bin), "call", "box.remove", '{"name": "nope"}'], env=env,
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 1 and "not installed" in p.stderr and p.stdout == ""
        p = subprocess.run([str(provider_bin), "call", "box.list", "{bad"], env=env,
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and "not valid JSON" in p.stderr
        # --no-start does not start one.
        p = subprocess.run([str(provider_bin), "call", "--no-start", "--home", str(tmp_path / "none"),
                            "box.list"], capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and "cannot connect" in p.stderr
    finally:
        try:
            pid = int((home / "provider.lock").read_text())
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.05)
        except (OSError, ValueError):
            pass


def test_requests_need_jsonrpc_2(daemon):
    """A request without `"jsonrpc": "2.0"` (or with another version, or malformed members) is
    answered -32600, and every reply carries `"jsonrpc": "2.0"`; the id is echoed when it is one."""
    c = daemon.conn()
    for bad, id in [({"id": 1, "method": "box.list"}, 1),
                    ({"jsonrpc": "1.0", "id": "x", "method": "box.list"}, "x"),
                    ({"jsonrpc": 2.0, "id": 2, "method": "box.list"}, 2),
                    ({"jsonrpc": "2.0", "id": 3, "method": 5}, 3),
                    ({"jsonrpc": "2.0", "id": 4, "method": "box.list", "params": 5}, 4),
                    ({"jsonrpc": "2.0", "id": {"a": 1}, "method": "box.list"}, None),
                    ({"jsonrpc": "2.0", "method": "box.list", "parms": {}}, None)]:
        c.send_raw(json.dumps(bad).encode() + b"\n")
        r = c.read()
        assert r["jsonrpc"] == "2.0" and r["id"] == id and "result" not in r, (bad, r)
        assert r["error"]["code"] == -32600 and "Invalid request" in r["error"]["message"], (bad, r)
    resp, _ = c.request("box.list")
    assert resp == {"jsonrpc": "2.0", "result": [], "id": resp["id"]}
    # null params are no params (the Packer plugin sends them).
    c.send_raw(b'{"jsonrpc": "2.0", "id": 9, "method": "box.list", "params": null}\n')
    assert c.read() == {"jsonrpc": "2.0", "result": [], "id": 9}
    c.close()


def test_batch_elements_are_answered_one_by_one(daemon, make_box):
    """Each element of a batch gets its own response: invalid ones -32600, the valid ones run."""
    box = make_box()
    c = daemon.conn()
    c.send_raw(json.dumps([
        1,
        {"jsonrpc": "2.0", "id": "add", "method": "box.add", "params": {"source": str(box), "name": "b"}},
        {"id": "old", "method": "box.list"},
        "x",
        {"jsonrpc": "2.0", "method": "box.list"},
        [],
        {"jsonrpc": "2.0", "id": "list", "method": "box.list"},
    ]).encode() + b"\n")
    while True:
        r = c.read()
        if isinstance(r, list):
            break
        assert r.get("method") == "progress", r  # box.add's notifications come first
    assert all(x["jsonrpc"] == "2.0" for x in r)
    assert [x["id"] for x in r] == [None, "add", "old", None, None, "list"]
    assert [x.get("error", {}).get("code") for x in r] == [-32600, None, -32600, -32600, -32600, None]
    assert r[1]["result"]["name"] == "b"
    assert [b["name"] for b in r[5]["result"]] == ["b"]
    assert [b["name"] for b in daemon.call("box.list")] == ["b"]
    c.close()
