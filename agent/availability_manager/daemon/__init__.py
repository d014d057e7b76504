"""The asyncio runtime of the agent: sockets, timers, kernel, control, metrics."""
