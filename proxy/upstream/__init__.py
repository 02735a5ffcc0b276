"""The upstream HTTP/1.1 client: ``Upstream`` (pools per origin), ``Response``, ``read_chunk``."""

from proxy.upstream.client import Upstream, read_chunk
from proxy.upstream.pool import Response
from proxy.upstream.wire import Body

__all__ = ["Body", "Response", "Upstream", "read_chunk"]
