"""pytest-expire: a hang detector for pytest, on an expiration-timer library.

The library is :mod:`pytest_expire.timer`.

PYTEST_DONT_REWRITE: a process started during a session imports this package
as it starts (``startup``), before pytest can rewrite its assertions, and
pytest would warn about that in every pytest run a test starts; the plugin's
assertions check its own invariants and need no rewriting.
"""

__version__ = "0.1.0.dev0"
