"""ExeGPT: constraint-aware LLM inference scheduling on Kubernetes."""

__version__ = "0.1.0"
