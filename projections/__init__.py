"""Read models and planners: pure functions of events."""
