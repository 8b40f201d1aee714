#!/usr/bin/env python3
"""Where UEFI firmware spent its time, from a profile the VMM wrote (XHYVE_PROFILE=FILE, see
vmm/src/firmware/profile.rs): each sample's image is matched to the firmware's modules by
(SizeOfImage or TE stripped size, entry point RVA), read from the firmware file's volumes (the
LZMA-compressed main volume included) with their user-interface names.

    tests/tools/firmware_profile.py PROFILE FIRMWARE.fd [WINDOW_SECONDS]

Prints, per time window, the modules the samples fell in, then the totals with the callers
found on the stack (return addresses into other modules)."""
import collections
import lzma
import struct
import sys

LZMA_GUID = bytes([0x98, 0x58, 0x4e, 0xee, 0x14, 0x39, 0x59, 0x42, 0x9d, 0x6e, 0xdc, 0x7b, 0xd7, 0x94, 0x03, 0xcf])


def le(b, at, n):
    return int.from_bytes(b[at:at + n], "little")


def files(fv):
    if fv[40:44] != b"_FVH":
        return
    length, hlen = le(fv, 32, 8), le(fv, 0x30, 2)
    at = hlen
    end = min(length, len(fv))
    while at + 24 <= end:
        h = fv[at:at + 24]
        if h == b"\xff" * 24:
            break
        kind, large = h[18], h[19] & 1
        if large:
            size, head = le(fv, at + 24, 8), 32
        else:
            size, head = le(h, 20, 3), 24
        if size < head or at + size > end:
            break
        yield kind, fv[at + head:at + size]
        at = (at + size + 7) & ~7


def sections(b):
    at = 0
    while at + 4 <= len(b):
        size = le(b, at, 3)
        head = 4
        if size == 0xffffff:
            size, head = le(b, at + 4, 4), 8
        if size < head or at + size > len(b):
            break
        yield b[at + 3], b[at + head:at + size], b[at:at + size]
        at = (at + size + 3) & ~3


def modules_in(fv, out):
    for kind, body in files(fv):
        name, keys = None, []
        for stype, data, whole in sections(body):
            if stype == 0x15:
                name = data.decode("utf-16-le").rstrip("\0")
            elif stype == 0x10 and data[:2] == b"MZ":
                pe = le(data, 0x3c, 4)
                keys.append((le(data, pe + 24 + 56, 4), le(data, pe + 24 + 16, 4)))
            elif stype == 0x12 and data[:2] == b"VZ":
                keys.append((le(data, 6, 2), le(data, 8, 4)))
            elif stype == 0x17:
                modules_in(data, out)
            elif stype == 0x02 and data[:16] == LZMA_GUID:
                off = le(data, 16, 2)
                raw = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(whole[off:])
                for s2, d2, _ in sections(raw):
                    if s2 == 0x17:
                        modules_in(d2, out)
        for k in keys:
            out[k] = name or "?"


def all_modules(path):
    img = open(path, "rb").read()
    out = {}
    at = 0
    while at < len(img):
        if img[at + 40:at + 44] == b"_FVH":
            modules_in(img[at:], out)
            at += max(le(img, at + 32, 8), 0x1000)
        else:
            at += 0x1000
    return out


def main():
    prof, fw = sys.argv[1], sys.argv[2]
    window = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
    mods = all_modules(fw)
    bases = {}
    rows = []
    for line in open(prof):
        p = line.split()
        if len(p) < 6:
            continue
        t, rip = int(p[0]) / 1000, int(p[2], 16)
        if p[3] != "-":
            base, size, entry = int(p[3], 16), int(p[4], 16), int(p[5], 16)
            name = mods.get((size, entry), f"?{size:#x}/{entry:#x}")
            bases[base] = (name, size)
        else:
            name = "flash" if rip >= 0xff000000 else "?"
        stack = [int(x, 16) for x in p[6:]]
        rows.append((t, rip, name, stack))
    # Callers: stack words that fall inside a known image other than the sampled one.
    def owner(addr):
        for b, (n, s) in bases.items():
            if b <= addr < b + max(s, 0x1000):
                return n
        return None

    by_window = collections.defaultdict(collections.Counter)
    callers = collections.defaultdict(collections.Counter)
    for t, rip, name, stack in rows:
        by_window[int(t // window)][name] += 1
        words = []
        for w in stack:
            words += [w & 0xffffffff, w >> 32] if rip < 1 << 32 else [w]
        seen = []
        for w in words:
            o = owner(w)
            if o and o != name and o not in seen:
                seen.append(o)
        callers[name][" < ".join(seen[:3])] += 1
    total = collections.Counter()
    for w in sorted(by_window):
        c = by_window[w]
        n = sum(c.values())
        total.update(c)
        top = ", ".join(f"{k} {v * 100 // n}%" for k, v in c.most_common(5))
        print(f"{w * window:6.0f}s-{(w + 1) * window:.0f}s n={n}: {top}")
    n = sum(total.values())
    print(f"total samples {n}")
    for k, v in total.most_common(15):
        print(f"  {k:40s} {v * 100 / n:5.1f}%   callers: {callers[k].most_common(3)}")


if __name__ == "__main__":
    main()
