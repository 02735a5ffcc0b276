"""The limiter's one check split in two on Redis Cluster: the edge windows (global, per-IP) in
their slot, the token's window and leases in the token's own slot, merged into one answer.

On one server everything stays one script (``KeyLayout.spread`` is off). On a Cluster, keeping
every key under one tag would put all limiter load on one shard; so the token's keys carry the
token's own tag and the ADMIT script runs twice, once per slot, both calls written in the same
event-loop tick (one round trip of latency). Atomicity across the two is replaced by
compensation: if one part refuses, what the other counted is taken back (UNDO), so a refused
request never holds a window slot or a lease for longer than that second call. Until then a
concurrent request may see one entry too many (a spurious refusal, never an extra admission).
"""

from __future__ import annotations

from typing import Any

from shared.streams import hash_tag

#: ADMIT's argument positions (see proxy/limits/scripts.py).
_GLOBAL, _IP, _TOKEN, _CAP = 2, 4, 6, 8

Call = tuple[tuple[str, ...], list[Any]]


def split_admit(keys: tuple[str, ...], args: list[Any]) -> list[Call]:
    """ADMIT's (keys, args) for the edge slot and for the token slot; a part with nothing to
    check is left out. ``keys`` is (global, IP, token log, leases) as for one script."""
    global_key, ip_key, token_key, lease_key = keys
    calls: list[Call] = []
    if int(args[_GLOBAL]) or int(args[_IP]):
        edge = list(args)
        edge[_TOKEN] = edge[_CAP] = 0
        ip = ip_key if int(args[_IP]) else global_key  # unused keys name the same slot
        calls.append(((global_key, ip, global_key, global_key), edge))
    if int(args[_TOKEN]) or int(args[_CAP]):
        own = list(args)
        own[_GLOBAL] = own[_IP] = 0
        calls.append(((token_key, token_key, token_key, lease_key), own))
    return calls


def merge(replies: list[list[Any]]) -> tuple[list[int], list[int]]:
    """(the one reply ADMIT would have given, indexes of parts to undo). All admitted: the
    tightest window's figures. Any refused: the refusal with the longest wait, and every part
    that did count gets undone."""
    parsed = [[int(v) for v in reply] for reply in replies]
    refused = [r for r in parsed if r[0] == 0]
    if refused:
        worst = max(refused, key=lambda r: r[4])
        return worst, [i for i, r in enumerate(parsed) if r[0] == 1]
    counted = [r for r in parsed if r[1] > 0]
    if not counted:
        return [1, 0, 0, 0, 0], []
    return min(counted, key=lambda r: r[3]), []


def slot_groups(keys: tuple[str, ...]) -> dict[str, list[int]]:
    """Positions of ``keys`` grouped by hash tag (one group = one slot, one script call)."""
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(hash_tag(key), []).append(i)
    return groups
