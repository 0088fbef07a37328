"""Progress: the bar and the run's counters."""
