"""What the tests of UEFI machines share: the variables an OVMF variable store holds, and the
kernel parameters a guest booted through firmware must carry in its own boot entry."""

import json
import struct
import subprocess
import uuid


def live_variables(store):
    """{(name, vendor GUID): data} of the variables an OVMF VARS file holds (edk2's authenticated
    variable store: the firmware volume header, the store header, then the variables)."""
    fv_header_len = struct.unpack_from("<H", store, 0x30)[0]
    at, out = fv_header_len + 28, {}
    while at + 60 <= len(store):
        start, state = struct.unpack_from("<HB", store, at)
        if start != 0x55AA:
            break
        name_size, data_size = struct.unpack_from("<II", store, at + 36)
        guid = bytes(store[at + 44:at + 60])
        name = store[at + 60:at + 60 + name_size].decode("utf-16-le").rstrip("\0")
        data = store[at + 60 + name_size:at + 60 + name_size + data_size]
        if state == 0x3F:  # VAR_ADDED, not deleted or in transition
            out[(name, str(uuid.UUID(bytes_le=guid)))] = data
        at = (at + 60 + name_size + data_size + 3) & ~3
    return out


def guest_params(xhyve_bin):
    """`xhyve --features`' guest_kernel_params: -f kexec adds them itself, firmware cannot."""
    out = subprocess.run([str(xhyve_bin), "--features"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["guest_kernel_params"]
