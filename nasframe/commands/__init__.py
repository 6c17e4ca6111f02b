"""Subcommands of ``nasframe``: each module defines ``register(subparsers)``.

``register`` adds a parser with ``subparsers.add_parser(name, help=..., description=...)``
and sets ``func`` (``parser.set_defaults(func=run)``, ``run(args) -> int | None``).
``nasframe.cli`` imports every module here; raise ``NasframeError`` for user errors.
"""
