"""OWLLM's version, in the lowest layer so that every module may name it."""

__version__ = "0.1.0"
