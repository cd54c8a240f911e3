"""pytest-expire: a hang detector for pytest, on an expiration-timer library.

The library is :mod:`pytest_expire.timer`.
"""

__version__ = "0.1.0.dev0"
