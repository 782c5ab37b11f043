import pytest


def found(redactor, text):
    return [text[e.start:e.end] for e in redactor.detect(text) if e.type == "SECRET"]


PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\nKUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ==\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize("text, secret", [
    ("my key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z, why?", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"),
    ("export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("token ghp_" + "a1B2c3D4e5" * 3 + "a1B2c3", "ghp_" + "a1B2c3D4e5" * 3 + "a1B2c3"),
    ("Authorization: Bearer 8f3b2a9c1d4e5f60718293a4b5c6d7e8.", "8f3b2a9c1d4e5f60718293a4b5c6d7e8"),
    ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    ("xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
    ("password: Hunter2024!", "Hunter2024!"),
    ('{"password": "s3cr3t-pa55"}', "s3cr3t-pa55"),
    ("密码：Passw0rd99，", "Passw0rd99"),
    (f"here:\n{PEM}\nthanks", PEM),
    ("-----BEGIN PRIVATE KEY-----\nMIIBVAIBADANBgkqhkiG9w0BAQEFAASCAT4w", "-----BEGIN PRIVATE KEY-----\nMIIBVAIBADANBgkqhkiG9w0BAQEFAASCAT4w"),
])
def test_secrets(redactor, text, secret):
    assert found(redactor, text) == [secret]


@pytest.mark.parametrize("text", [
    "sk-short key", "a task-based approach", "the bearer of good news", "password: required", "AKIA is a prefix",
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUX\n-----END CERTIFICATE-----", "max_tokens=1024",
    "please reset the password.", "密码错误，请重试",
])
def test_not_secrets(redactor, text):
    assert found(redactor, text) == []
