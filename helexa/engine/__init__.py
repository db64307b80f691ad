"""The engine side: the harness contract plugins implement (``harness``), engines as processes (``process``,
``supervisor``, ``ports``), and plugin loading (``hookspecs``, ``plugins``)."""
