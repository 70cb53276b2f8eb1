"""PEFT Hub server: registry, storage, jobs."""

__version__ = "0.1.0"
