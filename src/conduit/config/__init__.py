"""Configuration: the schema (pydantic models) and the loader (file + env -> Config)."""

from conduit.config.loader import LoadedConfig, load_config
from conduit.config.schema import Config, Credentials, UpstreamConfig

__all__ = ["Config", "Credentials", "LoadedConfig", "UpstreamConfig", "load_config"]
