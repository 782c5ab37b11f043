import pytest


def found(redactor, text, entity_type="IP_ADDRESS"):
    return [text[e.start:e.end] for e in redactor.detect(text) if e.type == entity_type]


@pytest.mark.parametrize("text, address", [
    ("server 192.168.1.10 is down", "192.168.1.10"),
    ("服务器地址是10.0.0.5，", "10.0.0.5"),
    ("ping 8.8.8.8.", "8.8.8.8"),
    ("login from 2001:db8::8a2e:370:7334 blocked", "2001:db8::8a2e:370:7334"),
    ("link-local fe80::1ff:fe23:4567:890a.", "fe80::1ff:fe23:4567:890a"),
    ("mapped ::ffff:192.0.2.128 here", "::ffff:192.0.2.128"),
])
def test_addresses(redactor, text, address):
    assert found(redactor, text) == [address]


@pytest.mark.parametrize("text", [
    "256.1.1.1", "192.168.1", "version 1.2.3.4.5", "v1.2.3.4", "IP 192.168.01.1", "12:30:45", "std::vector<int>",
    "use a::b here", "MAC 00:1A:2B:3C:4D:5E", "Foo::Bar::baz()", "build 10.0.19041.1",
])
def test_not_addresses(redactor, text):
    assert found(redactor, text) == []
