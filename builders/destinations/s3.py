"""An S3-compatible bucket (``{"type": "s3", "name": "us-east-1", "bucket": "images", "region": "us-east-1",
"endpoint_url": "http://127.0.0.1:9000", "prefix": "stemcells/"}``).

Credentials come from the standard AWS chain (environment, ``AWS_PROFILE``/``profile``, shared files, instance
roles); they are never part of the config and never logged.

Staging is a multipart upload to the final key that is not completed yet, so nothing is visible: every part carries
``Content-MD5`` and ``ChecksumSHA256`` (the service refuses a part whose bytes differ). Commit completes the upload
(atomic: the object appears whole or not at all) and then proves it: the ETag must be the multipart ETag of the parts
sent, a ``ChecksumSHA256`` the service reports must match (whole-object or composite), the ``sha256`` metadata must
be the source's, and a streamed GET is re-hashed. A cancelled or failed stage aborts the multipart upload. The copy's
id is ``s3://bucket/key``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import threading
import uuid
from typing import Any, ClassVar, Final

from builders.destinations import (
    BACKUP_MARK,
    CHUNK,
    Committed,
    CopyCheck,
    Destination,
    DestinationError,
    SourceImage,
    Staged,
    TransferCancelled,
    TransferIO,
)
from builders.registry import closed_object
from stemforge_base import aws

MIB: Final = 1024 * 1024
DEFAULT_PART_MIB: Final = 16
#: S3 answers worth another attempt of a transfer on top of the shared AWS set (``stemforge_base.aws``): a part whose
#: bytes were damaged on the way (``BadDigest``, ``XAmzContentSHA256Mismatch``), a clock skew the next signing may
#: not have, and a conflicting operation on the same key that has since ended (``OperationAborted``).
_S3_TRANSFER_RETRY_CODES: Final = frozenset({
    "BadDigest", "XAmzContentSHA256Mismatch", "RequestTimeTooSkewed", "OperationAborted",
})
_SESSION_LOCK: Final = threading.Lock()  # boto3 sessions are not thread-safe to create


class S3Destination(Destination):
    """Publish to one bucket (and key prefix) of an S3-compatible service."""

    type_name: ClassVar[str] = "s3"
    options_schema: ClassVar[dict[str, Any]] = closed_object(
        {
            "bucket": {"type": "string", "minLength": 3, "maxLength": 63},
            "region": {"type": "string", "minLength": 1},
            "endpoint_url": {"type": "string", "pattern": "^https?://"},
            "prefix": {"type": "string"},
            "profile": {"type": "string", "minLength": 1},
            "part_size_mb": {"type": "integer", "minimum": 5, "maximum": 5120},
            "force_path_style": {"type": "boolean"},
            "timeout": {"type": "number", "exclusiveMinimum": 0},
        }, required=["bucket"])

    def __init__(self, name: str, config: Any) -> None:
        super().__init__(name, config)
        self.bucket = str(self.config.get("bucket", ""))
        prefix = str(self.config.get("prefix", "")).lstrip("/")
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.part_size = int(self.config.get("part_size_mb", DEFAULT_PART_MIB)) * MIB
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            timeout = float(self.config.get("timeout", 60))
            options: dict[str, Any] = {
                "retries": {"max_attempts": 3, "mode": "standard"},
                "connect_timeout": timeout,
                "read_timeout": timeout,
            }
            if self.config.get("force_path_style"):
                options["s3"] = {"addressing_style": "path"}
            with _SESSION_LOCK:
                session = boto3.session.Session(profile_name=self.config.get("profile"))
                self._client = session.client("s3", region_name=self.config.get("region"),
                                              endpoint_url=self.config.get("endpoint_url"), config=Config(**options))
        return self._client

    def describe(self) -> str:
        where = self.config.get("endpoint_url") or self.config.get("region") or "default region"
        return f"s3 s3://{self.bucket}/{self.prefix} ({where})"

    def key(self, image_name: str) -> str:
        return f"{self.prefix}{image_name}"

    def image_id(self, image_name: str) -> str:
        return f"s3://{self.bucket}/{self.key(image_name)}"

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001 - classified below
            if _status(exc) == 404 or _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise _error(f"cannot look up {self.image_id(key[len(self.prefix):])}", exc) from exc
        return True

    # -- phase 0 ------------------------------------------------------------------------------------------
    def preflight(self, source: SourceImage, image_name: str, replace: bool) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001
            raise _error(f"bucket {self.bucket} is not usable", exc) from exc
        if not replace and self._exists(self.key(image_name)):
            raise DestinationError(f"{self.image_id(image_name)} already exists (use -force to replace it)")

    # -- phase 1 ------------------------------------------------------------------------------------------
    def stage(self, source: SourceImage, image_name: str, io: TransferIO) -> Staged:
        key = self.key(image_name)
        try:
            upload = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256", ContentType="application/octet-stream",
                Metadata={"sha256": source.sha256})
        except Exception as exc:  # noqa: BLE001
            raise _error(f"cannot start the upload of {self.image_id(image_name)}", exc) from exc
        staged = Staged(image_name, {"key": key, "upload_id": upload["UploadId"], "parts": []})
        try:
            io.phase("upload")
            staged.bytes_written = self._upload_parts(source, staged, io)
        except BaseException:
            self.discard(staged)
            raise
        return staged

    def _upload_parts(self, source: SourceImage, staged: Staged, io: TransferIO) -> int:
        parts: list[dict[str, Any]] = staged.handle["parts"]
        md5s: list[bytes] = []
        sha_digests: list[bytes] = []
        sent = 0
        with open(source.path, "rb") as fh:
            number = 1
            while sent < source.size or number == 1:
                io.check()
                data = fh.read(min(self.part_size, source.size - sent))
                if not data and source.size:
                    raise DestinationError(f"{source.path} shrank while it was being uploaded")
                md5 = hashlib.md5(data, usedforsecurity=False).digest()
                sha = hashlib.sha256(data).digest()
                try:
                    answer = self.client.upload_part(
                        Bucket=self.bucket, Key=staged.handle["key"], UploadId=staged.handle["upload_id"],
                        PartNumber=number, Body=data, ContentMD5=_b64(md5), ChecksumSHA256=_b64(sha))
                except Exception as exc:  # noqa: BLE001
                    raise _error(f"upload of part {number} to {self.image_id(staged.image_name)} failed", exc) \
                        from exc
                etag = str(answer.get("ETag", "")).strip('"')
                if etag and etag != md5.hex():
                    raise DestinationError(f"part {number} of {self.image_id(staged.image_name)}: the service "
                                           f"stored ETag {etag}, the part's md5 is {md5.hex()}", transient=True)
                parts.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": _b64(sha)})
                md5s.append(md5)
                sha_digests.append(sha)
                sent += len(data)
                io.progress(sent)
                number += 1
                if not data:
                    break
        staged.handle["etag"] = f"{hashlib.md5(b''.join(md5s), usedforsecurity=False).hexdigest()}-{len(md5s)}"
        staged.handle["composite"] = _b64(hashlib.sha256(b"".join(sha_digests)).digest())
        staged.handle["parts_count"] = len(md5s)
        staged.handle["sha256"] = source.sha256
        return sent

    def discard(self, staged: Staged) -> None:
        upload_id = staged.handle.pop("upload_id", None)
        if upload_id is None:
            return
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=staged.handle["key"], UploadId=upload_id)
        except Exception as exc:  # noqa: BLE001
            if _code(exc) != "NoSuchUpload":
                staged.handle["upload_id"] = upload_id
                raise _error(f"cannot abort the upload of {self.image_id(staged.image_name)}", exc) from exc

    # -- phase 2 ------------------------------------------------------------------------------------------
    def commit(self, staged: Staged, replace: bool) -> Committed:
        key = staged.handle["key"]
        backup: str | None = None
        if self._exists(key):
            if not replace:
                raise DestinationError(f"{self.image_id(staged.image_name)} appeared while the image was being "
                                       "published; not replacing it")
            backup = f"{self.prefix}{BACKUP_MARK}{uuid.uuid4().hex[:12]}-{staged.image_name}"
            self._copy(key, backup)
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=staged.handle["upload_id"],
                MultipartUpload={"Parts": staged.handle["parts"]})
        except Exception as exc:  # noqa: BLE001
            if backup is not None:
                with contextlib.suppress(Exception):
                    self.client.delete_object(Bucket=self.bucket, Key=backup)
            raise _error(f"cannot complete the upload of {self.image_id(staged.image_name)}", exc) from exc
        staged.handle.pop("upload_id", None)
        committed = Committed(staged.image_name, self.image_id(staged.image_name), backup, staged.bytes_written)
        problem = self._metadata_problem(staged)
        if problem:
            self.rollback(committed)
            raise DestinationError(f"{self.image_id(staged.image_name)}: {problem}")
        return committed

    def _metadata_problem(self, staged: Staged) -> str | None:
        """Compare what the service reports about the completed object with what was sent."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=staged.handle["key"], ChecksumMode="ENABLED")
        except Exception as exc:  # noqa: BLE001
            return f"cannot read back its metadata: {_describe(exc)}"
        etag = str(head.get("ETag", "")).strip('"')
        if etag and "-" in etag and etag != staged.handle["etag"]:
            return f"ETag {etag} differs from the multipart ETag of the parts sent ({staged.handle['etag']})"
        reported = head.get("ChecksumSHA256")
        if reported:
            full = _b64(bytes.fromhex(staged.handle["sha256"]))
            composite = staged.handle["composite"]
            if reported not in (full, composite, f"{composite}-{staged.handle['parts_count']}"):
                return f"ChecksumSHA256 {reported} matches neither the image ({full}) nor its parts ({composite})"
        metadata = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
        if metadata.get("sha256") not in (None, staged.handle["sha256"]):
            return f"sha256 metadata {metadata.get('sha256')} differs from the source's"
        return None

    def _copy(self, source_key: str, target_key: str) -> None:
        try:
            self.client.copy({"Bucket": self.bucket, "Key": source_key}, self.bucket, target_key)
        except Exception as exc:  # noqa: BLE001
            raise _error(f"cannot copy s3://{self.bucket}/{source_key} to {target_key}", exc) from exc

    def rollback(self, committed: Committed) -> None:
        key = self.key(committed.image_name)
        try:
            if committed.backup:
                self._copy(committed.backup, key)
                self.client.delete_object(Bucket=self.bucket, Key=committed.backup)
            else:
                self.client.delete_object(Bucket=self.bucket, Key=key)
        except DestinationError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _error(f"cannot roll back {committed.id}", exc) from exc

    def finalize(self, committed: Committed) -> None:
        if committed.backup:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=committed.backup)
            except Exception as exc:  # noqa: BLE001
                raise _error(f"cannot delete the replaced copy s3://{self.bucket}/{committed.backup}", exc) from exc

    # -- proof --------------------------------------------------------------------------------------------
    def check(self, image_name: str, expected_sha256: str | None, io: TransferIO) -> CopyCheck:
        key = self.key(image_name)
        ident = self.image_id(image_name)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            if _status(exc) == 404:
                return CopyCheck(self.name, ident, False, None, None, False, "missing")
            return CopyCheck(self.name, ident, False, None, None, False, _describe(exc))
        digest = hashlib.sha256()
        done = 0
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                while True:
                    io.check()
                    data = body.read(CHUNK)
                    if not data:
                        break
                    digest.update(data)
                    done += len(data)
                    io.progress(done)
            finally:
                body.close()
        except TransferCancelled:
            raise
        except Exception as exc:  # noqa: BLE001
            return CopyCheck(self.name, ident, True, None, None, False, f"GET failed after {done} bytes: "
                                                                       f"{_describe(exc)}")
        sha = digest.hexdigest()
        problems = []
        if done != int(head.get("ContentLength", done)):
            problems.append(f"GET returned {done} bytes, HEAD says {head.get('ContentLength')}")
        if expected_sha256 is not None and sha != expected_sha256:
            problems.append(f"sha256 {sha} differs from the source's {expected_sha256}")
        ok = not problems
        return CopyCheck(self.name, ident, True, done, sha, ok, "sha256 matches (re-hashed)" if ok
                         else "; ".join(problems))

    def list_images(self) -> list[str]:
        names: list[str] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                names.extend(obj["Key"][len(self.prefix):] for obj in page.get("Contents", []))
            uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
        except Exception as exc:  # noqa: BLE001
            raise _error(f"cannot list s3://{self.bucket}/{self.prefix}", exc) from exc
        names.extend(f"(multipart upload in progress: {u['Key']})" for u in uploads.get("Uploads", []) or [])
        return sorted(names)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _code(exc: BaseException) -> str:
    return aws.error_code(exc)


def _status(exc: BaseException) -> int | None:
    return aws.error_details(exc)[1]


def _describe(exc: BaseException) -> str:
    code, _status_code, message = aws.error_details(exc)
    if code:
        return f"{code}: {message}" if message else code
    name = type(exc).__name__
    if name == "NoCredentialsError":
        return ("no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or "
                "~/.aws/credentials)")
    return str(exc) or name


def _error(what: str, exc: BaseException) -> DestinationError:
    """A DestinationError, transient for the shared AWS retry rules (``stemforge_base.aws.is_transient``: throttling,
    5xx, connection errors) and the S3 transfer codes above."""
    transient = aws.is_transient(exc) or _code(exc) in _S3_TRANSFER_RETRY_CODES
    return DestinationError(f"{what}: {_describe(exc)}", transient=transient)


PLUGIN = S3Destination
