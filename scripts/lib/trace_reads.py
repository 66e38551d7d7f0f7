#!/usr/bin/env python3
"""Bytes a container workload reads, from an `strace -f` log of `runc run`.

usage: trace_reads.py ROOTFS STRACE_LOG WORKLOAD_ARGV0

Only the workload's process tree counts: from the first successful execve after runc's own
(the container's command) on, following clone/fork/vfork children. Every regular file it opened
for reading (successful open/openat without O_WRONLY/O_CREAT) or executed, plus each ELF's
program interpreter, is resolved inside ROOTFS (symlinks resolved relative to ROOTFS) and counted
once. Prints JSON:
  files           number of distinct files
  bytes           sum of their sizes (what a file-granular lazy loader must fetch, uncompressed)
  gzip_bytes      the same bytes compressed with gzip -6 as one stream (a lower bound for what a
                  lazy loader fetches from gzip layers)
  resident_bytes  bytes of those files in the page cache afterwards (the kernel's view of what
                  was actually read, readahead included; meaningful only after drop_caches)
  top             the 10 largest files
"""
import json
import mmap
import os
import re
import struct
import sys
import zlib
import ctypes

ROOT, LOG, ARGV0 = sys.argv[1], sys.argv[2], sys.argv[3]
ROOT = os.path.realpath(ROOT)

line_re = re.compile(r'^(\d+)\s+(.*)$')
open_re = re.compile(r'^(?:openat\((?:AT_FDCWD|\d+(?:<[^>]*>)?), |open\()"((?:[^"\\]|\\.)*)", ([A-Z_|]+)(?:, [0-7]+)?\) = (\d+)')
exec_re = re.compile(r'^execve\("((?:[^"\\]|\\.)*)", .*\) = 0')
exec_unf = re.compile(r'^execve\("((?:[^"\\]|\\.)*)", ')
clone_re = re.compile(r'^(?:clone3?|vfork|fork)\(.*\) = (\d+)')
resumed_re = re.compile(r'^<\.\.\. (\w+) resumed>.* = (\d+)')


def resolve(path, depth=0):
    """Resolve an absolute container path inside ROOT; None if it escapes or does not exist."""
    if depth > 40:
        return None
    parts = [p for p in path.split("/") if p not in ("", ".")]
    cur = ROOT
    i = 0
    while i < len(parts):
        p = parts[i]
        if p == "..":
            if cur != ROOT:
                cur = os.path.dirname(cur)
            i += 1
            continue
        nxt = os.path.join(cur, p)
        if os.path.islink(nxt):
            tgt = os.readlink(nxt)
            rest = "/".join(parts[i + 1:])
            if tgt.startswith("/"):
                return resolve(tgt + "/" + rest, depth + 1)
            rel = os.path.relpath(cur, ROOT)
            base = "/" if rel == "." else "/" + rel
            return resolve(base + "/" + tgt + "/" + rest, depth + 1)
        cur = nxt
        i += 1
    return cur if os.path.lexists(cur) else None


def interp(host_path):
    try:
        with open(host_path, "rb") as f:
            h = f.read(64)
            if h[:4] != b"\x7fELF" or h[4] != 2:
                return None
            phoff, = struct.unpack_from("<Q", h, 32)
            phentsize, phnum = struct.unpack_from("<HH", h, 54)
            for k in range(phnum):
                f.seek(phoff + k * phentsize)
                ph = f.read(phentsize)
                ptype, = struct.unpack_from("<I", ph, 0)
                if ptype == 3:  # PT_INTERP
                    off, = struct.unpack_from("<Q", ph, 8)
                    sz, = struct.unpack_from("<Q", ph, 32)
                    f.seek(off)
                    return f.read(sz).rstrip(b"\0").decode()
    except OSError:
        return None
    return None


def resident(path, size):
    """Bytes of the file in the page cache (mincore over a read-only mapping)."""
    if size == 0:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return 0
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, vec) != 0:
                return 0
            return sum(v & 1 for v in vec) * mmap.PAGESIZE
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


started = False
pending = {}
pids = set()
paths = []
with open(LOG, errors="replace") as f:
    for raw in f:
        m = line_re.match(raw.rstrip("\n"))
        if not m:
            continue
        pid, rest = int(m.group(1)), m.group(2)
        # join "<unfinished ...>" / "<... NAME resumed>" pairs (interleaved syscalls under -f)
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest[: -len("<unfinished ...>")].rstrip()
            continue
        mr = re.match(r'^<\.\.\. \w+ resumed>(.*)$', rest)
        if mr and pid in pending:
            rest = pending.pop(pid) + mr.group(1)
        if not started:
            me = exec_unf.match(rest)
            if me and rest.endswith("= 0"):
                p = me.group(1)
                if "runc" not in p and p != "/proc/self/exe" and not p.startswith("/proc/"):
                    started = True
                    pids.add(pid)
                    paths.append(p)
            continue
        if pid not in pids:
            continue
        mc = clone_re.match(rest) or resumed_re.match(rest)
        if mc and (mc.re is clone_re or mc.group(1) in ("clone", "clone3", "vfork", "fork")):
            child = int(mc.group(mc.lastindex))
            pids.add(child)
            continue
        mo = open_re.match(rest)
        if mo:
            flags = mo.group(2)
            if "O_WRONLY" in flags or "O_CREAT" in flags or "O_DIRECTORY" in flags:
                continue
            paths.append(mo.group(1))
            continue
        me = exec_re.match(rest)
        if me:
            paths.append(me.group(1))

seen = {}
for p in paths:
    if not p.startswith("/"):
        p = "/" + p
    if p.startswith(("/proc/", "/sys/", "/dev/")):
        continue
    hp = resolve(p)
    if not hp or not os.path.isfile(hp) or os.path.islink(hp):
        continue
    st = os.stat(hp)
    key = (st.st_dev, st.st_ino)
    if key in seen:
        continue
    seen[key] = (hp, st.st_size)
    ip = interp(hp)
    if ip:
        hi = resolve(ip)
        if hi and os.path.isfile(hi):
            st2 = os.stat(hi)
            seen.setdefault((st2.st_dev, st2.st_ino), (hi, st2.st_size))

total = sum(s for _, s in seen.values())
res = 0
comp = zlib.compressobj(6, zlib.DEFLATED, 31)
gz = 0
for hp, size in seen.values():
    try:
        res += resident(hp, size)
    except (OSError, ValueError):
        pass
for hp, size in seen.values():
    with open(hp, "rb") as fh:
        while True:
            b = fh.read(1 << 20)
            if not b:
                break
            gz += len(comp.compress(b))
gz += len(comp.flush())
top = sorted(seen.values(), key=lambda x: -x[1])[:10]
print(json.dumps({"files": len(seen), "bytes": total, "gzip_bytes": gz, "resident_bytes": res,
                  "traced": started,
                  "top": [[os.path.relpath(h, ROOT), s] for h, s in top]}))
