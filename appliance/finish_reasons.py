"""Why a generation stream ended: the names defined once for the engine, the wire and the client.

Kept free of imports so that the client can use it without the engine's modules.
"""

STOP = "stop"
LENGTH = "length"
CANCELLED = "cancelled"
DEADLINE = "deadline"
# Never sent as a finish reason: an engine error ends the RPC with a gRPC status instead.
ERROR = "error"

# The reasons a stream's last message carries, as appliance.v1.FinishReason names them.
WIRE_NAMES = {reason: f"FINISH_REASON_{reason.upper()}" for reason in (STOP, LENGTH, CANCELLED, DEADLINE)}
