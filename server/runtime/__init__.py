"""What the process holds: engines, lanes, metrics, the store, settings, the clock."""
