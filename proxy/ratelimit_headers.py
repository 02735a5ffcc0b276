"""The request-rate headers under OpenAI's names, which its SDKs and many clients read."""

from __future__ import annotations

import math

from proxy.limits import Admission


def openai_request_headers(admission: Admission) -> list[tuple[bytes, bytes]]:
    """``x-ratelimit-limit-requests`` / ``-remaining-requests`` / ``-reset-requests`` (a
    duration such as ``12s``) for the tightest request limit that applied."""
    return [
        (b"x-ratelimit-limit-requests", str(admission.limit).encode()),
        (b"x-ratelimit-remaining-requests", str(admission.remaining).encode()),
        (b"x-ratelimit-reset-requests", f"{max(0, math.ceil(admission.reset))}s".encode()),
    ]
