"""elspeth-beam command line: run, validate, explain, verify, prove, resume, runs, show, export, report, bench, plugins.

User mistakes (bad settings, missing files, unknown runs) exit with code 2 and a message
that says what to fix — never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from elspeth_beam.core.errors import ElspethError, PipelineFailedError, RunInterruptedError, SettingsError, UsageError
from elspeth_beam.landscape import DEFAULT_PATH as DEFAULT_LANDSCAPE

if TYPE_CHECKING:
    from elspeth_beam.run import RunResult

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130  # 130: 128 + SIGINT, as shells report Ctrl-C

EPILOG = f"""exit codes:
  {EXIT_OK}    done: the run completed and verified; verify, prove, bench found no problem
  {EXIT_FAILED}    the run failed (the pipeline raised, verify found a problem, too many rows set
       aside), verify or prove found a problem, bench's variants wrote different rows
  {EXIT_USAGE}    a usage mistake: bad settings, an unknown option or run, a run id already
       used, an output that cannot be written, a file that is not a Landscape
  {EXIT_INTERRUPTED}  interrupted by Ctrl-C; the run is recorded interrupted: elspeth-beam resume RUN_ID

environment:
  ELSPETH_FINGERPRINT_KEY  the key of the HMAC fingerprints recorded for secrets (without it: ***)
  ${{VAR}}, ${{VAR:-default}}  any variable a settings file names: the example pipelines read OUT_DIR
                           and LANDSCAPE_URL (their landscape.url); no command reads a variable
                           for the Landscape itself, so give the others -l "$LANDSCAPE_URL"
  ELSPETH_FAULT            crash tests: kill the run at a chosen point (exit 137), see the README
"""


def build_parser() -> argparse.ArgumentParser:
    """Every command and option, each with its help (``tests/test_cli_help.py`` walks them)."""
    p = argparse.ArgumentParser(prog="elspeth-beam", description="Auditable Apache Beam pipelines.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action=_VersionAction, help="print the versions of elspeth-beam, Apache Beam and Python")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, help_text) in _COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text,
                                     formatter_class=argparse.RawDescriptionHelpFormatter))
    return p


def _run_parser(run: argparse.ArgumentParser) -> None:
    run.epilog = EPILOG
    run.add_argument("settings", help="the pipeline's settings (YAML)")
    _landscape_arg(run, default="the settings' landscape.url, else " + DEFAULT_LANDSCAPE)
    run.add_argument("--run-id", help="use this run id (default: generated)")
    _output_args(run)


def _validate_parser(val: argparse.ArgumentParser) -> None:
    val.add_argument("settings", help="the pipeline's settings (YAML); prints its graph when they are valid")


def _explain_parser(exp: argparse.ArgumentParser) -> None:
    _run_args(exp)
    target = exp.add_mutually_exclusive_group(required=True)
    target.add_argument("--row", type=int, help="source row index (0-based)")
    target.add_argument("--row-id", help="source row id (row_…, as recorded in the rows table)")
    target.add_argument("--token", help="token id (tok_…)")
    target.add_argument("--sink", help="sink name (with --line)")
    exp.add_argument("--line", type=int, help="data line in the sink's file, 1-based (with --sink)")
    exp.add_argument("--run", help=argparse.SUPPRESS)  # the old form; refused with the new one
    out = exp.add_mutually_exclusive_group()
    out.add_argument("--full", action="store_true",
                     help="list every ancestor token and every member of every batch (default: a summary per batch)")
    out.add_argument("--json", action="store_true", help="print everything as JSON (as --full, for tools)")


def _resume_parser(res: argparse.ArgumentParser) -> None:
    res.epilog = EPILOG
    res.add_argument("run_id", help="the run to finish (`elspeth-beam runs --status running` lists them)")
    _landscape_arg(res)
    res.add_argument("--settings", help="the run's settings file (needed when secrets were redacted)")
    _output_args(res)


def _runs_parser(lst: argparse.ArgumentParser) -> None:
    from elspeth_beam.core.enums import RunStatus

    lst.add_argument("landscape", nargs="?", default=None, help="the same as -l (kept for old scripts)")
    _landscape_arg(lst)
    lst.add_argument("--pipeline", metavar="NAME",
                     help="only runs of this settings file: its path, file name or name without .yaml (e.g. quickstart)")
    lst.add_argument("--status", choices=[s.value for s in RunStatus], help="only runs in this status")
    lst.add_argument("--json", action="store_true", help="print the runs as JSON")


def _bench_parser(ben: argparse.ArgumentParser) -> None:
    ben.add_argument("--rows", type=int, default=100_000, help="rows of generated input per variant (default 100000)")
    ben.add_argument("--repeat", type=int, default=3, help="runs of each variant; the median is reported (default 3)")
    ben.add_argument("--json", action="store_true", help="print the measurements as JSON")


def _verify_parser(ver: argparse.ArgumentParser) -> None:
    _run_args(ver)
    ver.add_argument("--expect-digest", metavar="ROOT", help="the run's digest root as kept elsewhere; fail if it differs")


def _prove_parser(prv: argparse.ArgumentParser) -> None:
    _run_args(prv)
    prv.add_argument("--row", type=int, required=True, help="source row index (0-based)")
    prv.add_argument("--out", "-o", help="write the proof to this file (default: stdout); check it with tools/check_proof.py")


def _show_parser(shw: argparse.ArgumentParser) -> None:
    _run_args(shw)
    shw.add_argument("--top", type=int, default=10, help="how many quarantine/failure reasons to list (default 10)")
    shw.add_argument("--json", action="store_true", help="print the run as JSON")


def _export_parser(ex: argparse.ArgumentParser) -> None:
    _run_args(ex)
    ex.add_argument("--format", choices=["parquet", "jsonl"], default="parquet", help="file format (default parquet)")
    ex.add_argument("--out", required=True, help="folder to create (must be new or empty)")
    ex.add_argument("--force", action="store_true", help="write into a non-empty folder, replacing earlier export files")


def _report_parser(rep: argparse.ArgumentParser) -> None:
    _run_args(rep)
    rep.add_argument("--out", "-o", default="report.html", help="the HTML file to write (default report.html)")
    rep.add_argument("--top", type=int, default=20, help="how many quarantine/failure reasons to list (default 20)")


def _plugins_parser(plg: argparse.ArgumentParser) -> None:
    plg.add_argument("--json", action="store_true", help="print the list as JSON (each plugin's kind, origin and options)")


def _schema_parser(sch: argparse.ArgumentParser) -> None:
    sch.add_argument("--builtin", action="store_true",
                     help="only the built-in plugins' options (the schema the package ships, elspeth_beam/config/pipeline.schema.json)")


_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], str]] = {
    "run": (_run_parser, "run a pipeline; Beam options may follow (e.g. --runner X); any after -- go to Beam unchecked"),
    "validate": (_validate_parser, "check a pipeline YAML without running it, and print its graph"),
    "explain": (_explain_parser, "explain what happened to a row, a token or a line of a sink's file"),
    "resume": (_resume_parser, "finish a run that died, from what its Landscape committed"),
    "runs": (_runs_parser, "list the runs in a Landscape: pipeline, status, times, rows, outcomes"),
    "bench": (_bench_parser, "measure the audit's cost: plain Beam vs elspeth_beam, same pipeline"),
    "verify": (_verify_parser, "check a run's audit invariants and its tamper-evident digest"),
    "prove": (_prove_parser, "prove that a source row's audit records are in the run's digest root (JSON)"),
    "show": (_show_parser, "one run at a glance: header, settings, nodes, outcomes, batches, errors"),
    "export": (_export_parser, "write every Landscape table of a run to typed files plus a manifest"),
    "report": (_report_parser, "write a run's Landscape as one static HTML page (graph, counts, batches, reasons)"),
    "plugins": (_plugins_parser, "list the built-in and installed plugins with their options"),
    "schema": (_schema_parser, "print the JSON Schema of pipeline files, for editors (# yaml-language-server: $schema=FILE)"),
}


class _VersionAction(argparse.Action):
    """``--version``: looked up only when asked, from the installed packages' metadata."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(version_text())
        parser.exit()


def version_text() -> str:
    """``elspeth-beam X.Y.Z (apache-beam A.B.C, Python …)``: this package's version is setup.py's."""
    import platform
    from importlib.metadata import version

    import elspeth_beam

    return f"elspeth-beam {elspeth_beam.__version__} (apache-beam {version('apache-beam')}, Python {platform.python_version()})"


def _landscape_arg(parser: argparse.ArgumentParser, default: str = DEFAULT_LANDSCAPE) -> None:
    """-l/--landscape-url: the same on every command that touches a Landscape (``run`` says
    its default differs: the settings name the Landscape unless -l does)."""
    parser.add_argument("--landscape-url", "-l", metavar="URL", default=None,
                        help=f"the Landscape: a SQLite path or SQLAlchemy URL (default {default})")


def _run_args(parser: argparse.ArgumentParser) -> None:
    """The arguments every command about one recorded run shares: RUN_ID and --landscape-url."""
    parser.add_argument("run_id", nargs="?", default="latest", help="run id (default: latest)")
    _landscape_arg(parser)


def _output_args(parser: argparse.ArgumentParser) -> None:
    """How ``run`` and ``resume`` report: progress on stderr while running, a summary at the end."""
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true",
                     help="print the summary as one JSON object on stdout (progress only when stderr is a terminal)")
    out.add_argument("--quiet", "-q", action="store_true", help="print only errors; the exit code tells the outcome")
    parser.add_argument("--no-progress", action="store_true", help="no progress display (the summary is still printed)")
    parser.add_argument("--progress-every", type=_seconds, metavar="SECONDS",
                        help="seconds between progress updates (default 0.5 on a terminal, 5 otherwise)")
    parser.add_argument("--keep-parts", action="store_true",
                        help="keep the sinks' part files (<sink path>.parts/RUN_ID/), which a completed run otherwise "
                             "removes once their merge is recorded")


def _seconds(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _progress(args: argparse.Namespace) -> Callable[[str, str], Any] | None:
    """The progress display for ``execute_run`` (on stderr), or None when it is off."""
    from functools import partial

    from elspeth_beam.progress import landscape_progress

    if args.quiet or args.no_progress or (args.json and not sys.stderr.isatty()):
        return None
    return partial(landscape_progress, stream=sys.stderr, every=args.progress_every)


def _report_result(result: RunResult, args: argparse.Namespace) -> int:
    """Print a finished run's summary as ``--json``/``--quiet`` ask; its exit code."""
    if args.json:
        print(json.dumps(result.as_json()))
    elif not args.quiet:
        print(result.text())
    elif result.reason:
        problems = "".join(f"; {p}" for p in result.report.problems)
        print(f"elspeth-beam: run {result.run_id} failed: {result.reason}{problems}", file=sys.stderr)
    return EXIT_OK if result.reason is None else EXIT_FAILED


def _run_store(args: argparse.Namespace):
    """The Landscape and run id named by ``_run_args``; ``latest`` resolves to the newest run."""
    _refuse_landscape_as_run_id(args.command, args.run_id)
    store = _store(args.landscape_url or DEFAULT_LANDSCAPE)
    return store, (store.latest_run_id() if args.run_id == "latest" else args.run_id)


def _refuse_landscape_as_run_id(command: str, run_id: str) -> None:
    """A Landscape where the RUN_ID goes (``explain LANDSCAPE --row 3``, the form explain took
    before it took the run like the others) is refused, not looked up as a run id."""
    if "://" in run_id or "/" in run_id or os.sep in run_id or run_id.endswith((".db", ".sqlite", ".sqlite3")) \
            or os.path.isfile(run_id):
        raise UsageError(f"{run_id!r} is a Landscape, not a run id; name the Landscape with -l: "
                         f"elspeth-beam {command} [RUN_ID] -l {run_id} …")


def _cmd_run(args: argparse.Namespace, beam_args: list[str]) -> int:
    from elspeth_beam.config.loader import load_settings
    from elspeth_beam.run import execute_run

    loaded = load_settings(args.settings, landscape_url=args.landscape_url)
    result = execute_run(loaded, beam_args=beam_args, run_id=args.run_id, progress=_progress(args), keep_parts=args.keep_parts)
    return _report_result(result, args)


def _cmd_validate(args: argparse.Namespace) -> int:
    from elspeth_beam.config.graph import render_tree
    from elspeth_beam.config.loader import load_settings
    from elspeth_beam.config.preflight import all_problems

    loaded = load_settings(args.settings)
    problems = all_problems(loaded)
    if problems:
        raise SettingsError(problems)
    print(f"{args.settings}: OK ({len(loaded.graph.nodes)} nodes, {len(loaded.graph.edges())} edges)")
    print(render_tree(loaded.graph))
    return EXIT_OK


def _store(landscape: str):
    """An existing Landscape: a SQLite path (or sqlite:/// URL) must name a file that exists."""
    from pathlib import Path

    from elspeth_beam.core.errors import LandscapeError
    from elspeth_beam.landscape.store import LandscapeStore

    landscape = landscape.removeprefix("sqlite:///")
    if "://" not in landscape and not Path(landscape).is_file():
        raise LandscapeError(f"no Landscape database at {landscape!r}; run a pipeline first or pass its path/URL")
    return LandscapeStore.open_existing(landscape)


def _cmd_explain(args: argparse.Namespace) -> int:
    from elspeth_beam.inspect import explain

    if args.run is not None:
        raise UsageError(f"explain takes the run like the other commands: elspeth-beam explain {args.run} [-l LANDSCAPE] --row N")
    store, run_id = _run_store(args)
    if args.sink is not None:
        if args.line is None:
            raise UsageError("--sink needs --line N (the 1-based data line in the sink's file)")
        result = explain.explain_token(store, run_id, explain.token_at_sink_line(store, run_id, args.sink, args.line))
    elif args.token:
        result = explain.explain_token(store, run_id, args.token)
    else:
        result = explain.explain_row(store, run_id, row_index=args.row, row_id=args.row_id)
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else explain.render_text(result, full=args.full))
    return EXIT_OK


def _cmd_resume(args: argparse.Namespace, beam_args: list[str]) -> int:
    from elspeth_beam.config.loader import load_settings
    from elspeth_beam.resume import resume_run

    store = _store(args.landscape_url or DEFAULT_LANDSCAPE)
    loaded = load_settings(args.settings, landscape_url=store.url) if args.settings else None
    result = resume_run(store, args.run_id, loaded, beam_args=beam_args, progress=_progress(args),
                        keep_parts=args.keep_parts)
    return _report_result(result, args)


def _cmd_runs(args: argparse.Namespace) -> int:
    from elspeth_beam.inspect.summary import display_url, list_runs

    store = _store(args.landscape_url or args.landscape or DEFAULT_LANDSCAPE)
    runs = list_runs(store, pipeline=args.pipeline, status=args.status)
    if args.json:
        print(json.dumps(runs, indent=2))
        return EXIT_OK
    print(_runs_table(runs) if runs else f"no runs{_runs_filter(args)}")
    print(f"landscape: {display_url(store.url)}")
    return EXIT_OK


def _runs_table(runs: list[dict[str, Any]]) -> str:
    """One line per run; the pipeline column is as wide as its longest settings path."""
    width = max(len("pipeline"), *(len(r["settings_path"] or "-") for r in runs))
    lines = [f"{'run id':<28} {'pipeline':<{width}}  {'status':<11} {'started':<32} {'duration':>9} {'rows':>7}  outcomes"]
    for r in runs:
        took = f"{r['duration_s']:.1f}s" if r["duration_s"] is not None else "-"
        outcomes = " ".join(f"{k}={v}" for k, v in r["outcomes"].items()) or "-"
        lines.append(f"{r['run_id']:<28} {r['settings_path'] or '-':<{width}}  {r['status']:<11} {r['started_at']:<32} "
                     f"{took:>9} {r['rows']:>7}  {outcomes}")
    return "\n".join(lines)


def _runs_filter(args: argparse.Namespace) -> str:
    asked = [f"--{name} {value}" for name, value in (("pipeline", args.pipeline), ("status", args.status)) if value]
    return f" match {' '.join(asked)}" if asked else ""


def _cmd_show(args: argparse.Namespace) -> int:
    from elspeth_beam.inspect.show import render_text, show_run

    store, run_id = _run_store(args)
    details = show_run(store, run_id, top=args.top)
    print(details.model_dump_json(indent=2) if args.json else render_text(details))
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from elspeth_beam.inspect.export import export_run

    store, run_id = _run_store(args)
    manifest = export_run(store, run_id, args.out, args.format, force=args.force)
    for t in manifest.tables.values():
        print(f"{t.file:<28} {t.rows:>9} rows  sha256 {t.sha256}")
    print(f"exported run {run_id} ({manifest.run_status}) to {args.out}/ — check the files against {args.out}/manifest.json")
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace, beam_args: list[str]) -> int:
    """Beam options (as for run) go to both variants, e.g. a Flink cluster's; default the FnApiRunner."""
    from elspeth_beam.bench import bench, render

    report = bench(rows=args.rows, repeat=args.repeat, beam_args=beam_args or None)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return EXIT_OK if report["same_sink_rows"] else EXIT_FAILED


def _cmd_verify(args: argparse.Namespace) -> int:
    from elspeth_beam.inspect.verify import verify_run

    store, run_id = _run_store(args)
    report = verify_run(store, run_id, expected_digest=args.expect_digest)
    print(report.text())
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_prove(args: argparse.Namespace) -> int:
    from elspeth_beam.inspect.prove import prove_row

    store, run_id = _run_store(args)
    proof = prove_row(store, run_id, args.row)
    text = json.dumps(proof.document, indent=1)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        print(f"wrote {args.out}: {proof.records} records of row {args.row} of run {run_id}, with their audit paths to "
              f"{proof.document['root']}; check it with: python tools/check_proof.py {args.out} ROOT (the root as you kept it)")
    else:
        print(text)
    if proof.changed:
        print(f"elspeth-beam: {len(proof.changed)} record(s) of row {args.row} changed since the run's digest, so the proof "
              f"does not check: {'; '.join(proof.changed)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from elspeth_beam.inspect.report import build_report, write_report

    if args.top < 0:
        raise ElspethError(f"--top {args.top}: give the number of reasons to list, 0 or more")
    store, run_id = _run_store(args)
    report = build_report(store, run_id, top_reasons=args.top)
    path = write_report(report, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1024:,.0f} KB): run {run_id} [{report.header.status}], "
          f"{len(report.nodes)} nodes, {report.header.rows_read:,} rows read")
    return EXIT_OK


def _cmd_plugins(args: argparse.Namespace) -> int:
    from elspeth_beam.plugins.catalog import catalog, render_text

    infos = catalog()
    if args.json:
        print(json.dumps([i.model_dump() for i in infos], indent=2))
    else:
        print(render_text(infos), end="")
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace) -> int:
    from elspeth_beam.config.json_schema import schema_text

    print(schema_text(installed=not args.builtin), end="")
    return EXIT_OK


def _quiet_beam_import_noise(record: logging.LogRecord) -> bool:
    """Beam warns about optional Google Cloud libraries on every run; they are not needed."""
    return "apitools not found" not in record.getMessage()


class _BeamOptionError(Exception):
    """Beam's option parser rejected a value (it would otherwise print its usage and exit)."""


def unknown_beam_args(args: Sequence[str]) -> list[str]:
    """The arguments no registered Beam ``PipelineOptions`` class knows: those Beam would drop
    with "Discarding unparseable args" and run on without. Parsed as Beam parses them
    (``PipelineOptions.get_all_options``); a bad value raises ``_BeamOptionError``."""
    import apache_beam  # noqa: F401  (registers every options class a run would see)
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    class Parser(_BeamArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            if not message.startswith("ambiguous option: "):  # Beam ignores these too
                raise _BeamOptionError(message)

    parser = Parser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)  # noqa: SLF001  (Beam's own way to collect its options)
    return parser.parse_known_args(list(args))[1]


def _beam_args(parser: argparse.ArgumentParser, args: argparse.Namespace, unknown: list[str], extra: list[str]) -> list[str]:
    """What goes to Beam: arguments before ``--`` only if Beam knows them, all after it."""
    if args.command not in ("run", "resume", "bench"):
        if unknown or extra:
            parser.error(f"unrecognized arguments: {' '.join(unknown + extra)}")
        return []
    try:
        rejected = unknown_beam_args(unknown)
    except _BeamOptionError as exc:
        parser.error(f"Beam option: {exc}")
    if rejected:
        parser.error(f"{args.command}: unrecognized arguments (neither elspeth-beam's nor Beam's): {' '.join(rejected)}; "
                     "put options only your runner knows after --")
    return unknown + extra


def _setup_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger().addFilter(_quiet_beam_import_noise)
    for handler in logging.getLogger().handlers:  # Beam's own loggers propagate here, past logger filters
        handler.addFilter(_no_told_traceback)


def _no_told_traceback(record: logging.LogRecord) -> bool:
    """Beam logs a failed DoFn's exception with its traceback. Ctrl-C, and an error of our own
    (which says what to fix), get the one line ``main`` prints instead; a bug keeps its traceback."""
    from elspeth_beam.run import _is_interrupt, own_error

    error = record.exc_info[1] if record.exc_info else None
    return error is None or not (_is_interrupt(error) or own_error(error) is not None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    split = argv.index("--") if "--" in argv else len(argv)
    args, unknown = parser.parse_known_args(argv[:split])
    _setup_logging()
    beam_args = _beam_args(parser, args, unknown, argv[split + 1 :])
    commands: dict[str, Callable[[], int]] = {
        "run": lambda: _cmd_run(args, beam_args),
        "resume": lambda: _cmd_resume(args, beam_args),
        "validate": lambda: _cmd_validate(args),
        "explain": lambda: _cmd_explain(args),
        "verify": lambda: _cmd_verify(args),
        "prove": lambda: _cmd_prove(args),
        "runs": lambda: _cmd_runs(args),
        "show": lambda: _cmd_show(args),
        "export": lambda: _cmd_export(args),
        "report": lambda: _cmd_report(args),
        "bench": lambda: _cmd_bench(args, beam_args),
        "plugins": lambda: _cmd_plugins(args),
        "schema": lambda: _cmd_schema(args),
    }
    try:
        return commands[args.command]()
    except RunInterruptedError as exc:
        print(f"elspeth-beam: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # before a run was recorded, or in a command that records nothing
        print("elspeth-beam: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `elspeth-beam runs | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except SettingsError as exc:
        print(f"elspeth-beam: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ElspethError as exc:
        print(f"elspeth-beam: error: {exc}", file=sys.stderr)
        return EXIT_FAILED if isinstance(exc, PipelineFailedError) else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
