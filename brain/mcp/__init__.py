"""aerie's MCP side: the servers agents call as tools, and how agents call them.

* `aerie.brain.mcp.attack` — the MITRE ATT&CK table (its one home);
* `aerie.brain.mcp.attack_server` — ``aerie-attack``, that table as MCP tools with input and output schemas;
* `aerie.brain.mcp.serving` — `McpService`: any MCP server over streamable HTTP with mutual TLS and a
  caller-identity allow-list, one JSON log line per tool call;
* `aerie.brain.mcp.client` — `McpCaller`: an agent's calls, with its own certificate, the trace carried
  in ``params._meta`` and the ``traceparent`` header, retries, and the MCP latency metric;
* `aerie.brain.mcp.trace` — the traceparent of the request being served (no SDK import: the agent
  service uses it).

Run a server with ``aerie mcp run NAME`` (`aerie.brain.mcp_cli`). Importing this package imports
nothing else: modules load the SDK only when used.
"""
