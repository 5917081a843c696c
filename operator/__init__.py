"""The ExeGPTDeployment operator (kopf). Submodules import kopf lazily where needed."""
