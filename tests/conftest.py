"""Shared pytest configuration. Test helpers live in ``builders.py`` beside this file
(importable as ``builders``: pytest puts this directory on ``sys.path``)."""
