"""The shared aiohttp core: app factory, middlewares, version report and runner. Knows no roles."""
