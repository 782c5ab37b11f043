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


AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


# Issue 12: AWS secret access keys are 40 base64 characters with no prefix of their own, so they
# are found only after a label that names them, and only when they look random.
@pytest.mark.parametrize("text", [
    f"aws_secret_access_key = {AWS_SECRET}",
    f"export AWS_SECRET_ACCESS_KEY={AWS_SECRET}",
    f'{{"AccessKeyId": "AKIAIOSFODNN7EXAMPLE", "SecretAccessKey": "{AWS_SECRET}"}}',
    f"my secret access key is {AWS_SECRET}, is that bad?",
    f"AWS secret key: {AWS_SECRET}",
    f"Access key ID,Secret access key\nAKIAIOSFODNN7EXAMPLE,{AWS_SECRET}\n",
    f"秘密访问密钥：{AWS_SECRET}",
])
def test_aws_secret_access_keys_after_a_label(redactor, text):
    assert AWS_SECRET in found(redactor, text)


@pytest.mark.parametrize("text", [
    f"token {AWS_SECRET}",  # no label: 40 characters alone could be anything
    "aws_secret_access_key = " + "a" * 40,  # a placeholder, not a random key
    "aws_secret_access_key: 3f786850e387550fdab836ed7e6dc881de23001b",  # a hex digest (sha1)
    "AWS_SECRET_ACCESS_KEY=YOURSECRETACCESSKEYGOESHEREPLEASEOKTHANK",
    f"aws_secret_access_key = {AWS_SECRET}X",  # 41 characters: not a key
])
def test_not_aws_secret_access_keys(redactor, text):
    assert found(redactor, text) == []
