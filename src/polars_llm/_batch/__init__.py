"""Batch mode: the provider's batch API as a sibling of the online engine."""
