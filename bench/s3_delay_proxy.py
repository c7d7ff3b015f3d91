"""Run the tests' TCPProxy as its own process: `s3_delay_proxy.py LISTEN_PORT UPSTREAM_PORT
ONE_WAY_DELAY_S`. Loopback only; stops on SIGTERM."""
from __future__ import annotations

import pathlib
import signal
import sys
import threading

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from tests.servers.moto import TCPProxy  # noqa: E402


def main() -> None:
    listen, upstream, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    proxy = TCPProxy(upstream, delay=delay, listen_port=listen)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    proxy.close()


if __name__ == "__main__":
    main()
