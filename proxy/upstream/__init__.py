"""The upstream HTTP/1.1 client: ``Upstream`` (pools per origin), its ``Response``, and
``read_chunk``. Layers: ``wire`` (framing and head), ``connection`` (one socket, knows no
pool), ``pool`` (the only user of ``connection``), ``egress`` (proxies), ``client``."""

from proxy.upstream.client import Upstream, read_chunk
from proxy.upstream.connection import Response
from proxy.upstream.wire import Body

__all__ = ["Body", "Response", "Upstream", "read_chunk"]
