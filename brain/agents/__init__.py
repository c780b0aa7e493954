"""A2A agents: each runs as its own process (`aerie agent run NAME`) over mutual TLS."""
