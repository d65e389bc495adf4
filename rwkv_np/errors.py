"""The errors rwkv_np raises on bad input. All are ValueError subclasses, so callers that
already catch ValueError keep working; the CLI turns them into one line on stderr and exit 2."""


class RwkvError(ValueError):
    """Base class: every rejection of user-supplied input by rwkv_np."""


class ConfigError(RwkvError):
    """config.json (or a config dict) is missing, unreadable, or holds impossible values."""


class ModelFileError(RwkvError):
    """A weights / state / tokenizer file is missing, truncated, malformed or disagrees with the config."""


class InputError(RwkvError):
    """An argument to the API (token ids, state, sampling options...) is invalid."""
