"""The storage backends every logit-store test runs over, as zarr-python's ``StoreTests`` runs one suite over every
store: ``url`` is a fresh store location on each backend, and a test taking it is the behaviour every backend must
show alike.

* ``memory``: fsspec's in-memory filesystem (``memory://``);
* ``local``: a directory (a plain path);
* ``s3``: a bucket on moto's standalone S3 server on a loopback port, reached over HTTP the way README.md's
  "Scaling out" tells users to reach theirs (the environment variables botocore reads, :data:`S3_SETTINGS`).
  Starting the server takes seconds, so the ``s3`` runs are marked slow: the unit suite covers memory and local,
  the whole suite all three.

The fixtures reach the store tests through ``conftest.py``; the constants are imported from here (``test_s3``).
"""
import logging
import threading
import uuid

import boto3
import pytest
import s3fs
from moto.server import ThreadedMotoServer

BUCKET = "kd-logits"
# the settings README.md names, which the fixture sets (the endpoint once the server has its port)
S3_SETTINGS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")
# settings that would point botocore elsewhere than the test server (a profile, a token, an S3-only endpoint)
FOREIGN_SETTINGS = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN",
                    "AWS_WEB_IDENTITY_TOKEN_FILE", "FSSPEC_S3", "FSSPEC_S3_ENDPOINT_URL")
BACKENDS = ["memory", "local", pytest.param("s3", marks=pytest.mark.slow)]


def _start_moto() -> ThreadedMotoServer:
    """moto's S3 server on a port the OS picks; skip when it does not come up (its ``start`` waits forever)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    starter = threading.Thread(target=server.start, daemon=True)
    starter.start()
    starter.join(timeout=60)
    if starter.is_alive():
        pytest.skip("moto's S3 server did not start on 127.0.0.1 within 60 s")
    return server


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The endpoint URL of a running moto S3 server holding an empty bucket ``BUCKET``, set in the environment."""
    server = _start_moto()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    nowhere = tmp_path_factory.mktemp("aws") / "absent"
    werkzeug_log = logging.getLogger("werkzeug")  # moto logs every request through werkzeug
    level = werkzeug_log.level
    werkzeug_log.setLevel(logging.ERROR)
    try:
        with pytest.MonkeyPatch.context() as env:
            for name in FOREIGN_SETTINGS:
                env.delenv(name, raising=False)
            env.setenv("AWS_CONFIG_FILE", str(nowhere))  # no ~/.aws profile of the machine leaks in
            env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
            values = {"AWS_ACCESS_KEY_ID": "kd-test-key", "AWS_SECRET_ACCESS_KEY": "kd-test-secret",
                      "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
            for name in S3_SETTINGS:
                env.setenv(name, values[name])
            s3fs.S3FileSystem.clear_instance_cache()  # an instance cached earlier may hold another endpoint
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            yield endpoint
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
        werkzeug_log.setLevel(level)


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path) -> str:
    """A fresh store location on each backend."""
    name = f"store-{uuid.uuid4().hex}"
    if request.param == "memory":
        return f"memory://{name}"
    if request.param == "s3":
        request.getfixturevalue("s3")
        return f"s3://{BUCKET}/{name}"
    return str(tmp_path / "store.zarr")
