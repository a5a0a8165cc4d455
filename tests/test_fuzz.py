"""Post thousands of malformed uploads: every answer must be JSON with a status below 500."""

import io
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=700, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def post(client, data: bytes, field: str = "image", name: str = "x.jpg"):
    response = client.post("/api/v1/predict", data={field: (io.BytesIO(data), name)},
                           content_type="multipart/form-data")
    assert response.status_code < 500, (response.status_code, response.data[:200])
    assert response.is_json and "message" in response.json or response.status_code == 200
    return response


def png_header(width: int, height: int, depth: int, colour: int, body: bytes) -> bytes:
    """A PNG whose header claims any size, depth and colour type, followed by arbitrary data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def fuzz_client(tiny_onnx):
    from skinlesion.web import create_app
    return create_app({"MODEL": str(tiny_onnx), "RATE_LIMIT": 10**9}).test_client()


def test_random_bytes(fuzz_client):
    @FUZZ
    @given(st.binary(max_size=4096), st.sampled_from(["image", "img", "file"]), st.text(max_size=30))
    def check(data, field, name):
        post(fuzz_client, data, field, name or "x")
    check()


def test_mutated_real_jpegs(fuzz_client, lesion_jpeg):
    @FUZZ
    @given(st.lists(st.tuples(st.integers(0, len(lesion_jpeg) - 1), st.integers(0, 255)), max_size=20),
           st.integers(2, len(lesion_jpeg)))
    def check(flips, cut):
        data = bytearray(lesion_jpeg[:cut])
        for position, value in flips:
            if position < len(data):
                data[position] = value
        post(fuzz_client, bytes(data))
    check()


def test_png_headers_with_absurd_fields(fuzz_client):
    @FUZZ
    @given(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), st.sampled_from([1, 2, 4, 8, 16, 3, 0]),
           st.sampled_from([0, 2, 3, 4, 6, 1, 7]), st.binary(max_size=2048))
    def check(width, height, depth, colour, body):
        post(fuzz_client, png_header(width, height, depth, colour, body), name="x.png")
    check()
