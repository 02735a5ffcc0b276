"""Management of projects, tokens, keys and the audit log: inputs declared once, one service."""

from shared.management.fields import Field, Operation, fields_of, validated
from shared.management.operations import OPERATIONS
from shared.management.service import CachePurger, ChangeNotifier, Management
from shared.management.views import View, remaining_requests, token_state

__all__ = [
    "OPERATIONS",
    "CachePurger",
    "ChangeNotifier",
    "Field",
    "Management",
    "Operation",
    "View",
    "fields_of",
    "remaining_requests",
    "token_state",
    "validated",
]
