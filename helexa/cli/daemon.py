"""``run_daemon()``: turn a role and a config into listening apps, and serve them until stopped.

This is the only module that knows the three roles. ``both`` runs the neuron and the gateway in one loop on
their own ports; the gateway reaches the local neuron over loopback like any remote one, with a bearer token
generated at start when none is configured.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import msgspec

from helexa.config import Config, NeuronRef, parse_listen
from helexa.engine.harness import Harness
from helexa.engine.plugins import get_harnesses, get_plugin_manager, resolve_harness
from helexa.errors import ConfigError
from helexa.gateway.app import make_gateway_app
from helexa.neuron.app import make_neuron_app
from helexa.neuron.demo import with_demo_model
from helexa.server.app import metrics_app, registry_key
from helexa.server.auth import load_or_create_token
from helexa.server.middlewares import quiet_access_key
from helexa.server.runner import Listener, serve
from helexa.server.sdnotify import notify
from helexa.server.version import version_info
from helexa.wire.neuron import AUTO_HARNESS

__all__ = ["ROLES", "Role", "check_harnesses", "connect_host", "prepare", "ready_banner", "run_daemon"]

Role = Literal["gateway", "neuron", "both"]
ROLES: tuple[Role, ...] = ("gateway", "neuron", "both")
LOCAL_NEURON = "local"
logger = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def prepare(cfg: Config, role: Role, *, create_token: bool = True) -> Config:
    """Apply the role's rules to ``cfg``: security checks, the neuron's token (read from, or created in,
    ``state_dir`` unless ``create_token`` is false), and in ``both`` the local neuron.

    :raises ConfigError: a neuron listening beyond loopback without a token.
    """
    if role in ("neuron", "both"):
        cfg = with_demo_model(cfg)
        host, port = parse_listen(cfg.neuron.listen)
        cfg = _with_neuron_token(cfg, host, create=create_token)
    if role in ("gateway", "both"):
        cfg = msgspec.structs.replace(cfg, neurons=[_read_token_file(n) for n in cfg.neurons])
    if role != "both" or any(n.name == LOCAL_NEURON for n in cfg.neurons):
        return cfg
    token = cfg.neuron.token
    if port == 0:
        port = _free_port(host)
    local = NeuronRef(name=LOCAL_NEURON, endpoint=f"http://{connect_host(host)}:{port}", token=token)
    return msgspec.structs.replace(
        cfg,
        neuron=msgspec.structs.replace(cfg.neuron, token=token, listen=f"{host}:{port}"),
        neurons=[local, *cfg.neurons],
    )


def _read_token_file(ref: NeuronRef) -> NeuronRef:
    """``ref`` with its token read from ``token_file`` when it has none (a warning when the file is missing:
    the neuron then answers 401 and shows as down, which its last_error explains)."""
    if ref.token or not ref.token_file:
        return ref
    path = Path(ref.token_file).expanduser()
    try:
        return msgspec.structs.replace(ref, token=path.read_text().strip())
    except OSError as exc:
        logger.warning("neuron %s: cannot read its token from %s: %s", ref.name, path, exc.strerror or exc)
        return ref


def token_path(cfg: Config) -> Path:
    """Where a neuron without a configured token keeps its generated one."""
    return Path(cfg.neuron.state_dir).expanduser() / "neuron.token"


def _with_neuron_token(cfg: Config, host: str, *, create: bool) -> Config:
    """Tokens on by default: a neuron without one uses ``state_dir/neuron.token`` (created on first start).

    :raises ConfigError: ``allow_unauthenticated`` on an address other than loopback, or an unusable state_dir.
    """
    if cfg.neuron.token:
        return cfg
    if cfg.neuron.allow_unauthenticated:
        if not _is_loopback(host):
            raise ConfigError(
                f"neuron.allow_unauthenticated is only allowed on a loopback address, not {cfg.neuron.listen}: "
                "remove it to use a token"
            )
        logger.warning("the neuron runs without a token (allow_unauthenticated): any local program can start engines")
        return cfg
    if not create:
        return msgspec.structs.replace(cfg, neuron=msgspec.structs.replace(cfg.neuron, token="(generated at start)"))
    path = token_path(cfg)
    try:
        token, created = load_or_create_token(path)
    except OSError as exc:
        raise ConfigError(f"neuron.state_dir: cannot keep the neuron token in {path}: {exc.strerror}") from None
    logger.debug("neuron token %s %s", "created in" if created else "read from", path)
    return msgspec.structs.replace(cfg, neuron=msgspec.structs.replace(cfg.neuron, token=token))


def check_harnesses(cfg: Config, role: Role, harnesses: dict[str, type[Harness]]) -> None:
    """Fail fast when the neuron would need a harness that is not installed.

    A neuron checks its default harness and every catalogue model (its own; ``auto`` ones at load time); in
    ``both`` the catalogue may name harnesses that only remote neurons have, so only the default and the
    preloaded models are checked.
    Options are validated against each harness's schema too.

    :raises PluginError: naming the model and listing the installed harnesses.
    """
    if cfg.neuron.default_harness != AUTO_HARNESS:
        resolve_harness(harnesses, cfg.neuron.default_harness, wanted_by="$.neuron.default_harness")
    for i, model in enumerate(cfg.models):
        if (role == "both" and model.id not in cfg.neuron.preload) or model.harness == AUTO_HARNESS:
            continue  # auto: the neuron picks the harness at load time, options are checked then
        harness = resolve_harness(harnesses, model.harness, wanted_by=f"$.models[{i}] ({model.id})")
        harness.parse_options(model.options, model_id=model.id)


def _listeners(cfg: Config, role: Role, worker: int | None = None) -> list[Listener]:
    pm = get_plugin_manager(blocked=cfg.plugins.disabled)
    listeners: list[Listener] = []
    if role in ("neuron", "both"):
        harnesses = get_harnesses(pm)
        check_harnesses(cfg, role, harnesses)
        app = make_neuron_app(cfg, version_info("neuron", pm), harnesses)
        app[quiet_access_key] = role == "both"  # the gateway's access line covers each request
        host, port = parse_listen(cfg.neuron.listen)
        listeners.append(Listener("neuron", app, host, port))
    if role in ("gateway", "both"):
        version = version_info("gateway", pm)
        app = make_gateway_app(cfg, version)
        host, port = parse_listen(cfg.gateway.listen)
        # a worker of several shares the port (SO_REUSEPORT) and serves its metrics on the metrics port + its index
        listeners.append(Listener("gateway", app, host, port, reuse_port=worker is not None))
        metrics = metrics_app(role="gateway", registry=app[registry_key])
        host, port = parse_listen(cfg.gateway.metrics_listen)
        listeners.append(Listener("gateway metrics", metrics, host, port + (worker or 0) if port else 0))
    return listeners


async def run_daemon(
    cfg: Config,
    role: Role,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[dict[str, int]], None] | None = None,
    worker: int | None = None,
) -> None:
    """Serve ``role`` until SIGTERM/SIGINT (or ``stop``), then drain within ``server.shutdown_grace_seconds``;
    ``worker``: this process's index among a gateway's workers (``[gateway] workers``), else ``None``.

    :raises ConfigError: see :func:`prepare`; :class:`helexa.errors.PluginError` for plugin problems.
    """
    generated = role != "gateway" and not cfg.neuron.token and not cfg.neuron.allow_unauthenticated
    cfg = prepare(cfg, role)
    listeners = _listeners(cfg, role, worker)
    if generated:
        logger.info("the neuron's token is in %s; give it to the gateway's [[neurons]] token", token_path(cfg))
    if role == "gateway" and not cfg.neurons:
        logger.warning(
            "this gateway has no [[neurons]]: every model will be 404 until you add your neurons' endpoints and "
            "tokens to its configuration"
        )

    def ready(ports: dict[str, int]) -> None:
        for who, line in ready_banner(cfg, role, ports):
            logger.info("%s", line, extra={"role": who})
        notify(ready=1, status=f"serving on {', '.join(f'{n} :{p}' for n, p in ports.items())}")
        if on_ready is not None:
            on_ready(ports)

    await serve(listeners, grace=cfg.server.shutdown_grace_seconds, stop=stop, on_ready=ready)


def ready_banner(cfg: Config, role: Role, ports: dict[str, int]) -> list[tuple[str, str]]:
    """What a person needs once helexa serves, as ``(role, line)``: where to send requests, where metrics are,
    which models, and a request to try."""
    lines: list[str] = []
    if "gateway" in ports:
        host = connect_host(parse_listen(cfg.gateway.listen)[0])
        api = f"http://{host}:{ports['gateway']}"
        metrics_host = connect_host(parse_listen(cfg.gateway.metrics_listen)[0])
        lines.append(f"gateway ready: OpenAI API {api}/v1, Anthropic API {api}/v1/messages")
        lines.append(f"metrics: http://{metrics_host}:{ports.get('gateway metrics', 0)}/metrics")
        models = [m.id for m in cfg.models]
        lines.append(f"models: {', '.join(models) if models else 'none in the catalogue; see GET /v1/models'}")
        if models:
            body = json.dumps(
                {"model": models[0], "max_tokens": 100, "messages": [{"role": "user", "content": "Hello!"}]}
            )
            key = ' -H "Authorization: Bearer $KEY"' if cfg.auth.api_keys or cfg.auth.keys else ""
            lines.append(f"try: curl -s {api}/v1/chat/completions -H 'content-type: application/json'{key} -d '{body}'")
    banner = [("gateway", line) for line in lines]
    if "neuron" in ports:
        host = connect_host(parse_listen(cfg.neuron.listen)[0])
        auth = "no token (allow_unauthenticated)" if not cfg.neuron.token else "bearer token required"
        banner.append(
            ("neuron", f"neuron ready: http://{host}:{ports['neuron']} ({auth}; GET /models lists its models)")
        )
    return banner


def connect_host(host: str) -> str:
    """The address a client on this host uses for a listener bound to ``host`` (wildcards → loopback)."""
    host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    return f"[{host}]" if ":" in host else host
