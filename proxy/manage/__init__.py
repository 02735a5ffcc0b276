"""The management API under ``/manage``: projects, tokens, usage, keys and the audit log."""

from proxy.manage.app import create_management_app

__all__ = ["create_management_app"]
