"""watchdog: an asyncio concurrency gateway that forks a function per HTTP request."""

__version__ = "0.1.0"
