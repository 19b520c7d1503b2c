"""Experiment configs: one `get_config(arg)` per file, built from `configs.common` blocks."""
