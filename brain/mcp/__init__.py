"""MCP servers the agents call (tools with input and output schemas), and the client that calls them."""
