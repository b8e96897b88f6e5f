"""Figures a user can read, from the trials' results: a table on stdout, results.json and results.md.

Figures: trials per category and operation (with how many kills or stops landed inside the operation), faults
injected, damaged objects detected out of made (by `check` alone and by any check, and the damage that changed
nothing a user can see), bytes lost (must be 0: bytes of committed snapshots that should still export bit-exact
and do not), and every failure and known gap by name.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

from .known import ALL as KNOWN_GAPS
from .records import TrialResult

BY_DESIGN = "undetectable by design"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def figures(results: list[TrialResult]) -> dict:
    status = Counter(r.status for r in results)
    damage = [r for r in results if r.spec.category == "damage"]
    return {
        "trials": len(results),
        "passed": status["pass"],
        "known_gap": status["known-gap"],
        "failed": status["fail"],
        "kills": sum(r.spec.category == "crash" for r in results),
        "kills_landed": sum(r.spec.category == "crash" and bool(r.landed) for r in results),
        "stops": sum(r.spec.category == "stop" for r in results),
        "stops_landed": sum(r.spec.category == "stop" and bool(r.landed) for r in results),
        "faults_injected": sum(r.faults_injected for r in results),
        "damaged_made": sum(r.damaged_made for r in damage),
        "damaged_detected": sum(r.damaged_detected for r in damage),
        "damaged_detected_by_plain_check": sum(r.damaged_detected_plain for r in damage),
        "damage_harmless_undetected": sum(r.damage_harmless for r in damage),
        "damage_undetectable_by_design": sum(any(n.startswith(BY_DESIGN) for n in r.notes) for r in damage),
        "bytes_lost": sum(r.bytes_lost for r in results),
        "bytes_made_unreadable_on_purpose": sum(r.bytes_damaged for r in results),
    }


def operation_rows(results: list[TrialResult]) -> list[list]:
    groups: dict[tuple[str, str], list[TrialResult]] = defaultdict(list)
    for r in results:
        groups[(r.spec.category, r.spec.operation)].append(r)
    rows = []
    for (cat, op), rs in sorted(groups.items()):
        st = Counter(r.status for r in rs)
        landed = sum(bool(r.landed) for r in rs)
        rows.append([cat, op, len(rs), landed, sum(r.faults_injected for r in rs), st["pass"], st["known-gap"],
                     st["fail"], sum(r.bytes_lost for r in rs)])  # fmt: skip
    return rows


def damage_rows(results: list[TrialResult]) -> list[list]:
    groups: dict[tuple[str, str], list[TrialResult]] = defaultdict(list)
    for r in results:
        if r.spec.category == "damage":
            groups[(r.spec.operation, r.spec.params.get("mode", ""))].append(r)
    rows = []
    for (kind, mode), rs in sorted(groups.items()):
        rows.append([kind, mode, sum(r.damaged_made for r in rs), sum(r.damaged_detected_plain for r in rs),
                     sum(r.damaged_detected for r in rs), sum(r.damage_harmless for r in rs),
                     sum(any(n.startswith(BY_DESIGN) for n in r.notes) for r in rs),
                     sum(r.status == "fail" for r in rs)])  # fmt: skip
    return rows


def landing_rows(results: list[TrialResult]) -> list[list]:
    """Where the SIGKILLs and stops landed, by category and place."""
    counts = Counter((r.spec.category, r.landed) for r in results if r.spec.category in ("crash", "stop") and r.landed)
    return [[cat, place, n] for (cat, place), n in sorted(counts.items())]


def _table(header: list[str], rows: list[list]) -> list[str]:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return out


def _md(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in r) + " |" for r in rows
    ]


LANDED_HEADER = ["category", "landed at", "trials"]
OP_HEADER = ["category", "operation", "trials", "landed", "faults", "pass", "known gap", "fail", "bytes lost"]
DMG_HEADER = ["object", "damage", "made", "check", "any check", "harmless", "by design", "fail"]


def text_table(results: list[TrialResult], meta: dict) -> str:
    f = figures(results)
    lines = _table(OP_HEADER, operation_rows(results)) + [""] + _table(DMG_HEADER, damage_rows(results)) + [""]
    lines.append(
        f"{f['trials']} trials: {f['passed']} passed, {f['known_gap']} known gaps, {f['failed']} failed; "
        f"{f['kills_landed']} of {f['kills']} SIGKILLs and {f['stops_landed']} of {f['stops']} stops landed inside "
        f"the operation; {f['faults_injected']} faults injected; damaged objects detected {f['damaged_detected']} of "
        f"{f['damaged_made']} ({f['damaged_detected_by_plain_check']} by check alone; "
        f"{f['damage_harmless_undetected']} undetected and harmless, {f['damage_undetectable_by_design']} "
        f"undetectable by design); bytes lost {f['bytes_lost']}; wall time {meta['wall_s']:.0f} s"
    )
    for r in results:
        if r.status == "fail":
            lines.append(f"FAIL {r.spec.label}: " + " | ".join(r.problems)[:600])
    return "\n".join(lines)


def markdown(results: list[TrialResult], meta: dict) -> str:
    f = figures(results)
    out = [
        "# What phonevault survives",
        "",
        f"`python -m tests.harness --{meta['mode']} --seed {meta['seed']}` on commit {meta['commit']}"
        f"{' (with uncommitted changes)' if meta['dirty'] else ''}, {meta['date']}, {meta['machine']}: "
        f"{meta['wall_s'] / 60:.1f} min wall time with {meta['jobs']} jobs.",
        "",
        "Every trial ends with the same verdict: `check --read-data` is ok, every snapshot committed before the "
        "trial exports bit-exact, the interrupted operation succeeds when run again, no output holds a traceback. "
        "What the trials are: tests/harness/__init__.py.",
        "",
        "## Figures",
        "",
        f"- **{f['trials']} trials**: {f['passed']} passed, {f['known_gap']} passed but for a known gap, "
        f"**{f['failed']} failed**.",
        f"- **{f['kills']} SIGKILLs** ({f['kills_landed']} landed inside the operation; the rest found it finished) "
        f"and **{f['stops']} stops** at a backend write ({f['stops_landed']} landed).",
        f"- **{f['faults_injected']} faults injected** (I/O errors, short and corrupted reads, full disks).",
        f"- **Damaged objects detected: {f['damaged_detected']} of {f['damaged_made']}** "
        f"({f['damaged_detected_by_plain_check']} by `check` alone, the rest by `check --read-data`); of those not "
        f"detected, {f['damage_harmless_undetected']} changed nothing a user can see and "
        f"{f['damage_undetectable_by_design']} are undetectable by design.",
        f"- **Bytes lost: {f['bytes_lost']}** (bytes of committed snapshots that should still export bit-exact and "
        f"do not); {f['bytes_made_unreadable_on_purpose']} bytes of snapshots were made unreadable on purpose by "
        "damage.",
        "",
        "## Trials by operation",
        "",
        *_md(OP_HEADER, operation_rows(results)),
        "",
        "## Where the kills and stops landed",
        "",
        "`os.link events/`: a commit written and fsynced, not yet linked (between fsync and link); `os.rename`: a pack, "
        "index or marker put in place; `source`: reading the folder being imported; `mid-chunking`: after the store "
        "was handed that many bytes; stops name the backend write they came before or after.",
        "",
        *_md(LANDED_HEADER, landing_rows(results)),
        "",
        "## Damage by object and kind",
        "",
        "`check`: detected by `check` alone; `any check`: by `check`, `check --read-data` or a cold-cache check; "
        "`harmless`: nobody reports it and nothing a user can see changed.",
        "",
        *_md(DMG_HEADER, damage_rows(results)),
        "",
    ]
    gaps = Counter(g.split(":", 1)[0] for r in results for g in r.gaps)
    if gaps:
        out += ["## Known gaps", ""]
        for gap in KNOWN_GAPS:
            if gaps[gap.key]:
                out.append(f"- `{gap.key}` ({gaps[gap.key]} trials): {gap.what} — {gap.until}.")
        out.append("")
    fails = [r for r in results if r.status == "fail"]
    out += ["## Failures", ""] + (
        [f"- {r.spec.label}: " + " | ".join(r.problems)[:800] for r in fails] if fails else ["None."]
    )
    by_design = sorted({n for r in results for n in r.notes if n.startswith(BY_DESIGN)})
    if by_design:
        out += ["", "## Undetectable by design", ""] + [f"- {n}" for n in by_design[:10]]
    return "\n".join(out) + "\n"


def metadata(mode: str, seed: int, jobs: int, wall_s: float, date: str) -> dict:
    return {
        "mode": mode,
        "seed": seed,
        "jobs": jobs,
        "wall_s": round(wall_s, 1),
        "date": date,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} "
        f"{platform.release()}",
    }


def write(out: Path, results: list[TrialResult], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "figures": figures(results), "trials": [r.to_json() for r in results]}
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out / "results.md").write_text(markdown(results, meta))
