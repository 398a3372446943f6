"""Pure domain: events, aggregates and errors. No I/O, no clock."""
