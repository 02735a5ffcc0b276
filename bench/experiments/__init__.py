"""Throwaway experiments behind the figures in bench/CLIENTS.md (not part of the package)."""
