#!/usr/bin/env python3
"""Readers for the restart benchmark: loop over files of a mount until STOPFILE exists.

    readers.py STOPFILE EVENTFILE WARM... -- COLD... > result.json

8 threads: 6 read whole WARM files (open/read/close, each thread its share), 2 keep a WARM file
open and pread 64 KiB at moving offsets; each WARM file's bytes are compared with its first
read (so they are cached: their reads never wait on the network). A 9th thread reads each COLD
file once, starting 1.8 s after the start (the event comes at 2 s), so fetches are under way
when it happens. Reports failed operations and the longest WARM operation that started
around EVENTFILE's time (the pause the event caused), as JSON.
"""
import json, os, sys, threading, time

stop, event = sys.argv[1], sys.argv[2]
rest = sys.argv[3:]
cut = rest.index("--") if "--" in rest else len(rest)
files, cold = rest[:cut], rest[cut + 1:]
first = {}
for f in files:
    with open(f, "rb") as h:
        first[f] = h.read()
fails, longest, lock = [], [0.0], threading.Lock()
counts = [0] * 8

def event_at():
    try:
        return os.stat(event).st_mtime
    except FileNotFoundError:
        return None

def note(t0, dt):
    e = event_at()
    if e is not None and e - 0.5 <= t0 <= e + 10:
        with lock:
            longest[0] = max(longest[0], dt)

def whole(k):
    mine = files[k::6] or files
    while not os.path.exists(stop):
        for f in mine:
            t0 = time.time()
            try:
                with open(f, "rb") as h:
                    b = h.read()
                if b != first[f]:
                    fails.append(f"{f}: wrong bytes")
            except OSError as e:
                fails.append(f"{f}: {e}")
            note(t0, time.time() - t0)
            counts[k] += 1

def held(k):
    f = files[k % len(files)]
    want = first[f]
    off = 0
    with open(f, "rb") as h:
        while not os.path.exists(stop):
            t0 = time.time()
            try:
                b = os.pread(h.fileno(), 65536, off)
                if b != want[off:off + 65536]:
                    fails.append(f"{f}: pread at {off}: wrong bytes")
            except OSError as e:
                fails.append(f"{f}: pread at {off}: {e}")
            note(t0, time.time() - t0)
            counts[k] += 1
            off = (off + 100003) % max(1, len(want) - 65536)

def cold_reads():
    time.sleep(1.8)
    for f in cold:
        if os.path.exists(stop):
            return
        try:
            with open(f, "rb") as h:
                h.read()
        except OSError as e:
            fails.append(f"{f} (cold): {e}")

ts = [threading.Thread(target=whole, args=(k,)) for k in range(6)]
ts += [threading.Thread(target=held, args=(k,)) for k in range(6, 8)]
ts.append(threading.Thread(target=cold_reads))
for t in ts:
    t.start()
for t in ts:
    t.join()
print(json.dumps({"failed": len(fails), "first_failures": fails[:5],
                  "longest_pause_ms": round(longest[0] * 1000, 1), "operations": sum(counts)}))
