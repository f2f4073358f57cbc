"""The Store contract on a real S3 endpoint (moto's server on 127.0.0.1), plus S3 specifics:
multipart transfers, a missing bucket, retry configuration and conditional-write conflicts."""

from __future__ import annotations

import hashlib
import os

import boto3
import pytest
from botocore.stub import Stubber

from evoquality.storage import S3Store, StoreError, open_store
from tests.unit.test_storage_file import StoreContract


class TestS3Store(StoreContract):
    @pytest.fixture
    def store(self, s3_bucket) -> S3Store:
        return open_store(s3_bucket.uri)  # the endpoint comes from AWS_ENDPOINT_URL_S3


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_large_file_uses_multipart_both_ways(s3_bucket, tmp_path):
    src = tmp_path / "model.safetensors"
    src.write_bytes(os.urandom(50 * 1024 * 1024))
    store = open_store(s3_bucket.uri)
    store.put_file("ckpt/model.safetensors", src)
    client = boto3.client("s3", endpoint_url=s3_bucket.endpoint_url)
    head = client.head_object(Bucket=s3_bucket.bucket, Key="prefix/ckpt/model.safetensors")
    assert head["ContentLength"] == src.stat().st_size
    assert "-" in head["ETag"], "a multipart upload's ETag ends with -<parts>"
    dest = tmp_path / "down" / "model.safetensors"
    store.get_file("ckpt/model.safetensors", dest)
    assert _sha256(dest) == _sha256(src)
    assert [p.name for p in dest.parent.iterdir()] == ["model.safetensors"]


def test_missing_bucket_is_a_clear_error(s3_bucket):
    store = open_store("s3://evoq-no-such-bucket/run")
    expected = f"bucket 'evoq-no-such-bucket' does not exist at endpoint {s3_bucket.endpoint_url}"
    for call in (
        lambda: store.get_bytes("k"),
        lambda: store.exists("k"),
        lambda: store.put_bytes("k", b"x"),
        lambda: store.list(""),
        lambda: store.put_if_absent("k", b"x"),
    ):
        with pytest.raises(StoreError, match=expected):
            call()


def test_retry_configuration_comes_from_the_environment(s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    retries = open_store(s3_bucket.uri)._client.meta.config.retries
    assert retries["mode"] == "adaptive"
    assert retries["total_max_attempts"] == 7


def _stubbed_store() -> tuple[S3Store, Stubber]:
    client = boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    return S3Store("bucket", "p", client=client), Stubber(client)


def test_conditional_write_conflict_is_retried_then_succeeds():
    store, stub = _stubbed_store()
    expected = {"Bucket": "bucket", "Key": "p/summary.json", "Body": b"s", "IfNoneMatch": "*"}
    stub.add_client_error(
        "put_object", "ConditionalRequestConflict", http_status_code=409, expected_params=expected
    )
    stub.add_response("put_object", {"ETag": '"e"'}, expected_params=expected)
    with stub:
        assert store.put_if_absent("summary.json", b"s") is True
    stub.assert_no_pending_responses()


def test_conditional_write_conflict_then_precondition_failed_loses():
    store, stub = _stubbed_store()
    stub.add_client_error("put_object", "ConditionalRequestConflict", http_status_code=409)
    stub.add_client_error("put_object", "PreconditionFailed", http_status_code=412)
    with stub:
        assert store.put_if_absent("summary.json", b"s") is False
    stub.assert_no_pending_responses()


def test_other_errors_are_store_errors_naming_the_object():
    store, stub = _stubbed_store()
    stub.add_client_error("put_object", "AccessDenied", http_status_code=403)
    with stub, pytest.raises(StoreError, match=r"s3://bucket/p/summary.json.*AccessDenied"):
        store.put_if_absent("summary.json", b"s")
