"""Turning one run's measurements into the Markdown table, the target verdicts and the scaling plot.

Targets are ratios of phonevault to a peer measured in the same run, on the target size (6 GB when it was run,
else the largest regular size, which the table says). RSS growth compares phonevault's first-import peak RSS at
the smallest and largest regular sizes. A target whose inputs are missing (a peer skipped or failed) is "n/a".
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from suite import CHECK, DAY2, FIRST, ONE, RESTORE, STEPS, UNCHANGED

GB = 2**30


@dataclass(frozen=True, slots=True)
class Target:
    what: str
    ours: float | None
    theirs: float | None
    limit: float
    peer: str
    unit: str = "s"

    @property
    def ratio(self) -> float | None:
        return self.ours / self.theirs if self.ours is not None and self.theirs else None

    @property
    def verdict(self) -> str:
        return "n/a" if self.ratio is None else ("pass" if self.ratio <= self.limit else "miss")


def _wall(size: dict, tool: str, step: str) -> float | None:
    m = size.get("tools", {}).get(tool, {}).get("steps", {}).get(step)
    return m["wall_s"] if m and m.get("ok") else None


def _rss(size: dict, tool: str, step: str = FIRST) -> float | None:
    m = size.get("tools", {}).get(tool, {}).get("steps", {}).get(step)
    return m["peak_rss_mb"] if m else None


def regular(results: dict) -> list[dict]:
    return [s for s in results["sizes"] if not s["many_files"]]


def target_size(results: dict) -> dict | None:
    sizes = regular(results)
    six = [s for s in sizes if s["size"] == 6 * GB]
    return six[0] if six else (max(sizes, key=lambda s: s["size"]) if sizes else None)


def targets(results: dict) -> list[Target]:
    s = target_size(results)
    if s is None:
        return []
    cat = s["refs"]["cat"]["wall_s"]
    added = {t: s["tools"].get(t, {}).get("day2_added") for t in ("phonevault", "borg")}
    rows = [
        Target("first import vs borg create", _wall(s, "phonevault", FIRST), _wall(s, "borg", FIRST), 0.6, "borg"),
        Target("first import vs cat read", _wall(s, "phonevault", FIRST), cat, 2.5, "cat"),
        Target(
            "unchanged re-import vs borg", _wall(s, "phonevault", UNCHANGED), _wall(s, "borg", UNCHANGED), 0.5, "borg"
        ),
        Target("bytes added by day 2 vs borg-lz4", added["phonevault"], added["borg"], 0.35, "borg", "B"),
        Target(
            "full export vs restic restore", _wall(s, "phonevault", RESTORE), _wall(s, "restic", RESTORE), 0.7, "restic"
        ),
        Target("single-file extract vs restic", _wall(s, "phonevault", ONE), _wall(s, "restic", ONE), 0.25, "restic"),
        Target("peak RSS (first import) vs restic", _rss(s, "phonevault"), _rss(s, "restic"), 0.8, "restic", "MB"),
    ]
    sizes = regular(results)
    if len(sizes) >= 2:
        lo, hi = min(sizes, key=lambda x: x["size"]), max(sizes, key=lambda x: x["size"])
        what = f"peak RSS growth {lo['label']} → {hi['label']}"
        rows.append(Target(what, _rss(hi, "phonevault"), _rss(lo, "phonevault"), 1.15, "itself", "MB"))
    return rows


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "B":
        return f"{value / 1e6:,.1f} MB"
    return f"{value:,.1f} {unit}" if unit == "MB" else f"{value:,.2f} s"


def _cell(m: dict | None) -> str:
    if not m:
        return "—"
    parts = [f"{m['wall_s']:.2f} s"]
    if m.get("mbps"):
        parts.append(f"{m['mbps']:.0f} MB/s")
    parts.append(f"{m['peak_rss_mb']:.0f} MB RSS")
    parts.append(f"{m['cpu_s']:.1f} s CPU")
    text = " · ".join(parts)
    return text if m.get("ok", True) else f"{text} **✗ {m.get('note', '')}**"


def size_table(s: dict) -> list[str]:
    tools = list(s["tools"])
    lines = [
        f"### {s['label']}: {s['bytes_day0'] / 1e9:.2f} GB, {s['files_day0']:,} files on day 0 "
        f"({s['bytes_day2'] / 1e9:.2f} GB on day 2)",
        "",
        "| step | " + " | ".join(tools) + " |",
        "|---|" + "---|" * len(tools),
    ]
    for step in STEPS:
        lines.append(f"| {step} | " + " | ".join(_cell(s["tools"][t].get("steps", {}).get(step)) for t in tools) + " |")
    for key, label in (("repo_after_first", "repository after first backup"), ("day2_added", "bytes added by day 2")):
        cells = [_fmt(s["tools"][t].get(key), "B") for t in tools]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    errors = [f"{t}: {s['tools'][t]['error']}" for t in tools if s["tools"][t].get("error")]
    lines += ["", f"References: read every file (`cat`) {_cell(s['refs']['cat'])}; `cp -r` {_cell(s['refs']['cp'])}."]
    lines += [f"Failed: {e}" for e in errors]
    return lines + [""]


def targets_table(results: dict) -> list[str]:
    s = target_size(results)
    rows = targets(results)
    if not rows or s is None:
        return []
    lines = [
        f"### Targets ({s['label']} case; ratios measured in the same run)",
        "",
        "| target | phonevault | peer | ratio | limit | result |",
        "|---|---|---|---|---|---|",
    ]
    for t in rows:
        ratio = "—" if t.ratio is None else f"{t.ratio:.2f}"
        lines.append(
            f"| {t.what} | {_fmt(t.ours, t.unit)} | {t.peer} {_fmt(t.theirs, t.unit)} | {ratio} | "
            f"≤ {t.limit:g}× | {t.verdict} |"
        )
    return lines + [""]


def scaling_table(results: dict) -> list[str]:
    lines = [
        "### Scaling (phonevault; peers' first backup for comparison)",
        "",
        "| case | GB | files | import s | MB/s | RSS MB | unchanged s | day-2 s | export s | extract s | check s "
        "| restic backup s / RSS MB | borg create s / RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in results["sizes"]:
        pv = s["tools"].get("phonevault", {}).get("steps", {})
        first = pv.get(FIRST) or {}
        cells = [
            s["label"],
            f"{s['bytes_day0'] / 1e9:.2f}",
            f"{s['files_day0']:,}",
            _n(first.get("wall_s")),
            _n(first.get("mbps"), 0),
            _n(first.get("peak_rss_mb"), 0),
            *(_n((pv.get(k) or {}).get("wall_s")) for k in (UNCHANGED, DAY2, RESTORE, ONE, CHECK)),
            *(_peer(s, t) for t in ("restic", "borg")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _n(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def _peer(s: dict, tool: str) -> str:
    m = s["tools"].get(tool, {}).get("steps", {}).get(FIRST)
    return f"{m['wall_s']:.1f} / {m['peak_rss_mb']:.0f}" if m else "—"


def device_table(results: dict) -> list[str]:
    d = results.get("device")
    if not d:
        return []
    lines = [
        f"### Device path ({d['size']} emulated phone, {d.get('phone_bytes', 0) / 1e9:.2f} GB, over usbmux/lockdown/TLS)",
        "",
        "| client | backup |",
        "|---|---|",
    ]
    if d.get("error"):
        return lines + [f"| — | failed: {d['error']} |", ""]
    for name, label in (("phonevault", "`phonevault backup` (into a vault)"),
                        ("pymobiledevice3", "`pymobiledevice3 backup2 backup --full` (plain folder)")):  # fmt: skip
        m = d.get(name) or {}
        lines.append(f"| {label} | {m['error'] if 'error' in m else _cell(m)} |")
    return lines + [""]


def markdown(results: dict) -> str:
    m = results["machine"]
    head = [
        f"## Results {results['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']:.0f} GiB RAM, {m['kernel']}; Python {m['python']}; "
        f"{', '.join(f'{k} {v}' for k, v in results['versions'].items())} (commit {results.get('commit', '?')}).",
        f"Cache: {'cold (page cache dropped before every step)' if results['cold'] else '**warm** (could not drop caches)'}. "
        f"Cells: wall time · throughput · peak RSS · CPU seconds (user+system). Command: `{results['command']}`.",
        "",
    ]
    notes = [f"- {n}" for n in results.get("notes", [])]
    body = targets_table(results) + [ln for s in results["sizes"] for ln in size_table(s)]
    body += scaling_table(results) + device_table(results)
    return "\n".join(head + (notes + [""] if notes else []) + body)


def plot(results: dict, path: Path) -> str:
    """A PNG of first-backup time and peak RSS against size; '' on success, else why it was skipped."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], capture_output=True)
        if r.returncode != 0:
            return "matplotlib could not be installed; no plot"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(regular(results), key=lambda s: s["size"])
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for tool in ("phonevault", "restic", "borg"):
        pts = [(s["bytes_day0"] / 1e9, s["tools"][tool]["steps"][FIRST]) for s in sizes
               if FIRST in s["tools"].get(tool, {}).get("steps", {})]  # fmt: skip
        if pts:
            ax_t.plot([p[0] for p in pts], [p[1]["wall_s"] for p in pts], "o-", label=tool)
            ax_m.plot([p[0] for p in pts], [p[1]["peak_rss_mb"] for p in pts], "o-", label=tool)
    ax_t.set(xlabel="backup folder (GB)", ylabel="first backup (s)", title="time")
    ax_m.set(xlabel="backup folder (GB)", ylabel="peak RSS (MB)", title="memory")
    for ax in (ax_t, ax_m):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return ""
