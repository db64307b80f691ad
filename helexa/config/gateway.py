"""The gateway's sections: ``[gateway]``, ``[auth]`` (with ``[[auth.keys]]``), ``[eviction]``, ``[scheduler]``,
``[cluster]``, ``[batches]`` and ``[[neurons]]``."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from helexa.config.base import ConfigStruct, doc

__all__ = [
    "AuthSection",
    "BatchesSection",
    "ClusterSection",
    "EvictionSection",
    "GatewaySection",
    "KeyEntry",
    "NeuronRef",
    "SchedulerSection",
]


class GatewaySection(ConfigStruct):
    """The gateway's listeners and catalogue."""

    listen: Annotated[str, doc("host:port of the OpenAI + Anthropic API.")] = "127.0.0.1:31313"
    metrics_listen: Annotated[str, doc("host:port of the Prometheus /metrics endpoint.")] = "127.0.0.1:31314"
    allowed_hosts: Annotated[
        list[str],
        doc(
            "Host names clients may reach the gateway by, besides IP addresses, localhost and this machine's own "
            "names (requests naming any other Host are refused: DNS-rebinding protection), e.g. the name a TLS "
            "proxy in front of it serves."
        ),
    ] = []
    bench_db: Annotated[
        str, doc("A helexa bench database whose latest results the fleet page (/ui) shows; empty = none.")
    ] = ""
    catalogue: Annotated[
        str, doc("Path of a models.toml with [[models]] entries, relative to this file; empty = none.")
    ] = ""
    poll_interval_seconds: Annotated[float, doc("How often each neuron's /health and /models are read.", gt=0)] = 5.0
    neuron_timeout_seconds: Annotated[
        float, doc("Timeout of one control call to a neuron (status reads, unloads).", gt=0)
    ] = 10.0
    load_timeout_seconds: Annotated[
        float, doc("How long a cold load may take before waiting requests get an error.", gt=0)
    ] = 900.0
    load_queue_limit: Annotated[
        int,
        doc(
            "Requests of one key that may wait for one model (a load, a swap); more get 503 with Retry-After.",
            ge=1,
        ),
    ] = 64
    keepalive_seconds: Annotated[
        float,
        doc(
            "Streams open at once; while a cold load, a queue or a long prefill keeps the engine silent, a "
            "keep-alive (Anthropic ping, SSE comment) is sent this often, so agents do not time out.",
            gt=0,
        ),
    ] = 10.0
    first_byte_timeout_seconds: Annotated[
        float,
        doc(
            "Longest wait for a neuron's answer to begin (its response head: after a cold load, the engine's "
            "prefill); past it the request fails over to another replica or gets 502; 0 = no limit.",
            ge=0,
        ),
    ] = 0.0
    workers: Annotated[
        int,
        doc(
            "Gateway processes serving the same listen port (SO_REUSEPORT: the kernel spreads connections over "
            "them), one core each; more than 1 needs [cluster] store, through which they share limits, loads and "
            "sessions. Worker i serves its metrics on metrics_listen's port + i.",
            ge=1,
            le=64,
        ),
    ] = 1
    prefix_affinity: Annotated[
        bool,
        doc(
            "Send a conversation's next turn to the replica that served it last (its engine has the prompt prefix "
            "cached) unless that replica has more than 2 requests more in flight than the idlest."
        ),
    ] = True


class KeyEntry(ConfigStruct):
    """One named client key of the gateway, with its scopes and limits."""

    name: Annotated[str, doc("The key's name: what logs and metrics show (never the key itself).")]
    key: Annotated[str, doc("The key clients send; or leave empty and give sha256.")] = ""
    sha256: Annotated[str, doc("The key's SHA-256 as 64 hex digits, so the config holds no secret.")] = ""
    scopes: Annotated[
        list[Literal["inference", "admin"]], doc("inference: the OpenAI/Anthropic APIs; admin: /admin routes.")
    ] = msgspec.field(default_factory=lambda: ["inference"])
    requests_per_minute: Annotated[int, doc("Most requests a minute; more get 429; 0 = no limit.", ge=0)] = 0
    max_concurrent: Annotated[int, doc("Most requests at once; more get 429; 0 = no limit.", ge=0)] = 0
    tokens_per_hour: Annotated[
        int, doc("Most prompt + completion tokens an hour; past it 429 until the hour ends; 0 = no limit.", ge=0)
    ] = 0
    priority: Annotated[
        Literal["interactive", "normal", "batch"],
        doc(
            "How the scheduler treats this key's requests when models must be swapped: higher priorities are "
            "served first and a lower priority never evicts a model a higher one is using (see [scheduler])."
        ),
    ] = "normal"

    def __post_init__(self) -> None:
        if bool(self.key) == bool(self.sha256):
            raise ValueError(f"auth.keys {self.name!r}: give exactly one of key and sha256")
        if self.sha256 and (len(self.sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in self.sha256)):
            raise ValueError(f"auth.keys {self.name!r}: sha256 must be 64 hex digits")


class AuthSection(ConfigStruct):
    """Client authentication on the gateway: inference and admin keys, optionally named, hashed and limited.

    With any key configured, every API route needs one; /admin routes need a key with the admin scope (none
    configured: admin routes are closed).
    """

    api_keys: Annotated[
        list[str],
        doc("Inference keys clients send (Authorization: Bearer or x-api-key). No keys at all = no authentication."),
    ] = []
    admin_keys: Annotated[list[str], doc("Keys for the /admin routes (load and unload models).")] = []
    keys: Annotated[list[KeyEntry], doc("Named keys with scopes and limits ([[auth.keys]]).")] = []


class EvictionSection(ConfigStruct):
    """How the gateway frees room for a cold model."""

    strategy: Annotated[
        Literal["lru", "priority"],
        doc("lru: evict the least recently used model; priority: the lowest priority, then least recent."),
    ] = "lru"
    full_stop_after_unloads: Annotated[
        int,
        doc(
            "Where unloads put engines to sleep (vLLM's sleep tier): after this many load/unload cycles on a neuron "
            "the next unload there stops its engine fully, returning all its memory; 0 = never. Was "
            "defrag_after_cycles.",
            ge=0,
        ),
    ] = 50
    idle_unload_seconds: Annotated[
        float,
        doc(
            "Unload a model nobody used for this long (to the sleep tier where its harness has one, else a stop); "
            "pinned models never; 0 = never. A [[models]] idle_unload_seconds overrides it.",
            ge=0,
        ),
    ] = 0.0


class SchedulerSection(ConfigStruct):
    """How requests wait for capacity when models must be swapped (docs/gateway.md, "Scheduling").

    ``swap-aware`` serves requests for loaded models first and serves every request waiting for a model with
    one load; ``fifo`` serves in arrival order (a swap per request on a mixed workload).
    """

    policy: Annotated[
        Literal["swap-aware", "fifo"],
        doc(
            "swap-aware: requests for loaded models first, one swap serves every request waiting for a model, "
            "fewest swaps; fifo: arrival order."
        ),
    ] = "swap-aware"
    max_queue_wait_seconds: Annotated[
        float,
        doc(
            "With swap-aware: a request that waited this long is served in arrival order (busy models it needs "
            "evicted take no new requests until they drained), so nothing starves.",
            gt=0,
        ),
    ] = 30.0
    priority_hold_seconds: Annotated[
        float,
        doc(
            "A model that a key of higher priority used this recently is never evicted for a request of lower "
            "priority ([[auth.keys]] priority).",
            ge=0,
        ),
    ] = 120.0


class NeuronRef(ConfigStruct):
    """One neuron the gateway talks to: ``[[neurons]]`` is the gateway's list of them (each neuron's own
    settings are its ``[neuron]`` table)."""

    name: Annotated[str, doc("Unique name of the neuron (used in metrics, pinned_on and status).", min_length=1)]
    endpoint: Annotated[str, doc("Base URL of the neuron API, e.g. http://gpu1.internal:13131.")]
    token: Annotated[str, doc("Bearer token the neuron expects (its neuron.token).")] = ""
    token_file: Annotated[
        str,
        doc(
            "A file holding that token, read at start when token is empty: a neuron on the same host keeps it in "
            "its state_dir (the RPM's: /var/lib/helexa/neuron.token)."
        ),
    ] = ""
    group: Annotated[
        str,
        doc(
            "A label for neurons that are close on the network (one switch, one InfiniBand fabric): a gang "
            "([[models]] hosts > 1) is placed within one group when it can be."
        ),
    ] = ""


class ClusterSection(ConfigStruct):
    """Several gateways in front of the same neurons, sharing state through a Valkey or Redis server (docs/ha.md):
    per-key limits, one leader that places every load and eviction, models' last use, the fleet page's sessions.
    Unset, a gateway keeps all of it in its own process."""

    store: Annotated[
        str,
        doc(
            "The shared store: redis://[:password@]host:6379/0 (rediss:// with TLS, unix:///path.sock); Valkey "
            "and Redis both speak it. Empty = this gateway alone, nothing shared."
        ),
    ] = ""
    prefix: Annotated[
        str,
        doc("What every key this fleet keeps in the store starts with (several fleets can share one store)."),
    ] = "helexa"
    name: Annotated[
        str,
        doc("This gateway's name among its peers (logs, /fleet, the leader's name); empty = host:pid."),
    ] = ""
    lease_seconds: Annotated[
        float,
        doc(
            "How long the leader's lease lasts without renewal (it renews three times within it): a leader that "
            "dies is replaced within about this long; one cut off from the store stops placing loads by then.",
            ge=1,
            le=60,
        ),
    ] = 3.0
    gateways: Annotated[
        int,
        doc(
            "How many gateway processes share the fleet (each worker counts), at least; 0 = as many as the store "
            "last showed. While the store does not answer, each enforces limit / gateways of every key's limits: "
            "with this set, a gateway that starts while the store is down does not count itself alone.",
            ge=0,
            le=1024,
        ),
    ] = 0


class BatchesSection(ConfigStruct):
    """The OpenAI Batch API (``/v1/files``, ``/v1/batches``, docs/batches.md): files and batches kept in SQLite in
    ``directory`` (in the cluster's store with ``[cluster] store``), their lines run at batch priority on the
    fleet's idle capacity, resumed after a restart."""

    directory: Annotated[
        str,
        doc(
            "Where uploaded files, batch outputs and their SQLite database live (created at the first upload). "
            "Several gateway processes of one host may share it (one of them runs the batches); not on a network "
            "file system. With [cluster] store, files and batches live in the store and only uploads pass through "
            "here (spool/)."
        ),
    ] = "~/.local/state/helexa/batches"
    max_file_mb: Annotated[int, doc("Largest file one upload may be, in MiB (OpenAI's limit is 200).", ge=1)] = 200
    max_lines: Annotated[int, doc("Most requests one batch may hold (OpenAI's limit is 50,000).", ge=1)] = 50_000
    lines_per_replica: Annotated[
        int,
        doc(
            "Batch requests sent at once to each replica of a batch's model. A line starts only while the "
            "replica serves no other request, so interactive traffic waits for at most this many lines.",
            ge=1,
            le=64,
        ),
    ] = 1
    max_completion_hours: Annotated[
        int, doc("Longest completion_window a batch may ask for, in hours (OpenAI accepts 24h only).", ge=1)
    ] = 168
    keep_files_days: Annotated[
        int,
        doc(
            "Days an uploaded batch file, or a batch's output, is kept when the client does not say otherwise "
            "(expires_after, output_expires_after), as OpenAI keeps them; then it is deleted. 0 keeps them until "
            "they are deleted.",
            ge=0,
            le=3650,
        ),
    ] = 30
