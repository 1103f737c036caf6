"""The peer of the BEAM's own round-trip floor in bench/call_transport.exs:
echoes every byte it reads on a Unix stream socket, waiting in poll() as the
worker's lane thread does. Prints "ready" once it listens at argv[1]."""

import os
import select
import socket
import sys


def main() -> None:
    path = sys.argv[1]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    print("ready", flush=True)
    conn, _ = listener.accept()
    os.unlink(path)
    poll = select.poll()
    poll.register(conn.fileno(), select.POLLIN)
    while True:
        poll.poll()
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


if __name__ == "__main__":
    main()
