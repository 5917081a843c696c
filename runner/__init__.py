"""XProfiler and XRunner (torch)."""
