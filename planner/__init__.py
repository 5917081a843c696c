"""ExeGPT planner: workloads, profiles, the XSimulator and the XScheduler.

Pure Python on numpy and pydantic: no Kubernetes, no torch, no I/O in the
simulator core.
"""
