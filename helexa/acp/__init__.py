"""``helexa acp``: an Agent Client Protocol agent over stdio that lets ACP editors (Zed and others) use any
OpenAI-compatible endpoint — a helexa gateway by default — with file and shell tools behind permission requests.

A client of the gateway like ``helexa bench``: it talks HTTP to ``/v1/models`` and ``/v1/chat/completions``
and imports only helexa's shared helpers, never the gateway's or the neuron's internals. Tool calls that small
models write as text are repaired by the gateway (``helexa/translate/toolcalls.py``), not here.

Modules: :mod:`.tools` (what the model may call, confined to the session's directory), :mod:`.editor` (files and
commands through the editor or locally), :mod:`.upstream` (the streaming chat client), :mod:`.sessions`
(session state and its optional on-disk store), :mod:`.agent` (the ACP methods), :mod:`.present` (what
the editor and the model are shown), :mod:`.transport`
(newline-delimited JSON-RPC framing that answers malformed input), :mod:`.serve` (stdio and wiring).
"""
