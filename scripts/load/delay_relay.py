#!/usr/bin/env python3
"""A TCP relay on 127.0.0.1 that delays one direction, for scripts/loadtest.sh.

Makes a local Kafka broker "50 ms slower" where `tc qdisc ... netem` is unavailable: listens on
--listen-port, connects each client to 127.0.0.1:--upstream-port, forwards client→broker bytes
at once and broker→client bytes --delay-ms later (order kept, throughput not limited: chunks are
scheduled, not serialised behind each other's delay). Every request/response round trip thus
takes --delay-ms longer. The broker must advertise the relay's port. Only 127.0.0.1.
"""
import argparse
import asyncio
import signal
import sys

READ_CHUNK_BYTES = 256 * 1024  # large enough that a produce batch rarely needs several reads


async def pipe_now(reader, writer):
    try:
        while True:
            data = await reader.read(READ_CHUNK_BYTES)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def pipe_delayed(reader, writer, delay_s):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def sender():
        try:
            while True:
                due, data = await queue.get()
                if data is None:
                    break
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    task = asyncio.create_task(sender())
    try:
        while True:
            data = await reader.read(READ_CHUNK_BYTES)
            if not data:
                break
            queue.put_nowait((loop.time() + delay_s, data))
    except (ConnectionError, OSError):
        pass
    queue.put_nowait((0.0, None))
    await task


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen-port", type=int, required=True)
    ap.add_argument("--upstream-port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, required=True)
    args = ap.parse_args()
    delay_s = args.delay_ms / 1000.0

    async def handle(c_reader, c_writer):
        try:
            u_reader, u_writer = await asyncio.open_connection("127.0.0.1", args.upstream_port)
        except OSError:
            c_writer.close()
            return
        await asyncio.gather(
            pipe_now(c_reader, u_writer), pipe_delayed(u_reader, c_writer, delay_s)
        )

    server = await asyncio.start_server(handle, "127.0.0.1", args.listen_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
