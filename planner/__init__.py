"""planner: GPU memory and resource planner for training large language models."""

__version__ = "0.1.0"
