"""Helpers shared by every layer: atomic files, locks, process liveness, interrupts, number formatting."""
