"""The management API's route table, derived from the operations that shared.management declares."""

from __future__ import annotations

from typing import Any

from shared.management import OPERATIONS, Operation

#: One endpoint per operation; its inputs, reply schema and status come with it.
Endpoint = Operation[Any]
ENDPOINTS: tuple[Endpoint, ...] = OPERATIONS
