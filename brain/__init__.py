"""The central brain: consumer, coordinator, agents, MCP servers, ChatOps, audit, and the command line."""
