"""Operating-system helpers shared by every layer: atomic files, locks, process liveness, interrupts."""
