"""Turning measurements into the Markdown tables, the target verdicts and the scaling plot; merging split runs.

Cases. A results file holds `sizes` (folder cases: `kind` "size" for a phone of a given size, "many" for a
`--many-files-size` phone with N small plists) and `devices` (device backups from the emulator), each with its own
commit, date, load average and machine, because a long benchmark may be run in pieces and merged (`merge`, or
`python benchmarks/report.py A.json B.json --out STEM`): only cases of one commit are merged, a case measured again
replaces the older one.

Series. The size series is the "size" cases, smallest to largest folder; the files series is the "many" cases plus
the "size" case of the same phone size (its ~33 000 files are the series' smallest point), by number of files.
For each, the scaling table gives wall time and peak RSS of import, unchanged re-import, export and check
--read-data for every tool, the flatness ratio largest ÷ smallest (the largest case's figure over the smallest's),
and phonevault ÷ restic at the series' reference case (6 GB, and 300 000 files, else the largest of the series).

Targets (issue 11) are ratios of phonevault to a peer or to itself measured in the same run (same commit, for
merged runs); a target whose inputs are missing (a peer skipped or failed, a series of one case) is "n/a".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from suite import CHECK, FIRST, ONE, RESTORE, STEPS, UNCHANGED

GB = 2**30
FLAT = 1.15
SERIES_STEPS = ((FIRST, "import / backup"), (UNCHANGED, "unchanged re-import"), (RESTORE, "export / restore"),
                (CHECK, "check --read-data"))  # fmt: skip
RSS_STEPS = (FIRST, RESTORE, CHECK)  # the steps whose peak RSS issue 11 wants flat and below restic's


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


# ------------------------------------------------------------------------------------------------ reading


def kind(case: dict) -> str:
    return case.get("kind") or ("many" if case.get("many_files") else "size")


def devices(results: dict) -> list[dict]:
    """Device cases; a file from before split runs has one `device` dict."""
    if results.get("devices"):
        return results["devices"]
    d = results.get("device")
    return [{"label": f"device-{d.get('size', '?')}", "kind": "device", "device_size": d.get("size"), **d}] if d else []


def _step(case: dict, tool: str, step: str) -> dict | None:
    return case.get("tools", {}).get(tool, {}).get("steps", {}).get(step)


def _wall(case: dict | None, tool: str, step: str) -> float | None:
    m = _step(case, tool, step) if case else None
    return m["wall_s"] if m and m.get("ok") else None


def _rss(case: dict | None, tool: str, step: str = FIRST) -> float | None:
    m = _step(case, tool, step) if case else None
    return m["peak_rss_mb"] if m and m.get("ok") else None


def regular(results: dict) -> list[dict]:
    return sorted((s for s in results["sizes"] if kind(s) == "size"), key=lambda s: s["size"])


def files_series(results: dict) -> list[dict]:
    many = [s for s in results["sizes"] if kind(s) == "many"]
    if not many:
        return []
    base = [s for s in regular(results) if s["size"] == many[0]["size"]]
    return sorted(base + many, key=lambda s: s["files_day0"])


def target_size(results: dict) -> dict | None:
    sizes = regular(results)
    six = [s for s in sizes if s["size"] == 6 * GB]
    return six[0] if six else (sizes[-1] if sizes else None)


def target_many(results: dict) -> dict | None:
    many = [s for s in files_series(results) if kind(s) == "many"]
    three = [s for s in many if s["many_files"] == 300_000]
    return three[0] if three else (many[-1] if many else None)


# ------------------------------------------------------------------------------------------------ merging


class MixedCommits(ValueError):
    """Results of different commits cannot share a table: the ratios would compare different code."""


MEASURED = ("store", "sync", "cli")  # what run.py freezes and measures (run.freeze_and_reexec)


def same_code(commits: list[str], repo: Path = Path(__file__).parent) -> bool:
    """Whether the commits hold the same measured code (git trees of MEASURED), so their cases may share a table
    (a commit that changed only docs between two pieces of a run). A live working tree's run never matches."""
    trees = set()
    for commit in commits:
        if " " in commit or commit in ("?", "None"):
            return False
        got = subprocess.run(["git", "-C", str(repo), "rev-parse", *(f"{commit}:{d}" for d in MEASURED)],
                             capture_output=True, text=True)  # fmt: skip
        if got.returncode != 0:
            return False
        trees.add(got.stdout)
    return len(trees) == 1


def merge(runs: list[dict]) -> dict:
    """One results dict from several of the same commit (or of commits with the same measured code, `same_code`): the first's header, every run's notes once, and each
    case by label (a later run's case replaces an earlier one's)."""
    commits = list(dict.fromkeys(str(r.get("commit")) for r in runs))
    if len(commits) > 1 and not same_code(commits):
        raise MixedCommits(
            f"results of different commits ({', '.join(sorted(commits))}) are not merged: their measured code "
            f"({', '.join(MEASURED)}) differs"
        )
    out = {k: v for k, v in runs[0].items() if k not in ("sizes", "devices", "device", "notes")}
    if len(commits) > 1:
        out["commit"] = " = ".join(commits) + f" (the same {', '.join(MEASURED)})"
    notes: list[str] = []
    sizes: dict[str, dict] = {}
    devs: dict[str, dict] = {}
    for r in runs:
        notes += [n for n in r.get("notes", []) if n not in notes]
        sizes |= {s["label"]: s for s in r.get("sizes", [])}
        devs |= {d["label"]: d for d in devices(r)}
    commands = [r["command"] for r in runs if r.get("command")]
    out |= {"notes": notes, "sizes": list(sizes.values()), "devices": list(devs.values())}
    out["command"] = " ; ".join(dict.fromkeys(commands)) if commands else out.get("command", "")
    return out


# ------------------------------------------------------------------------------------------------ targets


def targets(results: dict) -> list[tuple[str, Target]]:
    """(case label, target) for each of issue 11's targets this run can judge."""
    rows: list[tuple[str, Target]] = []
    m = target_many(results)
    if m is not None:
        for step, what in (
            (FIRST, "import"),
            (RESTORE, "export (restic: restore)"),
            (UNCHANGED, "unchanged re-import"),
        ):
            rows.append((m["label"], Target(f"{what} time vs restic", _wall(m, "phonevault", step),
                                            _wall(m, "restic", step), 1.0, "restic")))  # fmt: skip
        rows += _rss_vs_restic(m)
    s = target_size(results)
    if s is not None:
        rows += _rss_vs_restic(s)
        cp = (s.get("refs") or {}).get("cp", {}).get("wall_s")
        first = _wall(s, "phonevault", FIRST)
        floor = s.get("day2_new_media")
        beyond = {t: (a - floor if (a := s["tools"].get(t, {}).get("day2_added")) is not None and floor is not None
                      else None) for t in ("phonevault", "borg")}  # fmt: skip
        label = s["label"]
        rows.append((label, Target("first import vs `cp -r`", first, cp, 1.3, "cp -r")))
        for what, step, peer, limit in (
            ("first import vs borg create", FIRST, "borg", 0.5),
            ("full export vs restic restore", RESTORE, "restic", 0.7),
            ("one photo vs restic", ONE, "restic", 0.25),
            ("unchanged re-import vs borg", UNCHANGED, "borg", 0.5),
        ):
            rows.append((label, Target(what, _wall(s, "phonevault", step), _wall(s, peer, step), limit, peer)))
        rows.append((label, Target("day-2 bytes beyond the new media vs borg-lz4", beyond["phonevault"],
                                   beyond["borg"], 0.35, "borg", "B")))  # fmt: skip
    for name, series in (("size", regular(results)), ("files", files_series(results))):
        if len(series) < 2:
            continue
        lo, hi = series[0], series[-1]
        for step in RSS_STEPS:
            what = f"peak RSS of {_name(step)} flat, {lo['label']} → {hi['label']}"
            rows.append((name, Target(what, _rss(hi, "phonevault", step), _rss(lo, "phonevault", step), FLAT,
                                      "itself", "MB")))  # fmt: skip
    for name, series in device_series(results):
        lo, hi = (d.get("phonevault") or {} for d in (series[0], series[-1]))
        what = f"peak RSS of device backup flat, {series[0]['label']} → {series[-1]['label']}"
        rows.append((name, Target(what, hi.get("peak_rss_mb"), lo.get("peak_rss_mb"), FLAT, "itself", "MB")))
    return rows


def device_series(results: dict) -> list[tuple[str, list[dict]]]:
    """The device cases as the regular ones: over size (the `device-SIZE` cases) and over the number of files
    (`device-many-N`, from the `device-SIZE` case of the same phone size), each of two cases or more."""
    devs = devices(results)
    by_size = sorted((d for d in devs if not d.get("many_files")), key=lambda d: d.get("phone_bytes", 0))
    many = sorted((d for d in devs if d.get("many_files")), key=lambda d: d["many_files"])
    by_files = [d for d in by_size if many and d.get("size") == many[0].get("size")][:1] + many
    return [(name, s) for name, s in (("device size", by_size), ("device files", by_files)) if len(s) >= 2]


def _name(step: str) -> str:
    return {FIRST: "import", RESTORE: "export", CHECK: "check --read-data", UNCHANGED: "re-import"}.get(step, step)


def _rss_vs_restic(case: dict) -> list[tuple[str, Target]]:
    return [(case["label"], Target(f"peak RSS of {_name(step)} vs restic", _rss(case, "phonevault", step),
                                   _rss(case, "restic", step), 0.8, "restic", "MB")) for step in RSS_STEPS]  # fmt: skip


# ------------------------------------------------------------------------------------------------ tables


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
    cpu = f"{m['cpu_s']:.1f} s CPU"
    if (system := m.get("extra", {}).get("system_s")) is not None:
        cpu += f" ({system:.1f} sys)"
    parts.append(cpu)
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
    refs = s.get("refs") or {}
    lines += [""]
    if refs:
        lines.append(f"References: read every file (`cat`) {_cell(refs.get('cat'))}; `cp -r` {_cell(refs.get('cp'))}.")
    if s.get("day2_new_media") is not None:
        lines.append(f"Day 2's new photos and videos: {s['day2_new_media'] / 1e6:,.1f} MB (every tool stores them).")
    lines += [f"Failed: {e}" for e in errors]
    return lines + [""]


def targets_table(results: dict) -> list[str]:
    rows = targets(results)
    if not rows:
        return []
    lines = [
        "### Targets (issue 11; ratios measured in the same run)",
        "",
        "| case | target | phonevault | against | ratio | limit | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, t in rows:
        ratio = "—" if t.ratio is None else f"{t.ratio:.2f}"
        lines.append(
            f"| {case} | {t.what} | {_fmt(t.ours, t.unit)} | {t.peer} {_fmt(t.theirs, t.unit)} | {ratio} | "
            f"≤ {t.limit:g}× | {t.verdict} |"
        )
    return lines + [""]


def _ratio(hi: float | None, lo: float | None) -> str:
    return "—" if hi is None or not lo else f"{hi / lo:.2f}"


def _tools(series: list[dict]) -> list[str]:
    seen = dict.fromkeys(t for s in series for t in s.get("tools", {}))
    return [t for t in ("phonevault", "restic", "borg") if t in seen]


def series_table(title: str, series: list[dict], ref: dict | None) -> list[str]:
    """Wall time and peak RSS of each step for each tool across one series, with largest ÷ smallest and
    phonevault ÷ restic at the reference case."""
    if not series:
        return []
    heads = [f"{s['label']} ({s['bytes_day0'] / 1e9:.2f} GB, {s['files_day0']:,} files)" for s in series]
    ref_head = f"phonevault ÷ restic at {ref['label']}: time · RSS" if ref else "phonevault ÷ restic"
    lines = [
        f"### Scaling: {title} (cells: wall s · peak RSS MB)",
        "",
        "| step | tool | " + " | ".join(heads) + f" | time ×, largest ÷ smallest | RSS ×, largest ÷ smallest "
        f"(≤ {FLAT:g} for phonevault) | {ref_head} |",
        "|---|---|" + "---|" * (len(series) + 3),
    ]
    lo, hi = series[0], series[-1]
    for step, label in SERIES_STEPS:
        for tool in _tools(series):
            cells = []
            for s in series:
                m = _step(s, tool, step)
                cells.append(f"{m['wall_s']:.1f} · {m['peak_rss_mb']:.0f}" if m and m.get("ok") else "—")
            vs = "—"
            if tool == "phonevault" and ref is not None:
                vs = (f"{_ratio(_wall(ref, tool, step), _wall(ref, 'restic', step))} · "
                      f"{_ratio(_rss(ref, tool, step), _rss(ref, 'restic', step))}")  # fmt: skip
            # A tool not run at every case (a piece run with --skip-peers) is compared over the cases it ran,
            # and the cell names them.
            ran = [s for s in series if _wall(s, tool, step) is not None]
            flat = grow = "—"
            if len(ran) > 1:
                a, b = ran[0], ran[-1]
                span = "" if (a, b) == (lo, hi) else f" ({a['label']} → {b['label']})"
                flat = _ratio(_rss(b, tool, step), _rss(a, tool, step)) + span
                grow = _ratio(_wall(b, tool, step), _wall(a, tool, step)) + span
            lines.append(f"| {label} | {tool} | " + " | ".join(cells) + f" | {grow} | {flat} | {vs} |")
    return lines + [""]


def device_table(results: dict) -> list[str]:
    devs = sorted(devices(results), key=lambda d: d.get("phone_bytes", 0))
    if not devs:
        return []
    lines = ["### Device path (emulated phone over usbmux/lockdown/TLS; cells: the client's figures)", ""]
    heads = [
        f"{d['label']} ({d.get('phone_bytes', 0) / 1e9:.2f} GB"
        + (f", {d['phone_files']:,} files)" if d.get("phone_files") else ")")
        for d in devs
    ]
    lines += ["| client | " + " | ".join(heads) + " | time × / RSS ×, largest ÷ smallest |",
              "|---|" + "---|" * (len(devs) + 1)]  # fmt: skip
    for name, label in (("phonevault", "`phonevault backup` (into a vault)"),
                        ("pymobiledevice3", "`pymobiledevice3 backup2 backup --full` (plain folder)")):  # fmt: skip
        ms = [d.get(name) or {} for d in devs]
        cells = [
            d["error"] if d.get("error") else (m["error"] if "error" in m else _cell(m))
            for d, m in zip(devs, ms, strict=True)
        ]
        flat = "—"
        if len(devs) > 1 and ms[0].get("wall_s") and ms[-1].get("wall_s"):
            flat = (
                f"{_ratio(ms[-1]['wall_s'], ms[0]['wall_s'])} / {_ratio(ms[-1]['peak_rss_mb'], ms[0]['peak_rss_mb'])}"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {flat} |")
    return lines + [""]


def _warm(results: dict) -> str:
    kept = any(n.startswith("--warm") for n in results.get("notes", []))
    return "**warm** (--warm: the page cache was kept)" if kept else "**warm** (could not drop caches)"


def _load(v: list[float] | None) -> str:
    return "—" if not v else "/".join(f"{x:.1f}" for x in v)


def cases_table(results: dict) -> list[str]:
    """Per case: what code, when, how loaded, on what, from what data (merged runs differ in these)."""
    lines = [
        "### Cases (load average 1/5/15 min at the case's start → end)",
        "",
        "| case | commit | date | load | host | cache | source | media: zstd -3 saves | case wall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in [*results["sizes"], *devices(results)]:
        if "date" not in c:
            continue
        host = c.get("machine", {}).get("host", "?")
        source = "—"
        if kind(c) != "device":
            source = "prepared" if c.get("prepared") else f"written in {c.get('generate_s', 0):.0f} s"
            if c.get("frugal"):
                source += f", frugal (rewritten in {', '.join(f'{x:.0f}' for x in c.get('regenerate_s', []))} s)"
        media = c.get("media") or {}
        media_cell = "—"
        if media.get("ok"):
            media_cell = f"{media['saved']:.2%} of {media['media_bytes'] / 1e6:,.0f} MB"
        elif media:
            media_cell = f"**{media.get('error', 'failed')}**"
        cache = "cold" if c.get("cold", results.get("cold")) else "**warm**"
        lines.append(f"| {c['label']} | {c.get('commit', '?')} | {c['date']} | {_load(c.get('load_start'))} → "
                     f"{_load(c.get('load_end'))} | {host} | {cache} | {source} | {media_cell} | "
                     f"{c.get('case_s', 0) / 60:.1f} min |")  # fmt: skip
    return lines + [""] if len(lines) > 4 else []


def settled(results: dict) -> str:
    """The wait after deletes before file-creating steps (suite.py, Settling), when the run had one."""
    wait = results.get("settle_s")
    return (
        f"; a first backup, restore or `cp -r` starts ≥ {wait:.0f} s after the last delete (after a sync)"
        if wait
        else ""
    )


def markdown(results: dict) -> str:
    m = results["machine"]
    head = [
        f"## Results {results['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']:.0f} GiB RAM, {m['kernel']}; Python {m['python']}; "
        f"{', '.join(f'{k} {v}' for k, v in results['versions'].items())} (commit {results.get('commit', '?')}).",
        f"Cache: {'cold (page cache dropped before every step)' if results['cold'] else _warm(results)}"
        f"{settled(results)}. "
        f"Cells: wall time · throughput · peak RSS · CPU seconds (user+system, and the system part). Command: `{results['command']}`.",
        "",
    ]
    notes = [f"- {n}" for n in results.get("notes", [])]
    body = targets_table(results)
    body += series_table("folder size", regular(results), target_size(results))
    body += series_table("number of files", files_series(results), target_many(results))
    body += [ln for s in results["sizes"] for ln in size_table(s)] + device_table(results) + cases_table(results)
    return "\n".join(head + (notes + [""] if notes else []) + body)


# ------------------------------------------------------------------------------------------------ plot


def plot(results: dict, path: Path) -> str:
    """A PNG of wall time and peak RSS against folder size and against number of files, per tool and step;
    '' on success, else why it was skipped."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], capture_output=True)
        if r.returncode != 0:
            return "matplotlib could not be installed; no plot"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(s, x, xl) for s, x, xl in ((regular(results), "bytes_day0", "backup folder (GB)"),
              (files_series(results), "files_day0", "files in the folder")) if s]  # fmt: skip
    if not panels:
        return "no case to plot"
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 4.2 * len(panels)), squeeze=False)
    colors = {"phonevault": "tab:blue", "restic": "tab:orange", "borg": "tab:green"}
    styles = {FIRST: "o-", RESTORE: "s--", CHECK: "^:"}
    for row, (series, key, xlabel) in zip(axes, panels, strict=True):
        scale = 1e9 if key == "bytes_day0" else 1
        for tool in _tools(series):
            for step, style in styles.items():
                pts = [(s[key] / scale, m) for s in series if (m := _step(s, tool, step)) and m.get("ok")]
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                kw = {"color": colors[tool], "label": f"{tool} {_name(step)}"}
                row[0].plot(xs, [p[1]["wall_s"] for p in pts], style, **kw)
                row[1].plot(xs, [p[1]["peak_rss_mb"] for p in pts], style, **kw)
        for ax, ylabel in zip(row, ("wall time (s)", "peak RSS (MB)"), strict=True):
            ax.set(xlabel=xlabel, ylabel=ylabel)
            if key == "files_day0":
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.suptitle(f"phonevault, restic, borg: commit {results.get('commit', '?')}, {results['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="merge results files of one commit into one table and plot")
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--out", required=True, help="stem of the merged results under results/")
    args = ap.parse_args(argv)
    try:
        merged = merge([json.loads(f.read_text()) for f in args.files])
    except MixedCommits as e:
        print(f"report.py: {e}", file=sys.stderr)
        return 2
    out = Path(__file__).resolve().parent / "results"
    (out / f"{args.out}.json").write_text(json.dumps(merged, indent=1) + "\n")
    text = markdown(merged)
    (out / f"{args.out}.md").write_text(text + "\n")
    if why := plot(merged, out / ("scaling.png" if args.out == "results" else f"{args.out}-scaling.png")):
        print(f"note: {why}", file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
