"""The redaction policy names are defined once (appliance.redact.policies); config, keys, the
wire and the redaction stage all take theirs from there."""

import pytest

from appliance.redact.policies import INPUT_POLICIES, OUTPUT_POLICIES, InputPolicy, OutputPolicy
from appliance.server import convert
from appliance.server.config import RedactionConfig
from appliance.server.keys import KeyRights
from appliance.v1 import inference_pb2 as pb


def test_names_are_the_enum_values_in_order():
    assert INPUT_POLICIES == ("off", "redact", "pseudonymize") == tuple(p.value for p in InputPolicy)
    assert OUTPUT_POLICIES == ("off", "redact", "restore") == tuple(p.value for p in OutputPolicy)


def test_config_and_keys_allow_every_policy_by_default():
    assert RedactionConfig().allowed_input == INPUT_POLICIES
    assert RedactionConfig().allowed_output == OUTPUT_POLICIES
    assert (KeyRights().input_policies, KeyRights().output_policies) == (INPUT_POLICIES, OUTPUT_POLICIES)


def test_config_refuses_a_name_that_is_not_a_policy():
    with pytest.raises(ValueError, match="input"):
        RedactionConfig(input="scramble")


@pytest.mark.parametrize("name", INPUT_POLICIES)
def test_every_input_policy_is_read_from_the_wire(name):
    wire = pb.InputPolicy.Value(f"INPUT_POLICY_{name.upper()}")
    request = pb.GenerateRequest(redaction=pb.RedactionOptions(input=wire))
    assert convert.redaction_policies(request) == (name, None)


@pytest.mark.parametrize("name", OUTPUT_POLICIES)
def test_every_output_policy_is_read_from_the_wire(name):
    wire = pb.OutputPolicy.Value(f"OUTPUT_POLICY_{name.upper()}")
    request = pb.GenerateRequest(redaction=pb.RedactionOptions(output=wire))
    assert convert.redaction_policies(request) == (None, name)
