"""The accepted journal on real files: a worker killed (SIGKILL) with requests open leaves
exactly their accepted records for the worker that adopts its journal, across segment
rotations; a journal whose space cannot be allocated refuses records (they go to the bus)
instead of taking the worker down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from proxy.bus.journal import Journal
from shared.events import ACCEPTED, RequestEvent

WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from proxy.bus.journal import Journal
    from shared.events import ACCEPTED, RequestEvent

    directory, count = sys.argv[1], int(sys.argv[2])
    journal = Journal(directory, promote_after=60, segment_bytes=2048)
    assert journal.open()
    for i in range(count):
        event = RequestEvent(event_id=f"ev-{i:04d}", request_id=f"r{i}", ts=1.0 + i,
                             project_id="p", token_id="t", method="POST",
                             path="/v1/chat/completions", status=0, phase=ACCEPTED)
        assert journal.begin(event)
        if i % 3 == 0:  # every third request finished before the worker died
            journal.end(event.event_id)
    print("written", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_killed_writers_open_requests_are_what_an_adopter_finds(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    count = 200  # about 250 bytes a record, 2 KiB segments: many rotations
    done = subprocess.run(
        [sys.executable, "-c", WRITER, str(directory), str(count)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert len(list(directory.glob("*.journal"))) > 1, "the records should span segments"
    adopter = Journal(directory, promote_after=60)
    assert adopter.open()
    try:
        [orphan] = adopter.find_orphans()
        found = adopter.unfinished(orphan)
        assert [e.event_id for e in found] == [f"ev-{i:04d}" for i in range(count) if i % 3]
        assert all(e.phase == ACCEPTED and e.path == "/v1/chat/completions" for e in found)
        adopter.release(orphan, delete=True)
    finally:
        adopter.close()
    assert not directory.exists(), "adopted and closed: nothing left"


def test_a_journal_without_space_refuses_records_and_the_worker_lives(tmp_path: Path) -> None:
    free = os.statvfs(tmp_path)
    journal = Journal(
        tmp_path / "journal", promote_after=60, segment_bytes=free.f_bavail * free.f_frsize * 4
    )
    assert not journal.open()
    event = RequestEvent(
        event_id="ev",
        request_id="r",
        ts=1.0,
        project_id="p",
        token_id="t",
        method="POST",
        path="/v1/chat/completions",
        status=0,
        phase=ACCEPTED,
    )
    assert not journal.begin(event)
    assert not list((tmp_path / "journal").glob("*.journal")), "no half-made segment is left"
    journal.close()
