"""SBDX/1 securities-bank e-CNY message-exchange gateway."""

__version__ = "0.1.0"
