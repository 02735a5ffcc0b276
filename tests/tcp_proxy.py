"""A stoppable TCP proxy, for cutting a service's connections in the middle of a test."""

from __future__ import annotations

import socket
import threading
from contextlib import suppress

from tests.services import free_port


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target. ``stop()`` closes the listener and every open
    connection (clients see resets and refusals, as if the server died); ``start()`` again
    resumes on the same port. ``freeze()`` silently drops whatever the open connections carry
    from then on, closing nothing, while new connections work: a peer that vanished without a
    word (a NAT entry dropped, a failover behind a virtual IP). ``blackhole()`` drops everything
    silently, as a NAT or load balancer that lost its flows does: open connections stay open and
    swallow what is sent, new ones are accepted and never answered; ``heal()`` forwards new
    connections again (the swallowed ones stay dead, as dropped flows do)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._dead: set[socket.socket] = set()  # frozen or black-holed: read and discarded
        self._swallow_new = False
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
            self._dead = set()
        if listener is not None:
            with suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def freeze(self) -> None:
        with self._lock:
            self._dead |= self._sockets

    def blackhole(self) -> None:
        with self._lock:
            self._swallow_new = True
            self._dead |= self._sockets

    def heal(self) -> None:
        with self._lock:
            self._swallow_new = False

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                swallow = self._swallow_new
                if swallow:
                    self._sockets.add(client)
                    self._dead.add(client)
            if swallow:
                threading.Thread(target=self._pipe, args=(client, client), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if src in self._dead or dst in self._dead:
                    continue  # frozen or black-holed: nothing gets through, nothing answered
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
