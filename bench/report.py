"""Figures derived from a run (added latency, the gateway-board summary) and the Markdown report."""

from __future__ import annotations

from typing import Any

from bench.scenarios import SCENARIOS

Results = dict[str, Any]


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) else None


def _get(results: Results, target: str, scenario: str, level: int) -> dict[str, Any] | None:
    t = results["targets"].get(target, {})
    run: dict[str, Any] | None = t.get("scenarios", {}).get(scenario, {}).get(str(level))
    return run if run and "error" not in run else None


def added(value: float | None, base: float | None) -> str:
    if value is None or base is None:
        return "–"
    ratio = f" (×{value / base:.1f})" if base > 0 else ""
    return f"{value - base:+.2f}{ratio}"


def board(results: Results) -> dict[str, dict[str, Any]]:
    """What an independent gateway board reports, per target."""
    out: dict[str, dict[str, Any]] = {}
    for name, t in results["targets"].items():
        if t.get("status") != "ok":
            continue
        row: dict[str, Any] = {}
        chat1, base1 = _get(results, name, "chat", 1), _get(results, "direct", "chat", 1)
        if chat1 and base1:
            row["added_p50_c1_ms"] = round(chat1["p50_ms"] - base1["p50_ms"], 3)
            row["added_p99_c1_ms"] = round(chat1["p99_ms"] - base1["p99_ms"], 3)
        chat_runs = t.get("scenarios", {}).get("chat", {})
        ok = [r["rps"] for r in chat_runs.values() if "p99_ms" in r and r["p99_ms"] <= 20]
        if chat_runs:
            row["rps_at_p99_le_20ms"] = max(ok) if ok else 0
        s1, sb = _get(results, name, "stream", 1), _get(results, "direct", "stream", 1)
        if s1 and sb and s1.get("ttfb_ms") and sb.get("ttfb_ms"):
            row["added_ttfb_p50_c1_ms"] = round(s1["ttfb_ms"]["p50"] - sb["ttfb_ms"]["p50"], 3)
        gaps = [
            r["max_gap_ms"]["max"]
            for r in t.get("scenarios", {}).get("stream", {}).values()
            if r.get("max_gap_ms")
        ]
        if gaps:
            row["largest_gap_ms"] = max(gaps)
        bursts = t.get("scenarios", {}).get("stream-burst", {})
        if bursts:
            sustained = 0
            for level in sorted(bursts, key=int):
                r = bursts[level]
                if "error" in r or r.get("stalled") or r.get("errors"):
                    break
                sustained = int(level)
            row["streams_no_stall"] = sustained
        for key in ("rss_idle_mb", "rss_load_mb", "rss_after_mb"):
            if t.get(key) is not None:
                row[key] = t[key]
        if t.get("served") and t.get("rss_idle_mb") is not None and t.get("rss_after_mb"):
            # Growth from idle to after the load, per 100k requests or streams served.
            growth = (t["rss_after_mb"] - t["rss_idle_mb"]) * 1e5 / t["served"]
            row["rss_growth_mb_per_100k"] = round(growth, 2)
        out[name] = row
    return out


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def markdown(results: Results) -> str:
    meta = results["meta"]
    lines = [
        f"# Benchmark {meta['started']}",
        "",
        f"Machine: {meta['machine']}. Duration {meta['duration']} s per run, "
        f"{meta['repeats']} repeat(s) (median shown). Upstream: fake, {meta['upstream']}.",
        f"Stream stall = a gap over {meta['stall_ms']:g} ms between two frames, an error, or an "
        "early end. Latencies in ms; added = target minus direct, (×) = target / direct.",
        "",
    ]
    skipped = [(n, t) for n, t in results["targets"].items() if t.get("status") != "ok"]
    for name, t in skipped:
        lines.append(f"- **{name}** {t.get('status')}: {t.get('reason', '')}")
    if skipped:
        lines.append("")
    summary = results.get("board", {})
    if summary:
        lines += [
            "## Summary",
            "",
            "| target | added P50 / P99 at c=1 (chat) | req/s while P99 ≤ 20 ms | added TTFB "
            "(stream, c=1) | largest frame gap | streams with no stall | RSS idle / load / "
            "after MB | growth MB / 100k requests |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, row in summary.items():
            lines.append(
                f"| {name} | {_fmt(row.get('added_p50_c1_ms'), 3)} / "
                f"{_fmt(row.get('added_p99_c1_ms'), 3)} | {_fmt(row.get('rps_at_p99_le_20ms'), 0)}"
                f" | {_fmt(row.get('added_ttfb_p50_c1_ms'), 3)} | "
                f"{_fmt(row.get('largest_gap_ms'), 1)} | {_fmt(row.get('streams_no_stall'))} | "
                f"{_fmt(row.get('rss_idle_mb'), 1)} / {_fmt(row.get('rss_load_mb'), 1)} / "
                f"{_fmt(row.get('rss_after_mb'), 1)} | {_fmt(row.get('rss_growth_mb_per_100k'))} |"
            )
        lines.append("")
    soaks = [(n, t["soak"]) for n, t in results["targets"].items() if t.get("soak")]
    if soaks:
        lines += [
            "## soak: chat at c=16, RSS sampled every 5 s",
            "",
            "| target | seconds | req/s | errors | RSS start / end MB | largest process MB | "
            "trend over the second half, MB/min |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in soaks:
            if "error" in s:
                lines.append(f"| {name} | failed: {s['error'][:80]} |" + " |" * 5)
                continue
            lines.append(
                f"| {name} | {s['seconds']:g} | {_fmt(s['rps'], 0)} | {s['errors']} | "
                f"{_fmt(s['rss_start_mb'], 1)} / {_fmt(s['rss_end_mb'], 1)} | "
                f"{_fmt(s['rss_max_process_mb'], 1)} | {s['slope_mb_per_min']:+.3f} |"
            )
        lines.append("")
    for scenario in results["meta"]["scenarios"]:
        s = SCENARIOS[scenario]
        lines += [f"## {scenario}: {s.about}", ""]
        if s.kind == "wrk":
            lines += _wrk_table(results, scenario)
        elif s.kind == "stream":
            lines += _stream_table(results, scenario)
        else:
            lines += _burst_table(results, scenario)
        lines.append("")
    return "\n".join(lines)


def _levels(results: Results, scenario: str) -> list[str]:
    seen: set[str] = set()
    for t in results["targets"].values():
        seen |= set(t.get("scenarios", {}).get(scenario, {}))
    return sorted(seen, key=int)


def _runs(results: Results, scenario: str) -> list[tuple[str, str, dict[str, Any]]]:
    rows = []
    for level in _levels(results, scenario):
        for name, t in results["targets"].items():
            run = t.get("scenarios", {}).get(scenario, {}).get(level)
            if run is not None:
                rows.append((name, level, run))
    return rows


def _wrk_table(results: Results, scenario: str) -> list[str]:
    lines = [
        "| target | c | req/s | % of nginx | P50 | P90 | P99 | errors | added P50 | added P99 | "
        "CPU cores | CPU µs/req | RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, level, r in _runs(results, scenario):
        if "error" in r:
            lines.append(f"| {name} | {level} | failed: {r['error'][:80]} |" + " |" * 10)
            continue
        base = _get(results, "direct", scenario, int(level)) or {}
        ngx = _get(results, "nginx", scenario, int(level)) or {}
        share = f"{100 * r['rps'] / ngx['rps']:.0f}%" if ngx.get("rps") else "–"
        lines.append(
            f"| {name} | {level} | {_fmt(r['rps'], 0)} | {share} | {r['p50_ms']:.3f} | "
            f"{r['p90_ms']:.3f} | {r['p99_ms']:.3f} | {r['errors']} | "
            f"{added(r['p50_ms'], _num(base.get('p50_ms')))} | "
            f"{added(r['p99_ms'], _num(base.get('p99_ms')))} | "
            f"{_fmt(r.get('cpu_cores'))} | {_fmt(r.get('cpu_us_per_request'), 0)} | "
            f"{_fmt(r.get('rss_mb'), 1)} |"
        )
    return lines


def _stream_table(results: Results, scenario: str) -> list[str]:
    lines = [
        "| target | c | streams/s | TTFB P50 / P99 | added TTFB P50 | last event P50 / P99 | "
        "largest gap | errors | CPU cores | RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, level, r in _runs(results, scenario):
        if "error" in r or not r.get("ttfb_ms"):
            reason = r.get("error") or r.get("first_error", "no stream completed")
            lines.append(f"| {name} | {level} | failed: {str(reason)[:80]} |" + " |" * 7)
            continue
        base = _get(results, "direct", scenario, int(level)) or {}
        b = base.get("ttfb_ms") or {}
        t, tot = r["ttfb_ms"], r["total_ms"]
        lines.append(
            f"| {name} | {level} | {r['streams_per_s']} | {t['p50']:.3f} / {t['p99']:.3f} | "
            f"{added(t['p50'], _num(b.get('p50')))} | {tot['p50']:.1f} / {tot['p99']:.1f} | "
            f"{r['max_gap_ms']['max']:.1f} | {r['errors']} | {_fmt(r.get('cpu_cores'))} | "
            f"{_fmt(r.get('rss_mb'), 1)} |"
        )
    return lines


def _burst_table(results: Results, scenario: str) -> list[str]:
    lines = [
        "| target | streams at once | stalled | errors | TTFB P50 / P99 | last event P99 | "
        "largest gap P99 / max | CPU cores | RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, level, r in _runs(results, scenario):
        if "error" in r or not r.get("ttfb_ms"):
            reason = r.get("error") or r.get("first_error", "no stream completed")
            lines.append(f"| {name} | {level} | failed: {str(reason)[:80]} |" + " |" * 6)
            continue
        t, g = r["ttfb_ms"], r["max_gap_ms"]
        lines.append(
            f"| {name} | {level} | {r['stalled']} | {r['errors']} | {t['p50']:.1f} / "
            f"{t['p99']:.1f} | {r['total_ms']['p99']:.1f} | {g['p99']:.1f} / {g['max']:.1f} | "
            f"{_fmt(r.get('cpu_cores'))} | {_fmt(r.get('rss_mb'), 1)} |"
        )
    return lines
