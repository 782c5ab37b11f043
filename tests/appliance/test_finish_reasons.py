"""The finish reasons are named once (appliance.finish_reasons); engine, wire and client agree."""

from appliance import finish_reasons
from appliance.client import FINISH_REASONS as CLIENT_REASONS, chunk_from
from appliance.engine.request import FINISH_REASONS as ENGINE_REASONS, RequestStatus, TokenEvent
from appliance.server.convert import generate_response
from appliance.v1 import inference_pb2 as pb


def test_every_finished_state_has_one_of_the_named_reasons():
    finished = {s for s in RequestStatus if s.finished}
    assert set(ENGINE_REASONS) == finished
    assert set(ENGINE_REASONS.values()) == set(finish_reasons.WIRE_NAMES) | {finish_reasons.ERROR}


def test_every_wire_reason_survives_the_trip_from_engine_to_client():
    wire_values = {v for v in pb.FinishReason.values() if v != pb.FINISH_REASON_UNSPECIFIED}
    assert set(CLIENT_REASONS) == wire_values
    for reason in finish_reasons.WIRE_NAMES:
        message = generate_response(TokenEvent((), "", finish_reason=reason), "")
        assert pb.FinishReason.Name(message.finish_reason) == finish_reasons.WIRE_NAMES[reason]
        assert chunk_from(message).finish_reason == reason
