"""Built-in search strategies, installed as ``nasframe.strategies``.

Each is registered through the ``nasframe.strategies`` entry-point group in pyproject.toml,
exactly as a third-party plugin would be; nothing here imports them eagerly, so a broken or
slow plugin costs nothing until it is asked for (``nf.get_strategy(name)``).
"""
