#!/usr/bin/env python3
"""Throttling TCP forwarder: emulates a slow link between a client in this network namespace
and a server (e.g. a registry) in another one.

Listens on ADDR:PORT (default 127.0.0.1) in the namespace it was started in, then (with --netns) switches the
process into the named network namespace (/run/netns/NAME), so every upstream connection is
made inside it. Each direction of the link is a shared bottleneck: a byte stream is serialised at
RATE (token bucket with no burst allowance: one reservation per chunk read) and each chunk is
delivered DELAY later (one-way propagation delay). A new connection waits one round trip before
data flows (the TCP handshake). Not modelled: slow start, loss, the kernel's own queueing.

  shaper.py --target 127.0.0.1:5000 [--netns NAME] [--rate-mbit 200] [--delay-ms 10]
            [--listen-addr 127.0.0.1] [--port 0] [--port-file FILE]
"""
import argparse
import asyncio
import ctypes
import os
import signal
import socket
import sys

CHUNK = 64 * 1024
# the sender may run this far ahead of the link before it is paused (asyncio sleeps are coarse)
SLACK = 0.004
CLONE_NEWNET = 0x40000000


def setns(name):
    fd = os.open(os.path.join("/run/netns", name), os.O_RDONLY)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "setns(%s): %s" % (name, os.strerror(e)))
    os.close(fd)


class Link:
    """One direction of the bottleneck, shared by all connections."""

    def __init__(self, rate_bytes_per_s):
        self.rate = rate_bytes_per_s
        self.free_at = 0.0

    def reserve(self, n, now):
        if not self.rate:
            return now
        start = max(now, self.free_at)
        self.free_at = start + n / self.rate
        return self.free_at


async def pump(reader, writer, link, delay):
    loop = asyncio.get_running_loop()
    q = asyncio.Queue()

    async def deliver():
        while True:
            t, data = await q.get()
            d = t - loop.time()
            if d > 0.0005:
                await asyncio.sleep(d)
            if data is None:
                if writer.can_write_eof():
                    try:
                        writer.write_eof()
                    except OSError:
                        pass
                return
            writer.write(data)
            await writer.drain()

    task = asyncio.ensure_future(deliver())
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            now = loop.time()
            tx_end = link.reserve(len(data), now)
            q.put_nowait((tx_end + delay, data))
            # back-pressure: the sender cannot push faster than the link drains
            if tx_end - now > SLACK:
                await asyncio.sleep(tx_end - now - SLACK / 2)
            if task.done():
                break
    except (ConnectionError, OSError):
        pass
    q.put_nowait((loop.time() + delay, None))
    try:
        await task
    except (ConnectionError, OSError):
        pass


async def handle(creader, cwriter, args, up, down):
    # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and a socket
    # accepted from a listener made with proto 0 has proto 0: without this, Nagle held back a
    # response body written after its headers until the client's delayed ACK (40 ms).
    sock = cwriter.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if args.delay > 0:
            await asyncio.sleep(2 * args.delay)  # SYN / SYN-ACK
        host, port = args.target.rsplit(":", 1)
        sreader, swriter = await asyncio.open_connection(host, int(port))
    except OSError:
        cwriter.close()
        return
    await asyncio.gather(pump(creader, swriter, up, args.delay),
                         pump(sreader, cwriter, down, args.delay),
                         return_exceptions=True)
    for w in (cwriter, swriter):
        try:
            w.close()
        except OSError:
            pass


async def main(args):
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((args.listen_addr, args.port))
    lsock.listen(256)
    if args.netns:
        setns(args.netns)  # the listening socket stays in the original namespace
    rate = args.rate_mbit * 1e6 / 8 if args.rate_mbit > 0 else 0
    up, down = Link(rate), Link(rate)
    server = await asyncio.start_server(lambda r, w: handle(r, w, args, up, down), sock=lsock)
    port = lsock.getsockname()[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.rename(tmp, args.port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True)
    p.add_argument("--netns")
    p.add_argument("--rate-mbit", type=float, default=200)
    p.add_argument("--delay-ms", type=float, default=10)
    p.add_argument("--listen-addr", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file")
    a = p.parse_args()
    a.delay = a.delay_ms / 1000.0
    try:
        asyncio.run(main(a))
    except KeyboardInterrupt:
        sys.exit(0)
