"""What the tests of UEFI machines share: Debian's OVMF files, the variables an OVMF variable
store holds, the kernel parameters a guest booted through firmware must carry in its own boot
entry, and a guest script that writes a variable."""

import base64
import json
import os
import struct
import subprocess
import uuid

# Debian's ovmf package: the code and the empty variable store (4 MiB flash), the unified image.
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
OVMF_UNIFIED = "/usr/share/ovmf/OVMF.fd"
# A boot through OVMF on the nested PVM host: 6-7 minutes, PEI alone up to 11 beside other guests.
EFI_TIMEOUT = float(os.environ.get("XHYVE_TEST_EFI_TIMEOUT", "2700"))


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


def write_variable_cmd(name, guid, data):
    """The tiny box's `xhyve.cmd=` parameter (boxes/tiny/init) of a script that writes the
    variable NAME-GUID through efivarfs as root (non-volatile, boot and runtime access: efivarfs'
    4 bytes of attributes before the data; the kernel calls the firmware's SetVariable, which
    programs the machine's flash), then prints "efivar-written"."""
    value = "".join(f"\\{b:03o}" for b in b"\x07\0\0\0" + data)
    script = (f"mount -t efivarfs efivarfs /sys/firmware/efi/efivars && "
              f"printf '{value}' >/sys/firmware/efi/efivars/{name}-{guid} && echo efivar-written\n")
    return "xhyve.cmd=" + base64.b64encode(script.encode()).decode()
