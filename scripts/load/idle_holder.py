#!/usr/bin/env python3
"""Holds many idle TCP connections to 127.0.0.1:PORT for scripts/loadtest.sh.

Opens --count connections (sequentially: each connect completes in the kernel's accept queue,
so a slow acceptor only slows the opening), sends nothing, writes "READY <opened>" to
--ready-file, and waits for SIGTERM/SIGINT. Then it counts how many connections the peer has
closed meanwhile, prints one line "IDLE_RESULT opened=N alive=K", closes everything and exits.
Only ever connects to 127.0.0.1.
"""
import argparse
import os
import resource
import select
import signal
import socket
import sys
import time

CONNECT_TIMEOUT_S = 5.0  # a loopback connect either completes in µs or the acceptor is stuck


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--ready-file", required=True)
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    stop = {"now": False}

    def on_signal(_sig, _frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    socks = []
    err = ""
    for _ in range(args.count):
        if stop["now"]:
            break
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(CONNECT_TIMEOUT_S)
        try:
            s.connect(("127.0.0.1", args.port))
        except OSError as e:
            err = str(e)
            s.close()
            break
        s.setblocking(False)
        socks.append(s)
    with open(args.ready_file + ".tmp", "w") as f:
        f.write(f"READY {len(socks)} {err}\n")
    os.rename(args.ready_file + ".tmp", args.ready_file)

    while not stop["now"]:
        time.sleep(0.1)

    # A connection the peer closed (or reset) polls readable and reads EOF / fails.
    poller = select.poll()
    by_fd = {}
    for s in socks:
        poller.register(s.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        by_fd[s.fileno()] = s
    dead = 0
    for fd, _ev in poller.poll(0):
        try:
            if by_fd[fd].recv(1, socket.MSG_PEEK) == b"":
                dead += 1
        except BlockingIOError:
            pass
        except OSError:
            dead += 1
    print(f"IDLE_RESULT opened={len(socks)} alive={len(socks) - dead} error={err!r}", flush=True)
    for s in socks:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
