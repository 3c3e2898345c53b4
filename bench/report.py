"""The printed table and bench/RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
import sqlite3
import subprocess
from typing import Any

from .common import REPO, ScenarioResult, fmt

_HEAD = ["#", "figure", "unit", "n", "min", "median", "p95", "max", "baseline (median)", "ratio"]


def _cmd(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10,
                              cwd=REPO).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info(server: Any, args: Any, sizes: Any) -> dict[str, str]:
    import aioxmpp

    cpu_model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = _cmd("git", "rev-parse", "--short", "HEAD")
    dirty = _cmd("git", "status", "--porcelain", "--", "muc_guard")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": _cmd("nproc") or str(os.cpu_count()),
        "cpu": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aioxmpp": getattr(aioxmpp, "__version__", "?"),
        "slixmpp": _version("slixmpp"),
        "frontends": ", ".join(getattr(args, "frontends", ("aioxmpp",))),
        "prosody": _cmd("dpkg-query", "-W", "prosody").replace("\t", " ") or "?",
        "sqlite": sqlite3.sqlite_version,
        "muc_guard": f"{commit}{' + uncommitted changes in muc_guard/' if dirty else ''}",
        "nagle": ("on (network_settings nagle=true)" if server.nagle
                  else "off (network_settings nagle=false: TCP_NODELAY on Prosody's sockets)"),
        "gc": (f'gc = {{ mode = "{args.prosody_gc}" }} (--prosody-gc)'
               if getattr(args, "prosody_gc", None)
               else "Prosody's default (incremental, threshold 105, speed 500)"),
        "mode": "smoke" if args.smoke else "full",
        "command": command_of(args),
    }


def command_of(args: Any) -> str:
    """The ``python -m bench`` command line that `args` came from."""
    return ("python -m bench" + (" --smoke" if args.smoke else "")
            + (f" --only {args.only}" if args.only else "")
            + (f" --frontend {args.frontend}"
               if getattr(args, "frontend", "both") != "both" else "")
            + (" --nagle" if args.nagle else "")
            + (f" --prosody-gc {args.prosody_gc}" if getattr(args, "prosody_gc", None) else "")
            + (" --in-process" if getattr(args, "in_process", False) else ""))


def _rows(results: list[ScenarioResult], *, inline_text: bool = False) -> list[list[str]]:
    rows = []
    for res in results:
        for fig in res.figures:
            if fig.text is not None:
                if inline_text:
                    rows.append([str(fig.scenario), f"{fig.name}: {fig.text}", fig.unit, "", "",
                                 "", "", "", fig.baseline_text, ""])
                else:
                    rows.append([str(fig.scenario), fig.name, fig.unit, "", "", fig.text, "", "",
                                 fig.baseline_text, ""])
                continue
            s = fig.summary
            base = fig.baseline
            rows.append([
                str(fig.scenario), fig.name, fig.unit, str(s.n),
                fmt(s.min), fmt(s.median), fmt(s.p95), fmt(s.max),
                (f"{fmt(base.summary.median)} ({base.name})" if base is not None
                 else fig.baseline_text),
                f"{fig.ratio:.2f} ×" if fig.ratio is not None else "",
            ])
        if res.error:
            rows.append([str(res.number), f"ERROR: {res.error}", "", "", "", "", "", "", "", ""])
    return rows


def text_table(results: list[ScenarioResult]) -> str:
    rows = _rows(results, inline_text=True)
    # the baseline column can be long: cut it in the terminal table
    rows = [r[:8] + [r[8][:48] + ("…" if len(r[8]) > 48 else ""), r[9]] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(_HEAD)]
    widths[1] = min(widths[1], 60)
    lines = ["  ".join(h.ljust(w) for h, w in zip(_HEAD, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        cells = [c.ljust(w) if i in (1, 2, 8) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells))
    lines.append("")
    lines.append("targets:")
    for res in results:
        for chk in res.checks:
            verdict = {True: "PASS", False: "FAIL", None: "info"}[chk.ok]
            lines.append(f"  [{verdict}] {chk.scenario}: {chk.target} — {chk.measured}")
    return "\n".join(lines)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(results: list[ScenarioResult], info: dict[str, str]) -> str:
    out = ["# muc_guard benchmark results", ""]
    out.append(f"Generated by `{info['command']}` on {info['date']} "
               f"({info['mode']} run, {info.get('duration', '?')}). "
               "Every figure below comes from this one run; ratios compare figures "
               "measured in the same run. Regenerate with `python -m bench`.")
    out.append("")
    out += [
        "| machine | |",
        "|---|---|",
        f"| cores (`nproc`) | {info['cores']} |",
        f"| CPU | {info['cpu']} |",
        f"| kernel | {info['kernel']} |",
        f"| Python | {info['python']} |",
        f"| aioxmpp | {info['aioxmpp']} |",
        f"| slixmpp | {info.get('slixmpp', '?')} |",
        f"| front-ends measured (scenarios 1, 2, 3, 5, 9) | {info.get('frontends', '?')} |",
        f"| Prosody (`dpkg-query -W prosody`) | {info['prosody']} |",
        f"| SQLite | {info['sqlite']} |",
        f"| muc_guard | {info['muc_guard']} |",
        f"| Prosody's Nagle setting | {info['nagle']} |",
        f"| Prosody's garbage collector | {info.get('gc', '?')} |",
        f"| scenarios run | {info.get('isolation', '?')} |",
        "| network | 127.0.0.1 only (a private Prosody started by the benchmark) |",
        "",
    ]
    out += ["## Targets", "", "| # | target | measured | result |", "|---|---|---|---|"]
    for res in results:
        for chk in res.checks:
            verdict = {True: "**pass**", False: "**FAIL**", None: "info"}[chk.ok]
            out.append(f"| {chk.scenario} | {_md_escape(chk.target)} | "
                       f"{_md_escape(chk.measured)} | {verdict} |")
        if res.error:
            out.append(f"| {res.number} | scenario ran | ERROR: {_md_escape(res.error)} | **FAIL** |")
    out += ["", "## Figures", "",
            "min / median / p95 / max over the samples (n); ratio = median ÷ the "
            "baseline's median.", "",
            "| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
    for row in _rows(results):
        out.append("| " + " | ".join(_md_escape(c) for c in row) + " |")
    out += ["", "## Scenarios", ""]
    for res in results:
        out.append(f"### {res.number}. {res.title}")
        out.append("")
        if res.method:
            # the module docstring without its one-line title
            body = res.method.split("\n\n", 1)[1] if "\n\n" in res.method else ""
            if body:
                out.append(body)
                out.append("")
        out.append(f"This run: {res.seconds:.0f} s.")
        out.append("")
        for note in res.notes:
            out.append(f"* {note}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
