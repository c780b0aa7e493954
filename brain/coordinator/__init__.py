"""The coordinator: a LangGraph graph, one durable thread per incident."""
