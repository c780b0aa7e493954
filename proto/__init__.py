"""Wire contracts: Falco's gRPC API, the normalised `FalcoEvent`, and aerie's own envelopes."""

from aerie.proto.event import DecodeError, FalcoEvent, Priority

__all__ = ["DecodeError", "FalcoEvent", "Priority"]
