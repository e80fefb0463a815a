#!/usr/bin/env python3
"""A throttled loopback link for the benchmark: a TCP forwarder that delays each connection
and limits the bytes it carries towards the client, per connection and in all, like a public
gateway's limits. TLS passes through untouched.

Usage: throttle.py UPSTREAM_PORT PER_CONN_BYTES_S TOTAL_BYTES_S CONNECT_DELAY_MS
Prints the port it listens on (127.0.0.1), then forwards until killed.
"""
import asyncio
import sys
import time

CHUNK = 16 * 1024


class Bucket:
    """A token bucket: `rate` bytes per second, bursts of at most `burst` bytes."""

    def __init__(self, rate, burst):
        self.rate, self.burst, self.tokens, self.t = rate, burst, burst, time.monotonic()

    async def take(self, n):
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
            self.t = now
            if self.tokens >= n:
                self.tokens -= n
                return
            await asyncio.sleep((n - self.tokens) / self.rate)


async def pump(reader, writer, buckets):
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            for b in buckets:
                await b.take(len(data))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    up_port, per_conn, total, delay_ms = (int(a) for a in sys.argv[1:5])
    total_bucket = Bucket(total, CHUNK * 4)

    async def handle(cr, cw):
        await asyncio.sleep(delay_ms / 1000)
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", up_port)
        except OSError:
            cw.close()
            return
        conn_bucket = Bucket(per_conn, CHUNK * 4)
        await asyncio.gather(pump(cr, uw, []), pump(ur, cw, [conn_bucket, total_bucket]))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
