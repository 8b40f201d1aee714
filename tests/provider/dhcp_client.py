"""A minimal DHCP client for the shared-network tests: sends DHCP messages from an interface that
has no address (as a booting guest does) and prints each reply as one JSON line.

usage (inside the test's network namespace):
  python3 dhcp_client.py DEV MAC STEP...
STEP: discover | request:IP[:SERVER] | renew:IP | decline:IP
A step with no reply within 3 s prints {"reply": null}.
"""

import json
import random
import socket
import struct
import sys

MAGIC = b"\x63\x82\x53\x63"
TYPES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK",
         7: "RELEASE", 8: "INFORM"}


def ip4(s):
    return socket.inet_aton(s)


def build(kind, mac, xid, requested=None, server=None, ciaddr="0.0.0.0"):
    chaddr = bytes.fromhex(mac.replace(":", "")).ljust(16, b"\0")
    head = struct.pack("!BBBBIHH", 1, 1, 6, 0, xid, 0, 0)
    head += ip4(ciaddr) + ip4("0.0.0.0") * 3 + chaddr + b"\0" * 192 + MAGIC
    opts = bytes([53, 1, kind])
    if requested:
        opts += bytes([50, 4]) + ip4(requested)
    if server:
        opts += bytes([54, 4]) + ip4(server)
    opts += bytes([55, 3, 1, 3, 51, 255])
    return head + opts


def parse(pkt):
    op, _, hlen, _, xid = struct.unpack("!BBBBI", pkt[:8])
    out = {"op": op, "xid": xid, "len": len(pkt),
           "ciaddr": socket.inet_ntoa(pkt[12:16]), "yiaddr": socket.inet_ntoa(pkt[16:20]),
           "chaddr": ":".join(f"{b:02x}" for b in pkt[28:28 + hlen]), "options": {}}
    assert pkt[236:240] == MAGIC, "no magic cookie"
    i = 240
    while i < len(pkt) and pkt[i] != 255:
        if pkt[i] == 0:
            i += 1
            continue
        code, n = pkt[i], pkt[i + 1]
        data = pkt[i + 2:i + 2 + n]
        i += 2 + n
        if code == 53:
            out["type"] = TYPES.get(data[0], data[0])
        elif code in (1, 28, 54):
            out["options"][str(code)] = socket.inet_ntoa(data)
        elif code == 3:
            out["options"]["3"] = [socket.inet_ntoa(data[j:j + 4]) for j in range(0, n, 4)]
        elif code in (51, 58, 59):
            out["options"][str(code)] = struct.unpack("!I", data)[0]
        else:
            out["options"][str(code)] = data.hex()
    return out


def main():
    dev, mac, steps = sys.argv[1], sys.argv[2], sys.argv[3:]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", 68))
    s.settimeout(3)
    for step in steps:
        kind, *args = step.split(":")
        xid = random.getrandbits(32)
        if kind == "discover":
            pkt = build(1, mac, xid)
        elif kind == "request":
            pkt = build(3, mac, xid, requested=args[0], server=args[1] if len(args) > 1 else None)
        elif kind == "renew":
            pkt = build(3, mac, xid, ciaddr=args[0])
        elif kind == "decline":
            pkt = build(4, mac, xid, requested=args[0])
        else:
            raise SystemExit(f"unknown step {step}")
        s.sendto(pkt, ("255.255.255.255", 67))
        if kind == "decline":
            print(json.dumps({"step": step, "reply": None}), flush=True)
            continue
        reply = None
        try:
            while True:
                data, _ = s.recvfrom(4096)
                r = parse(data)
                if r["xid"] == xid and r["op"] == 2:
                    reply = r
                    break
        except socket.timeout:
            pass
        print(json.dumps({"step": step, "reply": reply}), flush=True)


if __name__ == "__main__":
    main()
