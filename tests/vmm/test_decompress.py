"""Host-side decompression (vmm/src/boot/{bzimage,initrd,decompress}.rs) on a real guest: the tiny
box's bzImage (an LZ4 payload) with an initrd laid out as distributions ship them, an
uncompressed early cpio and then compressed members made by Debian's own tools. The tiny kernel
has no RD_* decompressors, so the guest reaches "ready" only if the host unpacked every member.
One boot covers every format: a boot costs ~90 s on the nested host."""

import base64
import re
import shutil
import subprocess

MARK = "XHYVE-TINY:"

# Member -> the command that compresses it, as the kernel build and initramfs-tools/dracut run
# them. The tiny box's own initrd (with /init) is the zstd member; the others each add one file.
# lz4's legacy frame has no end mark and must come last (the kernel's unlz4 reads to the end).
COMPRESSORS = {
    "zstd": ["zstd", "-q", "-19", "-c"],
    "gzip": ["gzip", "-9", "-n", "-c"],
    "xz": ["xz", "--check=crc32", "-c"],
    "bzip2": ["bzip2", "-9", "-c"],
    "lzma": ["lzma", "-9", "-c"],
    "lz4": ["lz4", "-l", "-9", "-c"],
}


def newc(files):
    """A newc cpio archive of {name: bytes}, padded to 512 bytes as cpio -H newc writes it."""
    out = bytearray()

    def add(name, body, mode=0o100644):
        fields = [1, mode, 0, 0, 1, 0, len(body), 0, 0, 0, 0, len(name) + 1, 0]
        out.extend(b"070701" + "".join(f"{f:08X}" for f in fields).encode() + name.encode() + b"\0")
        out.extend(b"\0" * (-len(out) % 4) + body)
        out.extend(b"\0" * (-len(out) % 4))

    for name, body in files.items():
        add(name, body)
    add("TRAILER!!!", b"", mode=0)
    return bytes(out + b"\0" * (-len(out) % 512))


def compress(fmt, data):
    tool = COMPRESSORS[fmt]
    assert shutil.which(tool[0]), f"{tool[0]} missing (Debian package {'xz-utils' if fmt in ('xz', 'lzma') else fmt})"
    return subprocess.run(tool, input=data, capture_output=True, check=True).stdout


def test_bzimage_and_compressed_initrd_members_unpack_on_the_host(guest, tiny_box, tmp_path):
    initrd = bytearray(newc({"xhyve-early": b"ok-early\n"}))  # e.g. early microcode
    for fmt in COMPRESSORS:
        body = (tiny_box / "initrd.img").read_bytes() if fmt == "zstd" else newc({f"xhyve-{fmt}": f"ok-{fmt}\n".encode()})
        initrd += compress(fmt, body)
    path = tmp_path / "initrd.img"
    path.write_bytes(initrd)

    names = ["early", *(f for f in COMPRESSORS if f != "zstd")]
    script = "for f in %s; do echo XHYVE-DZ $f $(cat /xhyve-$f); done\n" % " ".join(names)
    b64 = base64.b64encode(script.encode()).decode()
    g = guest("-A", kernel="vmlinuz", initrd=path,
              cmdline=f"console=ttyS0 xhyve.action=poweroff xhyve.cmd={b64}")
    g.wait_for(rf"{MARK} cmd-exit=0")
    got = dict(re.findall(r"^XHYVE-DZ (\S+) (\S*)\r?$", g.text(), re.M))
    assert got == {f: f"ok-{f}" for f in names}, g.tail()

    err = g.stderr()
    assert re.search(r"kernel: bzImage payload \(lz4, \d+ bytes\) decompressed on the host", err), err
    m = re.search(r"initrd: (\d+) compressed member\(s\) \(([a-z0-9, ]+)\) decompressed on the host", err)
    assert m and m.group(2).split(", ") == list(COMPRESSORS), err
    g.wait_for(rf"{MARK} poweroff")
    assert g.wait_exit() == 1, g.tail()
