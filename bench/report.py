"""Render a run's results: a Markdown report with ratios and SPEC section 8 verdicts,
and a PNG chart of cache-hit throughput."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from bench import floors
from bench.run import LINKS, PLAIN_CLIENT

NOTE = (
    "Medians of alternating rounds (A B C, A B C, ...) on a 2-core machine: expect noise "
    "of ±10-20 % in req/s. wrk (2 threads) is the load generator in its own process, and "
    "its own CPU is reported in cores (2.00 would mean wrk was the bottleneck). On two "
    "cores shared by wrk and the server, req/s depends on how much CPU wrk takes, so CPU "
    "time per request of each server (user + system of its processes, from /proc) is the "
    "figure to judge by. Every request carries a real client's headers (table below); "
    "both caches were checked to answer HIT for exactly those headers, in the same "
    "coding. Every server runs 1 worker unless marked x2."
)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "n/a"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT met")


def _cpu(summary: Any) -> str:
    cpu = getattr(summary, "cpu_us", None)
    return "-" if cpu is None else f"{cpu:.0f}"


def _wrk(*summaries: Any) -> str:
    return " / ".join(f"{getattr(s, 'wrk_cores', 0.0):.2f}" for s in summaries)


def headers_table(hits: dict[str, Any]) -> list[str]:
    """What each workload sends, and the coding both caches answered HIT in."""
    lines = ["| workload | request headers (a real client's) | hits' coding |", "|---|---|---|"]
    for name, headers in hits.get("headers", {}).items():
        sent = "; ".join(f"`{k}: {v}`" for k, v in headers.items())
        lines.append(f"| {name} | {sent} | {hits.get('codings', {}).get(name, '?')} |")
    return lines


def hits_table(hits: dict[str, Any]) -> list[str]:
    lines = [
        "| workload | body | proxy req/s | nginx req/s | Orthanc req/s | proxy/nginx "
        "| proxy/direct | CPU µs/req proxy / nginx / Orthanc | wrk cores "
        "| p50 ms proxy / nginx / Orthanc | p99 ms proxy / nginx / Orthanc |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, by_target in hits["results"].items():
        p, n, o = by_target["proxy"], by_target["nginx"], by_target["orthanc"]
        lines.append(
            f"| {name} | {hits['sizes'][name] / 1024:.0f} KiB | {p.rps:.0f} | {n.rps:.0f} "
            f"| {o.rps:.0f} | {_ratio(p.rps, n.rps)} | {_ratio(p.rps, o.rps)} "
            f"| {_cpu(p)} / {_cpu(n)} / {_cpu(o)} | {_wrk(p, n, o)} "
            f"| {p.p50_ms:.2f} / {n.p50_ms:.2f} / {o.p50_ms:.2f} "
            f"| {p.p99_ms:.2f} / {n.p99_ms:.2f} / {o.p99_ms:.2f} |"
        )
    return lines


FLOOR = floors.NAME
FLOOR_NOTE = (
    "The floor (`bench/floors.py`), measured in the same alternating rounds: the least a "
    "Python server does of the same work. For hits, an asyncio protocol that answers every "
    "request with the proxy's answer by `sendfile`, parsing nothing and keeping no cache, "
    "metrics or log; for pass-through, a bare aiohttp relay (path and `Accept` through, "
    "the body streamed back). What the proxy costs above it is its own work; what the "
    "floor costs above nginx is Python's, and no change to the proxy takes it away."
)


def floor_table(
    rows: dict[str, dict[str, Any]], ours: str, theirs: str, *, note: bool = True
) -> list[str]:
    """Proxy, nginx and the floor side by side, for the rows that ran the floor."""
    lines = [
        FLOOR_NOTE if note else "The floor, as in section 1:",
        "",
        "| workload | req/s proxy / nginx / floor | CPU µs/req proxy / nginx / floor |",
        "|---|---|---|",
    ]
    for name, by_target in rows.items():
        if name.startswith("added") or FLOOR not in by_target:
            continue
        p, n, f = by_target[ours], by_target[theirs], by_target[FLOOR]
        lines.append(
            f"| {name} | {p.rps:.0f} / {n.rps:.0f} / {f.rps:.0f} "
            f"| {_cpu(p)} / {_cpu(n)} / {_cpu(f)} |"
        )
    return lines


def workers_table(workers: dict[str, Any] | None) -> list[str]:
    if workers is None:
        return ["2 workers vs 2 nginx workers: n/a (`--workers` does not fork in this build)."]
    lines = [
        "| workload (2 workers each) | proxy x2 req/s | nginx x2 req/s | proxy/nginx "
        "| CPU µs/req proxy / nginx | wrk cores |",
        "|---|---|---|---|---|---|",
    ]
    for name, by_target in workers.items():
        p, n = by_target["proxy x2"], by_target["nginx x2"]
        lines.append(
            f"| {name} | {p.rps:.0f} | {n.rps:.0f} | {_ratio(p.rps, n.rps)} "
            f"| {_cpu(p)} / {_cpu(n)} | {_wrk(p, n)} |"
        )
    return lines


def pass_table(passing: dict[str, Any]) -> list[str]:
    lines = [
        "| pass-through | proxy --no-cache | nginx, no cache | Orthanc direct "
        "| proxy / direct | nginx / direct | CPU µs/req proxy / nginx / Orthanc | wrk cores "
        "| p50 ms proxy / nginx / direct |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, by_target in passing.items():
        if name.startswith("added"):
            continue
        p, o = by_target["proxy --no-cache"], by_target["orthanc"]
        n = by_target["nginx, no cache"]
        lines.append(
            f"| {name} | {p.rps:.0f} req/s | {n.rps:.0f} req/s | {o.rps:.0f} req/s "
            f"| {_ratio(p.rps, o.rps)} | {_ratio(n.rps, o.rps)} "
            f"| {_cpu(p)} / {_cpu(n)} / {_cpu(o)} | {_wrk(p, n, o)} "
            f"| {p.p50_ms:.2f} / {n.p50_ms:.2f} / {o.p50_ms:.2f} |"
        )
    lines += ["", *added_table(passing["added"], ORTHANC_PAIRS)]
    if "added_instant" in passing:
        lines += ["", *added_table(passing["added_instant"], INSTANT_PAIRS)]
    return lines


ORTHANC_PAIRS = (
    "Added latency for study metadata, measured in pairs (`bench/paired.py`: the same "
    "request straight to Orthanc and through the target, back to back; the median "
    "difference, averaged over both orders; Orthanc's own time drifts by milliseconds "
    "between the rounds above, and from one connection to another):"
)
INSTANT_PAIRS = (
    "The same pairs in front of an origin that answers Orthanc's metadata instantly "
    "(`bench/instant.py`), so that what is measured is the intermediary's own time; "
    "the SPEC target is judged on this one:"
)


def added_table(added: dict[str, dict[str, Any]], title: str) -> list[str]:
    """bench.paired: the same metadata request direct and through, back to back."""
    lines = [
        title,
        "",
        "| target | pairs | added p50 ms | p25 / p75 ms |",
        "|---|---|---|---|",
    ]
    for name, row in added.items():
        lines.append(
            f"| {name} | {row['pairs']} | {row['median_ms']:+.2f} "
            f"| {row['p25_ms']:+.2f} / {row['p75_ms']:+.2f} |"
        )
    return lines


def burst_table(burst: dict[str, Any]) -> list[str]:
    lines = [
        "| target | clients | requests reaching Orthanc (max over rounds) | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for name, row in burst.items():
        lines.append(
            f"| {name} | {row['clients']} | {row['upstream']} | {row['p50_ms']:.0f} "
            f"| {row['p99_ms']:.0f} |"
        )
    return lines


def wan_table(wan: dict[str, Any]) -> list[str]:
    size = f"{wan['instances']} instances of {wan['rows']}×{wan['rows']}×16-bit"
    prefetch = "n/a" if wan["prefetch"] is None else f"{wan['prefetch']:.2f} s"
    slices = "n/a" if wan["direct_slices"] is None else f"{wan['direct_slices']:.2f} s"
    speedup = "n/a" if wan["prefetch"] is None else _ratio(wan["direct_slices"], wan["prefetch"])
    return [
        f"Study: {size}; metadata first, then instances 6 at a time (a viewer).",
        "",
        "| load | time | speed-up vs direct |",
        "|---|---|---|",
        f"| direct over the WAN | {wan['direct']:.2f} s | 1.00× |",
        f"| proxy, cold | {wan['cold']:.2f} s | {_ratio(wan['direct'], wan['cold'])} |",
        f"| proxy, warm | {wan['warm']:.2f} s | {_ratio(wan['direct'], wan['warm'])} |",
        f"| slice by slice, direct | {slices} | {'n/a' if slices == 'n/a' else '1.00×'} |",
        f"| slice by slice, proxy `--prefetch series`, cold | {prefetch} | {speedup} |",
        "",
        *wan_metadata_table(wan.get("metadata", {})),
    ]


def wan_metadata_table(metadata: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Study metadata cold: the proxy asks the upstream for gzip whatever the client
    asks; by link model (``bench.wan``), then client."""
    lines = [
        "Study metadata cold (the proxy's cache emptied before each request; a new connection"
        " each): the proxy asks Orthanc for gzip over the WAN whatever the client asks. On"
        " the emulated link of the rows above, and on one that also keeps each connection's"
        " TCP congestion window (`bench/wan.py --slow-start`: 10 segments at first, doubled"
        " per round trip, restarted after an idle), which loopback TCP between the relay and"
        " its ends never limits.",
        "",
        "| link | client | direct | proxy, cold | speed-up | KiB direct / from the proxy |",
        "|---|---|---|---|---|---|",
    ]
    for link, rows in metadata.items():
        for name, row in rows.items():
            lines.append(
                f"| {link} | {name} | {row['direct']:.3f} s | {row['cold']:.3f} s "
                f"| {_ratio(row['direct'], row['cold'])} "
                f"| {row['direct_bytes'] / 1024:.0f} / {row['cold_bytes'] / 1024:.0f} |"
            )
    return lines


def rss_table(rss: list[dict[str, Any]]) -> list[str]:
    lines = ["| case | GiB | MiB/s | peak RSS MiB |", "|---|---|---|---|"]
    for row in rss:
        lines.append(f"| {row['case']} | {row['GiB']} | {row['MiB/s']} | {row['peak RSS MiB']} |")
    return lines


def stow_table(stow: dict[str, Any]) -> list[str]:
    mode = (
        "batched by the proxy"
        if stow["batching"]
        else "plain pass-through (this build does not split POST /studies into batches)"
    )
    secs, rates, done = stow["seconds"], stow["mib_s"], stow["complete"]
    return [
        f"{stow['bytes'] / 1024**2:.0f} MiB, {stow['instances']} instances; "
        f"through the proxy: {mode}.",
        "",
        "| STOW | seconds | MiB/s | every instance stored |",
        "|---|---|---|---|",
        f"| proxy | {secs['proxy']:.2f} | {rates['proxy']:.0f} | {done['proxy']} |",
        f"| one direct POST | {secs['orthanc']:.2f} | {rates['orthanc']:.0f} | {done['orthanc']} |",
    ]


def targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each SPEC section 8 line."""
    found = results["hits"]["results"]
    hit = found["512 KiB instances"]
    p, n, o = hit["proxy"].rps, hit["nginx"].rps, hit["orthanc"].rps
    cpu_p, cpu_n = hit["proxy"].cpu_us, hit["nginx"].cpu_us
    small = {
        name: found[name]["proxy"].rps / found[name]["nginx"].rps for name in SMALL if name in found
    }
    two = results["hits"]["workers2"] or {}
    two_hit = two.get("512 KiB instances")
    two_ratio = two_hit["proxy x2"].rps / two_hit["nginx x2"].rps if two_hit else None
    nginx_pass = passing_ratio(results["pass"]["512 KiB instances"], "nginx, no cache")
    passing = results["pass"]
    through = passing["512 KiB instances"]
    instant = "added_instant" in passing
    added = passing["added_instant" if instant else "added"]["proxy --no-cache"]["median_ms"]
    origin = "instant origin" if instant else "in front of Orthanc"
    peak = max(row["peak RSS MiB"] for row in results["rss"])
    wan, stow = results["wan"], results["stow"]
    warm = wan["direct"] / wan["warm"]
    prefetch = None if wan["prefetch"] is None else wan["direct_slices"] / wan["prefetch"]
    plain = {link: rows[PLAIN_CLIENT] for link, rows in wan.get("metadata", {}).items()}
    speedups = {link: row["direct"] / row["cold"] for link, row in plain.items()}
    metadata = speedups.get(WAN_JUDGED)
    metadata_text = " / ".join(f"{value:.1f}× ({link})" for link, value in speedups.items())
    stow_ratio = stow["mib_s"]["proxy"] / stow["mib_s"]["orthanc"]
    tp, to = through["proxy --no-cache"].rps, through["orthanc"].rps
    cpu_ok = None if cpu_p is None or cpu_n is None else cpu_p <= cpu_n
    cpu_text = "n/a" if cpu_ok is None else f"{cpu_p:.0f} vs {cpu_n:.0f} µs"
    if FLOOR in hit and hit[FLOOR].cpu_us is not None:
        cpu_text += f" (Python floor {hit[FLOOR].cpu_us:.0f})"
    pass_text = f"{tp / to:.2f}× vs {nginx_pass:.2f}×"
    if FLOOR in through:
        pass_text += f" (Python floor {through[FLOOR].rps / to:.2f}×)"
    return [
        ("hit 512 KiB: CPU per request ≤ nginx's", cpu_text, _verdict(cpu_ok)),
        ("hit 512 KiB ≥ 0.8 × nginx, 1 worker", f"{p / n:.2f}×", _verdict(p / n >= 0.8)),
        (
            "hit 512 KiB ≥ 0.8 × nginx, 2 workers",
            "n/a" if two_ratio is None else f"{two_ratio:.2f}×",
            _verdict(None if two_ratio is None else two_ratio >= 0.8),
        ),
        ("hit 512 KiB ≥ 1.0 × nginx (stretch)", f"{p / n:.2f}×", _verdict(p / n >= 1.0)),
        ("hit 512 KiB ≥ 2 × Orthanc direct", f"{p / o:.2f}×", _verdict(p / o >= 2)),
        *(
            (f"hit {name} ≥ 0.3 × nginx (aim 0.5)", f"{ratio:.2f}×", _verdict(ratio >= 0.3))
            for name, ratio in small.items()
        ),
        (
            "pass-through ≥ nginx's own pass-through ratio",
            pass_text,
            _verdict(tp / to >= nginx_pass),
        ),
        ("pass-through ≥ 0.9 × direct (goal)", f"{tp / to:.2f}×", _verdict(tp / to >= 0.9)),
        (f"added p50, study metadata ≤ 2 ms ({origin})", f"{added:+.2f} ms", _verdict(added <= 2)),
        ("RSS < 200 MiB, 2 GiB retrieve + STOW", f"{peak:.0f} MiB", _verdict(peak < 200)),
        ("WAN warm load ≥ 10 × direct", f"{warm:.1f}×", _verdict(warm >= 10)),
        (
            "WAN cold slice-by-slice, --prefetch series ≥ 2 × direct",
            "n/a" if prefetch is None else f"{prefetch:.1f}×",
            _verdict(None if prefetch is None else prefetch >= 2),
        ),
        (
            "WAN study metadata cold ≥ 3 × direct (upstream gzips; client asks no coding)",
            metadata_text or "n/a",
            _verdict(None if metadata is None else metadata >= 3),
        ),
        (
            "STOW split into batches, all stored, ≥ 0.9 × direct",
            f"{stow_ratio:.2f}×{'' if stow['batching'] else ' (not batched)'}",
            _verdict(
                stow["batching"] and all(stow["complete"].values()) and stow_ratio >= 0.9
                if stow["batching"]
                else None
            ),
        ),
    ]


SMALL = ("64 KiB instances", "study metadata (JSON)")
# Judged on the link that keeps TCP's congestion window, as a WAN does.
WAN_JUDGED = LINKS[1]


def passing_ratio(through: dict[str, Any], name: str) -> float:
    return float(through[name].rps / through["orthanc"].rps)


def markdown(results: dict[str, Any], command: str) -> str:
    plan = results["plan"]
    lines = [
        "# Benchmark: dicomweb-proxy vs nginx proxy_cache vs Orthanc direct",
        "",
        f"`{command}` — {results['started']}, {results['minutes']} min, "
        f"{platform.machine()} {platform.system()}, Python {platform.python_version()}; "
        f"{plan['rounds']} rounds × {plan['seconds']:.0f} s per target, "
        f"{plan['connections']} connections{' (QUICK: smoke only)' if plan['quick'] else ''}.",
        "",
        NOTE,
        "",
        "## SPEC section 8 targets",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in targets(results)),
        "",
        "## 1. Cache hits",
        "",
        *headers_table(results["hits"]),
        "",
        *hits_table(results["hits"]),
        "",
        *workers_table(results["hits"]["workers2"]),
        "",
        *floor_table(results["hits"]["results"], "proxy", "nginx"),
        "",
        "![cache-hit throughput](throughput.png)",
        "",
        "## 2. Miss / pass-through",
        "",
        *pass_table(results["pass"]),
        "",
        *floor_table(results["pass"], "proxy --no-cache", "nginx, no cache", note=False),
        "",
        "## 3. Concurrent misses for one instance (single flight)",
        "",
        *burst_table(results["burst"]),
        "",
        "## 4. Emulated WAN (50 ms RTT, 100 Mbit/s, user-space relay `bench/wan.py`)",
        "",
        *wan_table(results["wan"]),
        "",
        "## 5. Peak RSS while bodies stream through (synthetic origin)",
        "",
        *rss_table(results["rss"]),
        "",
        "## 6. Large STOW",
        "",
        *stow_table(results["stow"]),
        "",
    ]
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: hit req/s per workload for proxy, nginx and Orthanc."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hits = results["hits"]["results"]
    figure, axes = plt.subplots(1, len(hits), figsize=(4 * len(hits), 4))
    colours = {"proxy": "#2b6cb0", "nginx": "#38a169", "orthanc": "#a0aec0", FLOOR: "#ed8936"}
    for axis, (name, by_target) in zip(axes, hits.items(), strict=True):
        names = list(by_target)
        values = [by_target[target].rps for target in names]
        bars = axis.bar(names, values, color=[colours[target] for target in names])
        axis.bar_label(bars, fmt="%.0f", fontsize=8)
        axis.set_title(f"{name}\n({results['hits']['sizes'][name] / 1024:.0f} KiB)", fontsize=10)
        axis.set_ylabel("requests/s (cache hits)")
    figure.suptitle("Cache-hit throughput, 1 worker each, median of rounds")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
