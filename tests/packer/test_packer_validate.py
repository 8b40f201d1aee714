"""`packer validate` with the real Packer and plugin: templates in HCL2 and JSON are accepted,
and each mistake is named (no VM is started)."""

import json

from packer_util import hcl_template


def test_valid_hcl2_and_json_templates(packer):
    box = packer.work / "any.box"
    box.write_bytes(b"not read by validate")
    src = {"box_url": str(box), "box_name": "xhyve/tiny", "cpus": 2, "memory": "512M",
           "disk_additional_size": ["64M"], "boot_wait": "5s", "shutdown_timeout": "2m", "firmware": "efi"}
    (packer.work / "t.pkr.hcl").write_text(hcl_template(src, '  provisioner "shell" {\n    inline = ["true"]\n  }\n'))
    r = packer.run("validate", "t.pkr.hcl")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "The configuration is valid." in r.stdout, r.stdout

    (packer.work / "t.json").write_text(json.dumps({"builders": [dict(type="xhyve", **src)]}))
    r = packer.run("validate", "t.json")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mistakes_are_named(packer):
    src = {"box_url": "missing.box", "box_name": "xhyve/tiny", "box_checksum": "sha256:abc",
           "memory": "12M", "network_mode": "bridged", "disk_size": "10X", "firmware": "bios"}
    (packer.work / "bad.pkr.hcl").write_text(hcl_template(src))
    r = packer.run("validate", "bad.pkr.hcl")
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout + r.stderr
    for msg in ["6 error(s) occurred",
                f"box_url: stat {packer.work}/missing.box: no such file or directory",
                'box_checksum: "sha256:abc" is not TYPE:HEX',
                'memory: "12M" is not a size of at least 16M',
                'network_mode: "bridged" is not one of user, none, shared',
                'disk_size: "10X" is not a disk size',
                'firmware: "bios" is not one of kexec (the kernel and initrd), efi (UEFI firmware booting the disk)']:
        assert msg in out, f"{msg!r} missing:\n{out}"

    (packer.work / "none.json").write_text(json.dumps({"builders": [{"type": "xhyve", "box_nmae": "x"}]}))
    r = packer.run("validate", "none.json")
    assert r.returncode == 1
    assert "box_nmae" in r.stdout + r.stderr, r.stdout + r.stderr

    (packer.work / "empty.pkr.hcl").write_text(hcl_template({}))
    r = packer.run("validate", "empty.pkr.hcl")
    assert r.returncode == 1
    assert "no source: set box_name" in r.stdout + r.stderr, r.stdout + r.stderr
