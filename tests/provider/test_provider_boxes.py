"""box.add / box.list / box.remove against a real daemon."""

import json
import os
import pathlib
import subprocess

import pytest

from provider_util import build_box, digest, leftovers

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def test_add_list_remove_from_path(daemon, home, make_box, assert_clean):
    box = make_box("tar.gz")
    r = daemon.call("box.add", {"source": str(box), "name": "acme/tiny", "version": "1.0.0"})
    where = home / "boxes" / "acme-VAGRANTSLASH-tiny" / "1.0.0" / ARCH
    assert r["path"] == str(where)
    assert (r["name"], r["version"], r["architecture"], r["provider"]) == ("acme/tiny", "1.0.0", ARCH, "xhyve")
    assert r["checksum_type"] == "sha256" and r["checksum"] == digest(box)
    assert (where / "vmlinuz").read_bytes() == b"fake kernel\n" * 100
    assert (where / "disks/disk0.img").read_bytes() == b"\0" * (1 << 20) + b"end"
    # The zero run was written as a hole.
    assert os.stat(where / "disks/disk0.img").st_blocks * 512 < (1 << 20)
    record = json.loads((where / "box.json").read_text())
    assert record["size"] == r["size"] > (1 << 20)
    listed = daemon.call("box.list")
    assert listed == [{k: r[k] for k in ("name", "version", "architecture", "provider", "path", "size")}]
    removed = daemon.call("box.remove", {"name": "acme/tiny"})
    assert [b["version"] for b in removed["removed"]] == ["1.0.0"]
    assert daemon.call("box.list") == []
    assert_clean(home)


@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "zip"])
@pytest.mark.parametrize("kind", ["md5", "sha1", "sha256", "sha384", "sha512"])
def test_formats_and_checksums_from_file_url(daemon, home, make_box, fmt, kind):
    box = make_box(fmt)
    r = daemon.call("box.add", {"source": box.as_uri(), "name": "t", "checksum": digest(box, kind).upper(),
                                "checksum_type": kind})
    assert r["version"] == "0" and r["checksum_type"] == kind
    assert (pathlib.Path(r["path"]) / "metadata.json").is_file()


def test_wrong_checksum_leaves_nothing(daemon, home, make_box, assert_clean):
    for fmt in ("tar.gz", "zip"):
        box = make_box(fmt)
        e = daemon.error("box.add", {"source": str(box), "name": "t", "checksum": "0" * 64,
                                     "checksum_type": "sha256"})
        assert e.code == -32004 and "checksum mismatch" in e.message
        assert e.data["actual"] == digest(box)
        assert_clean(home)


def test_box_needs_xhyve_metadata(daemon, home, make_box, assert_clean):
    vbox = make_box(files={"metadata.json": b'{"provider": "virtualbox"}', "box.ovf": b"x"})
    e = daemon.error("box.add", {"source": str(vbox), "name": "t"})
    assert e.code == -32008 and "virtualbox" in e.message
    none = make_box(files={"sub/metadata.json": b'{"provider": "xhyve"}'})
    e = daemon.error("box.add", {"source": str(none), "name": "t"})
    assert e.code == -32008 and "no metadata.json" in e.message
    assert_clean(home)


def test_name_required_and_existing_box(daemon, home, make_box):
    box = make_box()
    e = daemon.error("box.add", {"source": str(box)})
    assert e.code == -32602 and "name is required" in e.message
    e = daemon.error("box.add", {"source": str(box), "name": "t", "version": ">= 1"})
    assert e.code == -32602 and "constraints only apply to catalogs" in e.message
    daemon.call("box.add", {"source": str(box), "name": "t", "version": "1.0"})
    e = daemon.error("box.add", {"source": str(box), "name": "t", "version": "1.0"})
    assert e.code == -32003 and "already installed" in e.message
    other = make_box(files={"metadata.json": b'{"provider":"xhyve"}', "new": b"2"})
    r = daemon.call("box.add", {"source": str(other), "name": "t", "version": "1.0", "force": True})
    assert sorted(os.listdir(r["path"])) == ["box.json", "metadata.json", "new"]
    e = daemon.error("box.add", {"source": str(box.parent / "missing.box"), "name": "t"})
    assert e.code == -32001


def catalog(server, versions, name="acme/tiny"):
    server.root.joinpath("catalog.json").write_text(json.dumps({"name": name, "versions": versions}))
    return server.url("catalog.json")


def provider(url, box=None, kind="sha256", arch=None, **kw):
    p = {"name": "xhyve", "url": url, **kw}
    if box is not None:
        p.update(checksum=digest(box, kind), checksum_type=kind)
    if arch:
        p["architecture"] = arch
    return p


def test_catalog_over_http(daemon, home, box_server):
    boxes = {v: build_box(box_server.root / f"tiny-{v}.box", files={
        "metadata.json": b'{"provider": "xhyve"}', "version": v.encode()}) for v in ("1.0.0", "1.2.0", "1.3.0")}
    url = catalog(box_server, [
        {"version": "1.0.0", "providers": [provider("tiny-1.0.0.box", boxes["1.0.0"])]},
        {"version": "1.2.0", "providers": [provider("tiny-1.2.0.box", boxes["1.2.0"], "sha512", ARCH),
                                           provider("other.box", arch="riscv64")]},
        {"version": "1.3.0", "providers": [provider("tiny-1.3.0.box", boxes["1.3.0"], "md5", "riscv64")]},
        {"version": "2.0.0", "providers": [{"name": "virtualbox", "url": "vb.box"}]},
    ])
    resp, notes = daemon.call_full("box.add", {"source": url, "version": "~> 1.0"})
    r = resp["result"]
    assert (r["name"], r["version"], r["architecture"]) == ("acme/tiny", "1.2.0", ARCH)
    assert r["catalog"] == url and r["source"] == box_server.url("tiny-1.2.0.box")
    assert (pathlib.Path(r["path"]) / "version").read_text() == "1.2.0"
    assert r["checksum_type"] == "sha512"
    progress = [n["params"] for n in notes if n["method"] == "progress"]
    assert progress and all(p["request_id"] == 1 for p in progress)
    download = [p for p in progress if p["phase"] == "download"]
    assert download[-1]["done"] == download[-1]["total"] == boxes["1.2.0"].stat().st_size
    r = daemon.call("box.add", {"source": url, "version": ">= 1.0, < 1.2"})
    assert r["version"] == "1.0.0"
    e = daemon.error("box.add", {"source": url, "version": ">= 2"})
    assert e.code == -32007 and "2.0.0 (virtualbox)" in e.message
    assert [b["version"] for b in daemon.call("box.list")] == ["1.0.0", "1.2.0"]
    # A local catalog with relative URLs works the same.
    r = daemon.call("box.add", {"source": str(box_server.root / "catalog.json"), "version": "= 1.3.0",
                                "architecture": "riscv64"})
    assert r["architecture"] == "riscv64" and r["source"] == str(boxes["1.3.0"])


def test_catalog_wrong_checksum_and_override(daemon, home, box_server, assert_clean):
    box = build_box(box_server.root / "t.box")
    url = catalog(box_server, [{"version": "1.0.0", "providers": [
        provider("t.box", checksum="f" * 64, checksum_type="sha256")]}])
    e = daemon.error("box.add", {"source": url})
    assert e.code == -32004 and "expected sha256 " + "f" * 64 in e.message
    assert_clean(home)
    r = daemon.call("box.add", {"source": url, "checksum": digest(box, "sha1"), "checksum_type": "sha1"})
    assert r["checksum_type"] == "sha1"
    e = daemon.error("box.add", {"source": box_server.url("missing.json")})
    assert e.code == -32001 and "404" in e.message


def test_resume_after_dropped_connection(daemon, home, box_server):
    box = build_box(box_server.root / "big.box", files={
        "metadata.json": b'{"provider":"xhyve"}', "blob": os.urandom(3 << 20)})
    box_server.drop_first.add("/big.box")
    r = daemon.call("box.add", {"source": box_server.url("big.box"), "name": "big",
                                "checksum": digest(box), "checksum_type": "sha256"})
    assert r["checksum"] == digest(box)
    ranges = [rng for path, rng in box_server.requests if path == "/big.box"]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and int(ranges[1][6:-1]) > 0


def test_truncated_download_refused(daemon, home, box_server, assert_clean):
    build_box(box_server.root / "cut.box", files={"metadata.json": b'{"provider":"xhyve"}',
                                                  "blob": os.urandom(1 << 20)})
    box_server.ranges = False
    box_server.drop_always.add("/cut.box")
    e = daemon.error("box.add", {"source": box_server.url("cut.box"), "name": "cut"})
    assert e.code == -32006 and "truncated" in e.message and "does not support resuming" in e.message
    assert_clean(home)
    # With Range support but a server that always cuts: gives up after a few resumes.
    box_server.ranges = True
    e = daemon.error("box.add", {"source": box_server.url("cut.box"), "name": "cut"})
    assert e.code == -32006 and "truncated" in e.message
    assert_clean(home)


def test_zip_over_http(daemon, box_server):
    box = build_box(box_server.root / "z.zip", "zip")
    r = daemon.call("box.add", {"source": box_server.url("z.zip"), "name": "z",
                                "checksum": "sha256:" + digest(box)})
    assert (pathlib.Path(r["path"]) / "disks/disk0.img").stat().st_size == (1 << 20) + 3


def test_remove_refused_while_a_machine_uses_it(daemon, home, make_box):
    box = make_box()
    for v in ("1.0", "2.0"):
        daemon.call("box.add", {"source": str(box), "name": "acme/tiny", "version": v})
    m = home / "machines" / "m1"
    m.mkdir(parents=True)
    (m / "machine.json").write_text(json.dumps(
        {"name": "web", "box": {"name": "acme/tiny", "version": "1.0", "architecture": ARCH}}))
    e = daemon.error("box.remove", {"name": "acme/tiny", "version": "1.0"})
    assert e.code == -32002 and "m1 (web)" in e.message and e.data == {"machines": ["m1 (web)"]}
    e = daemon.error("box.remove", {"name": "acme/tiny"})  # all versions: 1.0 is in use
    assert e.code == -32002
    assert len(daemon.call("box.list")) == 2
    daemon.call("box.remove", {"name": "acme/tiny", "version": "2.0"})
    (m / "machine.json").unlink()
    e = daemon.error("box.remove", {"name": "acme/tiny", "version": "3.0"})
    assert e.code == -32001
    daemon.call("box.remove", {"name": "acme/tiny"})
    assert daemon.call("box.list") == [] and list((home / "boxes").iterdir()) == []


def test_box_add_command(provider_bin, daemon, home, make_box, tmp_path):
    box = make_box(name="cli.box")
    p = subprocess.run([str(provider_bin), "box", "add", "cli.box", "--name", "cli", "--version", "3.1",
                        "--home", str(home)], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["version"] == "3.1"
    size = box.stat().st_size
    assert f"read: {size}/{size} bytes" in p.stderr  # plain progress lines off a terminal
    p = subprocess.run([str(provider_bin), "box", "list", "--home", str(home)], capture_output=True, text=True)
    assert [b["name"] for b in json.loads(p.stdout)] == ["cli"]
    p = subprocess.run([str(provider_bin), "box", "add", "cli.box", "--home", str(home)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "error -32602: name is required" in p.stderr


def test_concurrent_adds_of_one_box(daemon, home, make_box):
    import threading
    box = make_box(files={"metadata.json": b'{"provider":"xhyve"}', "blob": os.urandom(4 << 20)})
    results = []

    def add():
        resp, _ = daemon.call_full("box.add", {"source": str(box), "name": "same", "version": "1"})
        results.append(resp)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    ok = [r for r in results if "result" in r]
    assert len(results) == 4 and len(ok) == 1
    assert all(r["error"]["code"] == -32003 for r in results if "error" in r)
    assert list((home / "tmp").iterdir()) == []
    assert len(daemon.call("box.list")) == 1


def test_bad_params_carry_data_field(daemon, home, make_box, box_server, assert_clean):
    """Every -32602 of box.add and box.remove names the wrong field in data.field too."""
    box = str(make_box())
    url = catalog(box_server, [{"version": "1.0.0", "providers": [provider("t.box")]}])
    for params, field in [({"source": "relative/x.box", "name": "x"}, "source"),
                          ({"source": "ftp://h/x.box", "name": "x"}, "source"),
                          ({"source": box, "name": ".."}, "name"),
                          ({"source": box}, "name"),
                          ({"source": box, "name": "x", "version": "v1"}, "version"),
                          ({"source": box, "name": "x", "version": ">= 1"}, "version"),
                          ({"source": url, "version": "> v1"}, "version"),
                          ({"source": box, "name": "x", "architecture": "../x"}, "architecture"),
                          ({"source": box, "name": "x", "checksum": "ab" * 32}, "checksum_type"),
                          ({"source": box, "name": "x", "checksum_type": "sha256"}, "checksum"),
                          ({"source": box, "name": "x", "checksum": "abc", "checksum_type": "sha256"},
                           "checksum"),
                          ({"source": box, "name": "x", "checksum": "ab", "checksum_type": "crc"},
                           "checksum_type")]:
        e = daemon.error("box.add", params)
        assert e.code == -32602 and e.data == {"field": field}, (params, e.message, e.data)
    for params, field in [({"name": ".."}, "name"), ({"name": "x", "version": "v1"}, "version"),
                          ({"name": "x", "architecture": "../x"}, "architecture")]:
        e = daemon.error("box.remove", params)
        assert e.code == -32602 and e.data == {"field": field}, (params, e.message, e.data)
    assert_clean(home)


SECRET = b"SECRET-4f1c2b: root:x:0:0:root:/root:/bin/bash\n" * 20


def test_remote_catalog_cannot_reach_local_files(daemon, home, tmp_path, box_server, assert_clean):
    """An http(s) catalog points only to http(s) URLs: a file:// URL is refused, and a
    path-absolute URL is a path on the catalog's server (as a browser resolves it), never a
    local file. No error quotes the contents of a file."""
    local_box = build_box(tmp_path / "local.box")
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    for url in (secret.as_uri(), local_box.as_uri(), "FILE://" + str(local_box), "ftp://127.0.0.1/x.box"):
        e = daemon.error("box.add", {"source": catalog(box_server, [
            {"version": "1.0.0", "providers": [provider(url)]}])})
        assert e.code == -32008 and "http" in e.message, (url, e.message)
        assert b"SECRET" not in e.message.encode(), e.message
    # A path-absolute URL: the same path on the catalog's server.
    box_server.requests.clear()
    e = daemon.error("box.add", {"source": catalog(box_server, [
        {"version": "1.0.0", "providers": [provider(str(local_box))]}])})
    assert e.code == -32001 and box_server.url(str(local_box).lstrip("/")) in e.message, e.message
    assert (str(local_box), None) in box_server.requests
    (box_server.root / "sub").mkdir()
    served = build_box(box_server.root / "sub" / "t.box")
    r = daemon.call("box.add", {"source": catalog(box_server, [
        {"version": "1.0.0", "providers": [provider("/sub/t.box", served)]}])})
    assert r["source"] == box_server.url("sub/t.box")
    daemon.call("box.remove", {"name": "acme/tiny"})
    assert_clean(home)
    # A local catalog may point to local files (relative, absolute, file://).
    cat = tmp_path / "catalog.json"
    cat.write_text(json.dumps({"name": "loc", "versions": [
        {"version": "1", "providers": [provider(local_box.as_uri())]},
        {"version": "2", "providers": [provider(str(local_box))]}]}))
    assert daemon.call("box.add", {"source": str(cat), "version": "1"})["source"] == str(local_box)
    assert daemon.call("box.add", {"source": str(cat), "version": "2"})["source"] == str(local_box)
    serve_log = daemon.log.read_bytes()
    assert b"SECRET" not in serve_log


def test_errors_never_quote_file_contents(daemon, home, tmp_path, assert_clean):
    """A file that is no box is refused without its bytes in the message or the log."""
    for i, data in enumerate([SECRET, SECRET[:100] + bytes(412) + SECRET, b"{" + SECRET,
                              json.dumps({"versions": SECRET.decode()}).encode()]):
        f = tmp_path / f"notabox{i}"
        f.write_bytes(data)
        e = daemon.error("box.add", {"source": str(f), "name": "x"})
        assert e.code in (-32005, -32008), e.message
        assert b"SECRET" not in e.message.encode() and b"root:" not in e.message.encode(), e.message
    assert b"SECRET" not in daemon.log.read_bytes()
    assert_clean(home)


def test_provider_log_is_private(provider_bin, tmp_path):
    """`call` starting the daemon writes provider.log mode 0600 (and tightens an old 0644 one)."""
    import signal
    import stat
    for old in (False, True):
        home = tmp_path / f"h{int(old)}"
        if old:
            home.mkdir(mode=0o700)
            (home / "provider.log").write_text("old\n")
            os.chmod(home / "provider.log", 0o644)
        env = dict(os.environ, XHYVE_HOME=str(home))
        try:
            p = subprocess.run([str(provider_bin), "call", "box.list"], env=env, capture_output=True,
                               text=True, timeout=30)
            assert p.returncode == 0, p.stderr
            assert stat.S_IMODE(os.stat(home / "provider.log").st_mode) == 0o600
        finally:
            os.kill(int((home / "provider.lock").read_text()), signal.SIGTERM)


def uses(home, mid, name, version):
    m = home / "machines" / mid
    m.mkdir(parents=True)
    (m / "machine.json").write_text(json.dumps(
        {"name": "web", "box": {"name": name, "version": version, "architecture": ARCH}}))


def test_name_aliases_cannot_reach_a_box_in_use(daemon, home, make_box):
    """`a-VAGRANTSLASH-b` is how the store writes `a/b`: as a name it is refused (-32602), so it
    can neither replace nor remove `a/b`; and force does not replace a box a machine uses."""
    box = make_box()
    daemon.call("box.add", {"source": str(box), "name": "a/b", "version": "1.0"})
    uses(home, "m1", "a/b", "1.0")
    for name in ("a-VAGRANTSLASH-b", "a-VAGRANTSLASH-b/c"):
        e = daemon.error("box.add", {"source": str(box), "name": name, "version": "1.0", "force": True})
        assert e.code == -32602 and e.data == {"field": "name"} and "a/b" in e.message, e.message
        e = daemon.error("box.remove", {"name": name})
        assert e.code == -32602 and e.data == {"field": "name"}, e.message
    e = daemon.error("box.add", {"source": str(box), "name": "a/b", "version": "1.0.0", "force": True})
    assert e.code == -32002 and e.data == {"machines": ["m1 (web)"]}, e.message
    [b] = daemon.call("box.list")
    assert (b["name"], b["version"]) == ("a/b", "1.0")
    assert (pathlib.Path(b["path"]) / "vmlinuz").is_file()


def test_legacy_alias_names_are_the_slash_name(daemon, home, make_box):
    """A store written before names were checked: a box recorded as `a-VAGRANTSLASH-b` is the box
    `a/b`, and a machine recorded with that name uses it."""
    box = make_box()
    r = daemon.call("box.add", {"source": str(box), "name": "a/b", "version": "2"})
    rec_path = pathlib.Path(r["path"]) / "box.json"
    rec = json.loads(rec_path.read_text())
    rec["name"] = "a-VAGRANTSLASH-b"
    rec_path.write_text(json.dumps(rec))
    assert [b["name"] for b in daemon.call("box.list")] == ["a/b"]
    uses(home, "m1", "a-VAGRANTSLASH-b", "2")
    e = daemon.error("box.remove", {"name": "a/b"})
    assert e.code == -32002, e.message
    (home / "machines" / "m1" / "machine.json").unlink()
    assert [b["name"] for b in daemon.call("box.remove", {"name": "a/b"})["removed"]] == ["a/b"]


def test_equal_versions_are_one_box(daemon, home, make_box):
    """1.0, 1.0.0 and 01.0 are one version (as Vagrant compares them): one box, in one directory."""
    box = make_box()
    r = daemon.call("box.add", {"source": str(box), "name": "t", "version": "1.0"})
    assert r["version"] == "1.0" and r["path"] == str(home / "boxes" / "t" / "1.0.0" / ARCH)
    for v in ("1.0.0", "01.0", "1", "1.0.0.0", "001.00.0"):
        e = daemon.error("box.add", {"source": str(box), "name": "t", "version": v})
        assert e.code == -32003 and "already installed" in e.message, (v, e.message)
    daemon.call("box.add", {"source": str(box), "name": "t", "version": "1.0.1"})
    daemon.call("box.add", {"source": str(box), "name": "t", "version": "1.0.0.beta1"})
    assert [b["version"] for b in daemon.call("box.list")] == ["1.0.0.beta1", "1.0", "1.0.1"]
    r = daemon.call("box.add", {"source": str(box), "name": "t", "version": "01.0", "force": True})
    assert r["version"] == "01.0" and r["path"] == str(home / "boxes" / "t" / "1.0.0" / ARCH)
    assert len(daemon.call("box.list")) == 3
    removed = daemon.call("box.remove", {"name": "t", "version": "1.0.0"})["removed"]
    assert [b["version"] for b in removed] == ["01.0"]
    assert [b["version"] for b in daemon.call("box.list")] == ["1.0.0.beta1", "1.0.1"]
    assert sorted(os.listdir(home / "boxes" / "t")) == ["1.0.0.beta.1", "1.0.1"]


def test_store_with_old_version_paths_keeps_working(daemon, home, make_box, tmp_path):
    """Boxes installed before versions were normalised sit in directories named as given
    (`1.0`, `01.0`): they are listed, used, found equal, replaced and removed as before."""
    import shutil
    box = make_box()
    r = daemon.call("box.add", {"source": str(box), "name": "t", "version": "7"})
    new = pathlib.Path(r["path"])
    for v in ("1.0", "01.0"):
        old = home / "boxes" / "t" / v / ARCH
        old.parent.mkdir(parents=True)
        shutil.copytree(new, old)
        rec = json.loads((old / "box.json").read_text())
        rec["version"] = v
        (old / "box.json").write_text(json.dumps(rec))
    daemon.call("box.remove", {"name": "t", "version": "7"})
    assert sorted(b["path"] for b in daemon.call("box.list")) == [
        str(home / "boxes" / "t" / v / ARCH) for v in ("01.0", "1.0")]
    e = daemon.error("box.add", {"source": str(box), "name": "t", "version": "1.0.0"})
    assert e.code == -32003, e.message
    uses(home, "m1", "t", "1.0")
    e = daemon.error("box.remove", {"name": "t", "version": "1"})
    assert e.code == -32002, e.message
    e = daemon.error("box.add", {"source": str(box), "name": "t", "version": "1", "force": True})
    assert e.code == -32002, e.message
    (home / "machines" / "m1" / "machine.json").unlink()
    r = daemon.call("box.add", {"source": str(box), "name": "t", "version": "1", "force": True})
    assert r["path"] == str(home / "boxes" / "t" / "1.0.0" / ARCH)
    assert [b["path"] for b in daemon.call("box.list")] == [r["path"]]
    assert sorted(os.listdir(home / "boxes" / "t")) == ["1.0.0"]
    daemon.call("box.remove", {"name": "t"})
    assert os.listdir(home / "boxes") == []
