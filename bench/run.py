"""
The benchmark entry point: ``python -m bench`` or ``python bench/run.py``.

It starts a private Prosody on 127.0.0.1 (``muc_guard.testing.prosody``),
runs every scenario (or those given with ``--only``), prints a table, and
writes ``bench/RESULTS.md`` (a full run) with the machine, the versions, the
date, every figure (min/median/p95/max and the ratio to its baseline) and
every target with its verdict.

    python -m bench                  # full run, about 20 minutes on 2 cores
    python -m bench --smoke          # tiny sizes, a few seconds (the test suite runs this)
    python -m bench --only 1,7       # some scenarios (prints; writes only with --results)
    python -m bench --results FILE   # write the report elsewhere
    python -m bench --no-write       # print only
    python -m bench --frontend slixmpp   # scenarios 1, 2, 3, 5, 9: one front-end only

Each scenario runs in a process of its own with a Prosody of its own
(``--in-process`` runs them all in this one, on one server): what one
scenario leaves behind (thousands of rooms in Prosody, whose garbage
collection then stalls it for tens of milliseconds; a heap whose full
collection takes seconds) must not land in the next one's figures.

The exit status is 0 when every scenario ran (targets missed included: a
miss is a result), 1 when a scenario failed to run, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import inspect
import json
import logging
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

if __package__ in (None, ""):   # run as a script: bench/run.py
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    __package__ = "bench"

from bench import report  # noqa: E402
from bench.common import (  # noqa: E402
    FRONTENDS,
    SMOKE,
    Check,
    Context,
    Figure,
    ScenarioResult,
    Sizes,
    pin_loopback,
)

SCENARIOS = {
    1: "bench.s1_signalled",
    2: "bench.s2_silent",
    3: "bench.s3_correlated",
    4: "bench.s4_cold_start",
    5: "bench.s5_steady",
    6: "bench.s6_idle",
    7: "bench.s7_memory",
    8: "bench.s8_restart",
    9: "bench.s9_sibling_rejoin",
    10: "bench.s10_churn",
}

DEFAULT_RESULTS = pathlib.Path(__file__).resolve().parent / "RESULTS.md"

log = logging.getLogger("bench")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--only", default="", help="comma-separated scenario numbers, e.g. 1,3")
    parser.add_argument("--results", type=pathlib.Path, default=None,
                        help="where to write the report (default: bench/RESULTS.md, and only "
                             "for a full run of every scenario)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--nagle", action="store_true",
                        help="run Prosody with Nagle's algorithm on (default: off, as in its tests)")
    parser.add_argument("--prosody-gc", choices=("incremental", "generational"), default=None,
                        help="Prosody's Lua garbage collector mode (default: Prosody's own, "
                             "incremental with threshold 105 and speed 500); for experiments "
                             "on where the server's own stalls come from")
    parser.add_argument("--frontend", choices=("aioxmpp", "slixmpp", "both"), default="both",
                        help="which front-end scenarios 1, 2, 3, 5 and 9 measure, each against "
                             "its plain client library (default: both)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--in-process", action="store_true",
                        help="run every scenario in this process, on one Prosody")
    parser.add_argument("--child-json", type=pathlib.Path, default=None,
                        help=argparse.SUPPRESS)   # a scenario's process: results as JSON
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        args.scenarios = sorted({int(x) for x in args.only.split(",") if x.strip()}) or list(SCENARIOS)
    except ValueError:
        parser.error(f"--only takes scenario numbers, not {args.only!r}")
    args.frontends = FRONTENDS if args.frontend == "both" else (args.frontend,)
    unknown = [n for n in args.scenarios if n not in SCENARIOS]
    if unknown:
        parser.error(f"no such scenario: {unknown} (there are {sorted(SCENARIOS)})")
    return args


async def run_all(args: argparse.Namespace) -> tuple[list[ScenarioResult], dict[str, str]]:
    from muc_guard.testing.prosody import ProsodyServer

    pin_loopback()
    sizes: Sizes = SMOKE if args.smoke else Sizes()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="muc-guard-bench-"))
    server = ProsodyServer(
        workdir / "prosody", nagle=args.nagle, log_level="info",
        # Prosody keeps only 100 rooms in memory by default and swaps the rest
        # to disk; the scenarios hold up to 1,000 rooms per client.
        extra_muc_config="    muc_room_cache_size = 100000",
        extra_config=(f'gc = {{ mode = "{args.prosody_gc}" }}' if args.prosody_gc else ""),
    )
    # Library and aioxmpp logs go to a file (as a bot's would), not the terminal.
    handler = logging.FileHandler(workdir / "bench.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if args.verbose else logging.WARNING)
    results: list[ScenarioResult] = []
    started = time.monotonic()
    await server.astart()
    ctx = Context(server, sizes, workdir, args.smoke, args.frontends)
    info = report.machine_info(server, args, sizes)
    try:
        for number in args.scenarios:
            module = importlib.import_module(SCENARIOS[number])
            res = ScenarioResult(number, module.TITLE, method=inspect.cleandoc(module.__doc__ or ""))
            print(f"[bench] scenario {number}: {module.TITLE} ...", flush=True)
            logging.getLogger("bench").warning("=== scenario %d: %s", number, module.TITLE)
            t0 = time.monotonic()
            try:
                await module.run(ctx, res)
            except Exception as exc:
                res.error = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            finally:
                await ctx.cleanup()
                res.seconds = time.monotonic() - t0
            print(f"[bench] scenario {number} done in {res.seconds:.1f} s"
                  + (f" (ERROR: {res.error})" if res.error else ""), flush=True)
            if res.error:
                print(f"[bench] logs: {workdir / 'bench.log'} (use --keep to keep them)")
            results.append(res)
    finally:
        await ctx.cleanup()
        await server.astop()
        if args.keep:
            print(f"[bench] work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    took = time.monotonic() - started
    info["duration"] = f"{took / 60:.1f} min" if took >= 120 else f"{took:.0f} s"
    return results, info


def _to_json(res: ScenarioResult) -> dict[str, Any]:
    figures = [{**{f.name: getattr(fig, f.name) for f in dataclasses.fields(fig)
                   if f.name != "baseline"},
                "baseline": res.figures.index(fig.baseline) if fig.baseline else None}
               for fig in res.figures]
    return {"number": res.number, "title": res.title, "figures": figures,
            "checks": [dataclasses.asdict(chk) for chk in res.checks], "notes": res.notes,
            "seconds": res.seconds, "error": res.error, "method": res.method}


def _from_json(data: dict[str, Any]) -> ScenarioResult:
    res = ScenarioResult(data["number"], data["title"], notes=data["notes"],
                         seconds=data["seconds"], error=data["error"], method=data["method"])
    for item in data["figures"]:
        res.figures.append(Figure(**{**item, "baseline": None}))
    for fig, item in zip(res.figures, data["figures"]):
        if item["baseline"] is not None:
            fig.baseline = res.figures[item["baseline"]]
    res.checks = [Check(**chk) for chk in data["checks"]]
    return res


def run_isolated(args: argparse.Namespace) -> tuple[list[ScenarioResult], dict[str, str]]:
    """Each scenario in a child ``python -m bench --only N``, one at a time,
    with this run's flags."""
    flags = ((["--smoke"] if args.smoke else []) + (["--nagle"] if args.nagle else [])
             + (["--prosody-gc", args.prosody_gc] if args.prosody_gc else [])
             + ["--frontend", args.frontend] + (["--keep"] if args.keep else [])
             + (["-v"] if args.verbose else []))
    results: list[ScenarioResult] = []
    info: dict[str, str] = {}
    started = time.monotonic()
    root = pathlib.Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="muc-guard-bench-runs-") as tmp:
        for number in args.scenarios:
            out = pathlib.Path(tmp) / f"s{number}.json"
            code = subprocess.call([sys.executable, "-m", "bench", *flags,
                                    "--only", str(number), "--child-json", str(out)], cwd=root)
            if not out.exists():
                res = ScenarioResult(number, f"scenario {number}",
                                     error=f"its process ended with status {code} and no results")
                results.append(res)
                continue
            data = json.loads(out.read_text())
            info = info or data["info"]
            results.extend(_from_json(item) for item in data["results"])
    took = time.monotonic() - started
    info["duration"] = f"{took / 60:.1f} min" if took >= 120 else f"{took:.0f} s"
    info["isolation"] = "each scenario in its own process, with its own Prosody"
    info["command"] = report.command_of(args)
    return results, info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_json is None and not args.in_process and len(args.scenarios) > 1:
        results, info = run_isolated(args)
    else:
        results, info = asyncio.run(run_all(args))
        if not args.in_process:
            info["isolation"] = "each scenario in its own process, with its own Prosody"
        else:
            info["isolation"] = "every scenario in one process, on one Prosody (--in-process)"
    if args.child_json is not None:
        args.child_json.write_text(json.dumps({"info": info,
                                               "results": [_to_json(r) for r in results]}))
        return 1 if any(r.error for r in results) else 0
    print()
    print(report.text_table(results))
    target = args.results
    if (target is None and not args.smoke and not args.only and args.frontend == "both"
            and not args.no_write):
        target = DEFAULT_RESULTS    # only a full run of every scenario replaces it
    if target is not None and not args.no_write:
        target.write_text(report.markdown(results, info))
        print(f"\n[bench] wrote {target}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
