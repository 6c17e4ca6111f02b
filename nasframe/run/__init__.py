"""The run layer: configurations (pydantic models, presets, TOML files, overrides), the run
directory both loops keep, and the one resume policy. It builds no model: it imports only the
base and the DSL."""
