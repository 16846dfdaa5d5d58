import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_CURRENT: _ClassVar[Stage]
    STAGE_PREVIOUS: _ClassVar[Stage]
    STAGE_PENDING: _ClassVar[Stage]
    STAGE_RETIRED: _ClassVar[Stage]

class RotationReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROTATION_REASON_UNSPECIFIED: _ClassVar[RotationReason]
    ROTATION_REASON_INITIAL: _ClassVar[RotationReason]
    ROTATION_REASON_SCHEDULED: _ClassVar[RotationReason]
    ROTATION_REASON_MANUAL: _ClassVar[RotationReason]
    ROTATION_REASON_WRITTEN: _ClassVar[RotationReason]
    ROTATION_REASON_ROLLBACK: _ClassVar[RotationReason]
    ROTATION_REASON_ROTATION_DUE: _ClassVar[RotationReason]
    ROTATION_REASON_ROTATION_FAILED: _ClassVar[RotationReason]
STAGE_UNSPECIFIED: Stage
STAGE_CURRENT: Stage
STAGE_PREVIOUS: Stage
STAGE_PENDING: Stage
STAGE_RETIRED: Stage
ROTATION_REASON_UNSPECIFIED: RotationReason
ROTATION_REASON_INITIAL: RotationReason
ROTATION_REASON_SCHEDULED: RotationReason
ROTATION_REASON_MANUAL: RotationReason
ROTATION_REASON_WRITTEN: RotationReason
ROTATION_REASON_ROLLBACK: RotationReason
ROTATION_REASON_ROTATION_DUE: RotationReason
ROTATION_REASON_ROTATION_FAILED: RotationReason

class InitializeSecretsRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class SkippedSecret(_message.Message):
    __slots__ = ("name", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class InitializeSecretsResponse(_message.Message):
    __slots__ = ("master_user_id", "is_master", "generated", "already_present", "skipped")
    MASTER_USER_ID_FIELD_NUMBER: _ClassVar[int]
    IS_MASTER_FIELD_NUMBER: _ClassVar[int]
    GENERATED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    master_user_id: str
    is_master: bool
    generated: _containers.RepeatedScalarFieldContainer[str]
    already_present: _containers.RepeatedScalarFieldContainer[str]
    skipped: _containers.RepeatedCompositeFieldContainer[SkippedSecret]
    def __init__(self, master_user_id: _Optional[str] = ..., is_master: _Optional[bool] = ..., generated: _Optional[_Iterable[str]] = ..., already_present: _Optional[_Iterable[str]] = ..., skipped: _Optional[_Iterable[_Union[SkippedSecret, _Mapping]]] = ...) -> None: ...

class GetSecretRequest(_message.Message):
    __slots__ = ("name", "version", "stage")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    stage: Stage
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., stage: _Optional[_Union[Stage, str]] = ...) -> None: ...

class GetSecretResponse(_message.Message):
    __slots__ = ("name", "value", "version", "stage", "created_at", "next_rotation_due", "expires_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    NEXT_ROTATION_DUE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    version: int
    stage: Stage
    created_at: _timestamp_pb2.Timestamp
    next_rotation_due: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ..., version: _Optional[int] = ..., stage: _Optional[_Union[Stage, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_rotation_due: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RotateSecretRequest(_message.Message):
    __slots__ = ("name", "expected_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    expected_version: int
    def __init__(self, name: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class VersionInfo(_message.Message):
    __slots__ = ("name", "version", "stage", "created_at", "reason", "next_rotation_due", "value_kept", "expires_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NEXT_ROTATION_DUE_FIELD_NUMBER: _ClassVar[int]
    VALUE_KEPT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    stage: Stage
    created_at: _timestamp_pb2.Timestamp
    reason: RotationReason
    next_rotation_due: _timestamp_pb2.Timestamp
    value_kept: bool
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., stage: _Optional[_Union[Stage, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[_Union[RotationReason, str]] = ..., next_rotation_due: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., value_kept: _Optional[bool] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RotateSecretResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: VersionInfo
    def __init__(self, version: _Optional[_Union[VersionInfo, _Mapping]] = ...) -> None: ...

class WatchRotationsRequest(_message.Message):
    __slots__ = ("since_event_id", "names")
    SINCE_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    since_event_id: int
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, since_event_id: _Optional[int] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...

class RotationEvent(_message.Message):
    __slots__ = ("event_id", "name", "old_version", "new_version", "reason", "rotated_at")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OLD_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ROTATED_AT_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    name: str
    old_version: int
    new_version: int
    reason: RotationReason
    rotated_at: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[int] = ..., name: _Optional[str] = ..., old_version: _Optional[int] = ..., new_version: _Optional[int] = ..., reason: _Optional[_Union[RotationReason, str]] = ..., rotated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListSecretsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SecretInfo(_message.Message):
    __slots__ = ("name", "current_version", "rotation_interval_days", "last_rotated_at", "next_rotation_due", "imported", "written", "overdue", "consumers_by_version", "rotator", "rotation_pending", "rotation_failed", "rotation_failure")
    class ConsumersByVersionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROTATION_INTERVAL_DAYS_FIELD_NUMBER: _ClassVar[int]
    LAST_ROTATED_AT_FIELD_NUMBER: _ClassVar[int]
    NEXT_ROTATION_DUE_FIELD_NUMBER: _ClassVar[int]
    IMPORTED_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    OVERDUE_FIELD_NUMBER: _ClassVar[int]
    CONSUMERS_BY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROTATOR_FIELD_NUMBER: _ClassVar[int]
    ROTATION_PENDING_FIELD_NUMBER: _ClassVar[int]
    ROTATION_FAILED_FIELD_NUMBER: _ClassVar[int]
    ROTATION_FAILURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    current_version: int
    rotation_interval_days: int
    last_rotated_at: _timestamp_pb2.Timestamp
    next_rotation_due: _timestamp_pb2.Timestamp
    imported: bool
    written: bool
    overdue: bool
    consumers_by_version: _containers.ScalarMap[int, int]
    rotator: str
    rotation_pending: bool
    rotation_failed: bool
    rotation_failure: str
    def __init__(self, name: _Optional[str] = ..., current_version: _Optional[int] = ..., rotation_interval_days: _Optional[int] = ..., last_rotated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_rotation_due: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., imported: _Optional[bool] = ..., written: _Optional[bool] = ..., overdue: _Optional[bool] = ..., consumers_by_version: _Optional[_Mapping[int, int]] = ..., rotator: _Optional[str] = ..., rotation_pending: _Optional[bool] = ..., rotation_failed: _Optional[bool] = ..., rotation_failure: _Optional[str] = ...) -> None: ...

class ListSecretsResponse(_message.Message):
    __slots__ = ("secrets",)
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    secrets: _containers.RepeatedCompositeFieldContainer[SecretInfo]
    def __init__(self, secrets: _Optional[_Iterable[_Union[SecretInfo, _Mapping]]] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("name", "caller", "action", "outcome", "since", "until", "page_size", "page_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    caller: str
    action: str
    outcome: str
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, name: _Optional[str] = ..., caller: _Optional[str] = ..., action: _Optional[str] = ..., outcome: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("id", "at", "caller", "action", "name", "version", "outcome", "detail")
    ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    id: int
    at: _timestamp_pb2.Timestamp
    caller: str
    action: str
    name: str
    version: int
    outcome: str
    detail: str
    def __init__(self, id: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., caller: _Optional[str] = ..., action: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., outcome: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PutSecretRequest(_message.Message):
    __slots__ = ("name", "value", "expected_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    expected_version: int
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class PutSecretResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: VersionInfo
    def __init__(self, version: _Optional[_Union[VersionInfo, _Mapping]] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[VersionInfo]
    def __init__(self, versions: _Optional[_Iterable[_Union[VersionInfo, _Mapping]]] = ...) -> None: ...

class RollbackSecretRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class RollbackSecretResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: VersionInfo
    def __init__(self, version: _Optional[_Union[VersionInfo, _Mapping]] = ...) -> None: ...

class ReportVersionsRequest(_message.Message):
    __slots__ = ("consumer_id", "versions")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CONSUMER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    consumer_id: str
    versions: _containers.ScalarMap[str, int]
    def __init__(self, consumer_id: _Optional[str] = ..., versions: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ReportVersionsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
