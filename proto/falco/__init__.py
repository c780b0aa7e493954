"""Falco's gRPC API (outputs, schema, version), compiled from the .proto files beside this."""
