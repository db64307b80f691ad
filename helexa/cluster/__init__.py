"""Several gateways, one fleet: what they share through a Valkey or Redis server (``[cluster] store``).

``store`` (the connection, whether it answers, which gateways are alive), ``lease`` (the one leader that places
loads and evictions), ``limits`` (per-key limits, atomic across gateways), ``exchange`` (what gateways tell each
other: waiting requests, the leader's plan, use of models), ``sessions`` (the fleet page's sign-ins). This room
knows Redis and plain data only — nothing of requests, scheduling or keys' objects — so the gateway and the
server's key guard use it without it using them.
"""
