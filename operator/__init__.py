"""The ExeGPTDeployment operator (kopf). Submodules import kopf lazily where needed."""

if __name__ == "operator":  # pragma: no cover
    # This folder is `exegpt.operator`; it was found under the standard library's name
    # because the current directory is a checkout's root. Import the standard library's
    # `operator` in its place: an import returns whatever sys.modules then holds.
    import os
    import sys

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _path = sys.path
    sys.path = [p for p in _path if os.path.abspath(p or os.curdir) != _root]
    del sys.modules["operator"]
    try:
        import operator  # noqa: F401  (the standard library's)
    finally:
        sys.path = _path
