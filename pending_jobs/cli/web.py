"""`pending-jobs web`: the operator console (needs the `web` extra, imported only when this runs)."""

from __future__ import annotations

import argparse
from typing import TypeAlias

from .. import config, migrate
from ..errors import EXIT_CONFIG, EXIT_OK, ConfigError
from . import common

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def register(commands: Commands) -> None:
    p = commands.add_parser("web", help="serve the operator console (pip install './pending-jobs[web]')")
    common.add_common(p)
    p.add_argument("--host", help=config.env_help("web_host", config.WEB_SETTINGS))
    p.add_argument("--port", type=common.INTEGER, help=config.env_help("web_port", config.WEB_SETTINGS))
    p.add_argument("--read-only", action="store_const", const=True, default=None,
                   help=config.env_help("web_read_only", config.WEB_SETTINGS))
    p.set_defaults(func=cmd_web)


def cmd_web(args: argparse.Namespace) -> int:
    try:  # the web extra, imported only by this command
        import uvicorn

        from ..web.app import create_app
        from ..web.push import PushSettings, push_mount
        from ..web.security import refusal
    except ImportError as error:
        missing = (error.name or str(error)).split(".")[0]
        common.eprint(f"the console needs the web extra ({missing} is missing): "
                      "pip install './pending-jobs[web]'")
        return EXIT_CONFIG
    settings = common.settings_from(args)
    web = config.load_web({"host": args.host, "port": args.port, "read_only": args.read_only},
                          config_file=getattr(args, "config", None))
    problem = refusal(web)
    if problem:
        raise ConfigError(problem)
    engine, store = common.open_database(settings, pool_size=8)
    migrate.require_head(engine)
    shown = f"[{web.host}]" if ":" in web.host else web.host
    common.log.warning("console on http://%s:%d/%s", shown, web.port, " (read-only)" if web.read_only else "")
    if web.push_secret:  # the push endpoints are served only when the application can mint tokens
        push = PushSettings(web.push_secret, web.allowed_origins, poll_interval=web.push_poll_interval)
        routes, lifespan, _hub = push_mount(push, store)
        app = create_app(web, store, extra_routes=routes, lifespan=lifespan)
    else:
        app = create_app(web, store)
    uvicorn.run(app, host=web.host, port=web.port, log_level="warning",
                timeout_graceful_shutdown=3)
    return EXIT_OK
