from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReloadOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RELOAD_OUTCOME_UNSPECIFIED: _ClassVar[ReloadOutcome]
    RELOAD_OUTCOME_UNCHANGED: _ClassVar[ReloadOutcome]
    RELOAD_OUTCOME_ADDED: _ClassVar[ReloadOutcome]
    RELOAD_OUTCOME_UPDATED: _ClassVar[ReloadOutcome]
    RELOAD_OUTCOME_REMOVED: _ClassVar[ReloadOutcome]
    RELOAD_OUTCOME_FAILED: _ClassVar[ReloadOutcome]
RELOAD_OUTCOME_UNSPECIFIED: ReloadOutcome
RELOAD_OUTCOME_UNCHANGED: ReloadOutcome
RELOAD_OUTCOME_ADDED: ReloadOutcome
RELOAD_OUTCOME_UPDATED: ReloadOutcome
RELOAD_OUTCOME_REMOVED: ReloadOutcome
RELOAD_OUTCOME_FAILED: ReloadOutcome

class ReloadModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelReload(_message.Message):
    __slots__ = ("name", "outcome", "version", "error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    outcome: ReloadOutcome
    version: str
    error: str
    def __init__(self, name: _Optional[str] = ..., outcome: _Optional[_Union[ReloadOutcome, str]] = ..., version: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class ReloadModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelReload]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelReload, _Mapping]]] = ...) -> None: ...
