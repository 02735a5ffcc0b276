"""The bus's local spool on a real directory, with real processes owning and dying."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from proxy.bus.spool import Spool


def drain(spool: Spool, max_lines: int = 7) -> list[bytes]:
    out: list[bytes] = []
    while (chunk := spool.read_chunk(max_lines)) is not None:
        out.extend(chunk.lines)
        spool.consume(chunk)
    return out


def lines(n: int, start: int = 0) -> list[bytes]:
    return [b'{"n":%d,"pad":"%s"}' % (i, b"x" * 40) for i in range(start, start + n)]


def test_lines_come_back_in_order_across_segments_and_files_go(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), 1 << 20, segment_bytes=500)
    spool.open()
    assert sum(spool.append(lines(30))) == 30
    assert sum(spool.append(lines(20, 30))) == 20
    assert len(list(tmp_path.glob("*.jsonl"))) == 2  # rotated between appends
    assert spool.pending_events() == 50 and spool.own_backlog()
    assert drain(spool) == lines(50)
    assert not spool.has_backlog() and spool.pending_events() == 0 and spool.bytes == 0
    assert list(tmp_path.glob("*.jsonl")) == []
    spool.append(lines(3, 50))  # appending after a full replay starts afresh
    assert drain(spool) == lines(3, 50)
    spool.close()
    assert list(tmp_path.iterdir()) == []


def test_the_cap_bounds_the_bytes_on_disk(tmp_path: Path) -> None:
    batch = lines(100)
    cap = sum(len(x) + 1 for x in batch[:40])
    spool = Spool(str(tmp_path), cap, segment_bytes=300)
    spool.open()
    assert sum(spool.append(batch)) == 40
    assert sum(spool.append(batch[40:])) == 0
    assert not spool.room_for(1)
    assert sum(p.stat().st_size for p in tmp_path.glob("*.jsonl")) == cap
    assert drain(spool) == batch[:40]
    assert spool.room_for(1) and spool.append(batch[40:41]) == [True]
    spool.close()


def test_events_owed_a_reserved_place_are_written_past_the_cap(tmp_path: Path) -> None:
    """The cap decides which requests are admitted; the events of a request already admitted
    (marked owed) are never the ones dropped, even when other lines filled the spool."""
    batch = lines(10)
    cap = sum(len(x) + 1 for x in batch[:4])
    spool = Spool(str(tmp_path), cap, segment_bytes=300)
    spool.open()
    owed = [i in (2, 6, 9) for i in range(10)]
    assert spool.append(batch, owed) == [i < 4 or i in (6, 9) for i in range(10)]
    assert spool.bytes > cap and not spool.room_for(1)
    assert drain(spool) == [batch[i] for i in (0, 1, 2, 3, 6, 9)]
    spool.close()


def test_an_unusable_directory_takes_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    spool = Spool(str(blocker / "spool"), 1 << 20)
    spool.open()
    assert spool.broken and not spool.room_for(1)
    assert spool.append(lines(1)) == [False]
    spool.close()


_WRITER = textwrap.dedent(
    """
    import sys, time
    from proxy.bus.spool import Spool
    spool = Spool(sys.argv[1], 1 << 20, segment_bytes=400)
    spool.open()
    spool.append([b'{"n":%d}' % i for i in range(int(sys.argv[2]))])
    print("ready", flush=True)
    time.sleep(60)
    """
)


def _writer(directory: Path, n: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(directory), str(n)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_files_of_a_killed_worker_are_adopted_and_those_of_a_live_one_are_not(
    tmp_path: Path,
) -> None:
    dead, alive = _writer(tmp_path, 25), _writer(tmp_path, 5)
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    try:
        me = Spool(str(tmp_path), 1 << 20)
        me.open()
        assert me.adopt(me.find_orphans()) == 25
        other = Spool(str(tmp_path), 1 << 20)
        other.open()
        assert other.find_orphans() == []  # locked by `me` now, and by the live writer
        assert drain(me) == [b'{"n":%d}' % i for i in range(25)]
        assert not me.has_backlog()
        assert other.find_orphans() == []  # nothing left of the dead writer
        leftover = {p.name.split(".")[0] for p in tmp_path.iterdir()}
        assert leftover == {me.owner, other.owner, _owner_of_live(tmp_path, me, other)}
        me.close()
        other.close()
    finally:
        alive.kill()
        alive.wait()
        if alive.stdout:
            alive.stdout.close()
        if dead.stdout:
            dead.stdout.close()


def _owner_of_live(directory: Path, *mine: Spool) -> str:
    names = {p.name.split(".")[0] for p in directory.glob("*.jsonl")}
    names -= {s.owner for s in mine}
    assert len(names) == 1
    return names.pop()


def test_liveness_is_the_lock_not_the_pid(tmp_path: Path) -> None:
    """Files named after a pid that is alive (ours, as after pid reuse) but whose lock nobody
    holds are orphans; a torn last line (its writer died mid-write) is skipped."""
    owner = f"host-{os.getpid()}-deadbeef"
    (tmp_path / f"{owner}.lock").write_text("")
    (tmp_path / f"{owner}.0000000001.jsonl").write_bytes(b'{"n":1}\n{"n":2}\n{"n":')
    (tmp_path / f"{owner}.0000000002.jsonl").write_bytes(b'{"n":3}\n')
    spool = Spool(str(tmp_path), 1 << 20)
    spool.open()
    assert spool.adopt(spool.find_orphans()) == 3
    assert drain(spool) == [b'{"n":1}', b'{"n":2}', b'{"n":3}']
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{spool.owner}.lock"]
    spool.close()


def test_a_line_longer_than_the_read_window_comes_back_whole(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), 1 << 22)
    spool.open()
    big = b'{"x":"' + b"y" * 200_000 + b'"}'
    spool.append([b"{}", big, b"{}"])
    assert drain(spool, max_lines=1) == [b"{}", big, b"{}"]
    spool.close()


def test_a_segment_deleted_from_under_the_spool_is_skipped_and_counted(tmp_path: Path) -> None:
    """A cleaner removing a spool file must not stop the replay of everything after it: its
    events are reported lost and the rest come back."""
    spool = Spool(str(tmp_path), 1 << 20, segment_bytes=500)
    spool.open()
    spool.append(lines(30))
    spool.append(lines(20, 30))
    first = sorted(tmp_path.glob("*.jsonl"))[0]
    first.unlink()
    out: list[bytes] = []
    lost = 0
    while (chunk := spool.read_chunk(7)) is not None:
        out.extend(chunk.lines)
        lost += chunk.lost
        spool.consume(chunk)
    assert out == lines(20, 30) and lost == 30
    assert not spool.has_backlog() and spool.bytes == 0
    spool.close()
