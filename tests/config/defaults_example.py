"""A service's own config module (the defaults `load()` starts from)."""

DATABASE_URL = "sqlite:///dev.db"
DEBUG = True
WORKERS = 4
lowercase_is_ignored = "not a setting"
