"""bpftrace's maps used from tracerd itself, through the bpf(2) system call.

Descriptors are copied from the bpftrace process with pidfd_getfd(2) (found
in its ``/proc/PID/fdinfo``, never by machine-wide name), then updated,
deleted and read in batches (BPF_MAP_*_BATCH, Linux 5.6+; key by key
where the kernel refuses batches), per-CPU values summed.

Security: the descriptors are our own child's; nothing is read from the targets.

Diagnostics: a failing call raises OSError with the kernel's errno.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
from dataclasses import dataclass

SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351, "i686": 357, "i386": 357}
SYS_PIDFD_GETFD = 438  # the same number on every architecture
LOOKUP, UPDATE, DELETE, NEXT_KEY, OBJ_INFO, LOOKUP_BATCH, DELETE_BATCH = 1, 2, 3, 4, 15, 24, 27
NO_BATCH = {errno.EINVAL, errno.EOPNOTSUPP, 524}  # 524: the kernel's ENOTSUPP
BATCH = 1024  # keys a batch call reads or deletes
PERCPU_TYPES = {5, 6, 10}  # BPF_MAP_TYPE_PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH
ATTR_SIZE = 128
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(number: int, *args: object) -> int:
    result = int(_libc.syscall(ctypes.c_long(number), *args))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    return _syscall(SYS_BPF[os.uname().machine], ctypes.c_int(cmd), attr, ctypes.c_uint(ATTR_SIZE))


@functools.cache
def possible_cpus() -> int:
    """How many slots a per-CPU value has (``/sys/devices/system/cpu/possible``, fixed at boot)."""
    try:
        with open("/sys/devices/system/cpu/possible", encoding="ascii") as file:
            text = file.read().strip()
    except OSError:
        return os.cpu_count() or 1
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


@dataclass
class BpfMap:
    fd: int
    name: str
    kind: int
    key_size: int
    value_size: int

    @property
    def slot(self) -> int:
        return (self.value_size + 7) // 8 * 8

    def _attr(self, key: ctypes.Array[ctypes.c_char] | None, value: ctypes.Array[ctypes.c_char] | None,
              flags: int = 0) -> ctypes.Array[ctypes.c_char]:  # fmt: skip
        attr = ctypes.create_string_buffer(ATTR_SIZE)
        ctypes.c_uint32.from_buffer(attr, 0).value = self.fd
        ctypes.c_uint64.from_buffer(attr, 8).value = ctypes.addressof(key) if key is not None else 0
        ctypes.c_uint64.from_buffer(attr, 16).value = ctypes.addressof(value) if value is not None else 0
        ctypes.c_uint64.from_buffer(attr, 24).value = flags
        return attr

    def update(self, key: bytes, value: bytes) -> None:
        key_buffer, value_buffer = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value)
        bpf(UPDATE, self._attr(key_buffer, value_buffer))  # the buffers live until the call returned

    def _batch_attr(self, token: ctypes.Array[ctypes.c_char] | None, out: ctypes.Array[ctypes.c_char] | None,
                    keys: ctypes.Array[ctypes.c_char], values: ctypes.Array[ctypes.c_char] | None,
                    count: int) -> ctypes.Array[ctypes.c_char]:  # fmt: skip
        attr = ctypes.create_string_buffer(ATTR_SIZE)
        for offset, buffer in ((0, token), (8, out), (16, keys), (24, values)):
            ctypes.c_uint64.from_buffer(attr, offset).value = ctypes.addressof(buffer) if buffer is not None else 0
        ctypes.c_uint32.from_buffer(attr, 32).value = count
        ctypes.c_uint32.from_buffer(attr, 36).value = self.fd
        return attr

    def delete(self, key: bytes) -> bool:
        """Delete ``key``; False when it was not there."""
        key_buffer = ctypes.create_string_buffer(key, len(key))
        try:
            bpf(DELETE, self._attr(key_buffer, None))
        except OSError as err:
            if err.errno == errno.ENOENT:
                return False
            raise
        return True

    def delete_many(self, keys: list[bytes]) -> None:
        """Delete ``keys``, in batches; one that is not there (the program deleted it) is skipped."""
        while keys:
            chunk = keys[:BATCH]
            buffer = ctypes.create_string_buffer(b"".join(chunk), len(chunk) * self.key_size)
            attr = self._batch_attr(None, None, buffer, None, len(chunk))
            try:
                bpf(DELETE_BATCH, attr)
                done = len(chunk)
            except OSError as err:
                if err.errno in NO_BATCH:
                    for key in keys:
                        self.delete(key)
                    return
                if err.errno != errno.ENOENT:
                    raise
                done = ctypes.c_uint32.from_buffer(attr, 32).value + 1  # the missing key's index, skipped
            keys = keys[done:]

    def items(self, limit: int = 1 << 20) -> list[tuple[bytes, int]]:
        """Every (key, value) now: the value's first 8 bytes as a signed integer, summed over CPUs."""
        cpus = possible_cpus() if self.kind in PERCPU_TYPES else 1
        try:
            return self._items_batched(cpus, limit)
        except OSError as err:
            if err.errno not in NO_BATCH:
                raise
        return self._items_one_by_one(cpus, limit)

    def _sum(self, raw: bytes, offset: int, cpus: int) -> int:
        return sum(int.from_bytes(raw[offset + i * self.slot : offset + i * self.slot + 8], "little", signed=True)
                   for i in range(cpus))  # fmt: skip

    def _items_batched(self, cpus: int, limit: int) -> list[tuple[bytes, int]]:
        keys = ctypes.create_string_buffer(BATCH * self.key_size)
        values = ctypes.create_string_buffer(BATCH * self.slot * cpus)
        token, out = None, ctypes.create_string_buffer(max(self.key_size, 8))
        found: list[tuple[bytes, int]] = []
        while len(found) < limit:
            attr = self._batch_attr(token, out, keys, values, BATCH)
            try:
                bpf(LOOKUP_BATCH, attr)
                last = False
            except OSError as err:
                if err.errno != errno.ENOENT:
                    raise
                last = True  # the end: count says how many this call still filled
            count = ctypes.c_uint32.from_buffer(attr, 32).value
            raw_keys, raw_values = keys.raw, values.raw
            for i in range(count):
                found.append((raw_keys[i * self.key_size : (i + 1) * self.key_size],
                              self._sum(raw_values, i * self.slot * cpus, cpus)))  # fmt: skip
            if last:
                break
            token = ctypes.create_string_buffer(out.raw, len(out))
        return found[:limit]

    def _items_one_by_one(self, cpus: int, limit: int) -> list[tuple[bytes, int]]:
        value = ctypes.create_string_buffer(self.slot * cpus)
        found: list[tuple[bytes, int]] = []
        current: ctypes.Array[ctypes.c_char] | None = None
        while len(found) < limit:
            following = ctypes.create_string_buffer(self.key_size)
            try:
                bpf(NEXT_KEY, self._attr(current, following))
            except OSError as err:
                if err.errno == errno.ENOENT:
                    break
                raise
            current = following
            try:
                bpf(LOOKUP, self._attr(current, value))
            except OSError as err:
                if err.errno == errno.ENOENT:
                    continue  # deleted meanwhile
                raise
            found.append((current.raw, self._sum(value.raw, 0, cpus)))
        return found

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _info(fd: int) -> BpfMap:
    info = ctypes.create_string_buffer(96)
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    ctypes.c_uint32.from_buffer(attr, 0).value = fd
    ctypes.c_uint32.from_buffer(attr, 4).value = len(info)
    ctypes.c_uint64.from_buffer(attr, 8).value = ctypes.addressof(info)
    bpf(OBJ_INFO, attr)
    raw = info.raw
    # struct bpf_map_info: type, id, key_size, value_size, max_entries, map_flags (u32 each), name[16]
    kind, key_size, value_size = (int.from_bytes(raw[o : o + 4], "little") for o in (0, 8, 12))
    name = raw[24:40].split(b"\0", 1)[0].decode("ascii", "replace")
    return BpfMap(fd, name, kind, key_size, value_size)


def open_maps(pid: int) -> dict[str, BpfMap]:
    """The BPF maps process ``pid`` holds, copied into this process, by name (bpftrace's ``AT_x``)."""
    fds = []
    for entry in os.listdir(f"/proc/{pid}/fdinfo"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/fdinfo/{entry}", encoding="ascii") as file:
            if any(line.startswith("map_id:") for line in file):
                fds.append(int(entry))
    pidfd = os.pidfd_open(pid)
    maps: dict[str, BpfMap] = {}
    try:
        for target_fd in fds:
            fd = _syscall(SYS_PIDFD_GETFD, ctypes.c_int(pidfd), ctypes.c_int(target_fd), ctypes.c_uint(0))
            try:
                found = _info(fd)
            except OSError:
                os.close(fd)
                raise
            if found.name in maps:
                found.close()
            else:
                maps[found.name] = found
    except OSError:
        for found in maps.values():
            found.close()
        raise
    finally:
        os.close(pidfd)
    return maps
