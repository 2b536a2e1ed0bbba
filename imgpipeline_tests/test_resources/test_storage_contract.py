"""The storage contract: what the pipeline relies on of a storage root, proven on every backend (a local
folder, the S3 endpoint and memory). Code that takes a `Storage` may rely on this and nothing more."""

import time
import uuid

import pytest

from imgpipeline.ingest.messages import sha256_hex
from imgpipeline.resources import StorageResource
from imgpipeline.resources.storage import BadObject, MemoryStorage, Storage
from imgpipeline_tests.conftest import s3_storage_resource

ON_S3 = [pytest.mark.integration, pytest.mark.covered(
    "the same test on a local folder: where objects are stored plays no part in the instance")]


@pytest.fixture(params=["local", "memory", pytest.param("s3", marks=ON_S3)])
def store(request, tmp_path) -> Storage:
    """A fresh root on each backend, as the code receives it."""
    if request.param == "memory":
        return MemoryStorage(uuid.uuid4().hex[:8])
    if request.param == "local":
        return StorageResource(uri=(tmp_path / "store").as_uri()).open()
    return s3_storage_resource(request.getfixturevalue("services")).open()


def test_put_list_get(store):
    store.check()
    uri = store.put("frames/cam1/2026-11-21/cam1-000001.jpg", b"jpeg-bytes")
    store.put("frames/cam1/2026-11-21/cam1-000002.jpg", b"more")
    store.put("landing/metadata/dt=2026-11-21/hour=10/x.jsonl", b"{}\n")

    assert uri == f"{store.root_uri}/frames/cam1/2026-11-21/cam1-000001.jpg"
    assert store.key_for(uri) == "frames/cam1/2026-11-21/cam1-000001.jpg"
    assert store.list("frames/") == [
        "frames/cam1/2026-11-21/cam1-000001.jpg",
        "frames/cam1/2026-11-21/cam1-000002.jpg",
    ]
    assert len(store.list()) == 3
    assert store.get("frames/cam1/2026-11-21/cam1-000001.jpg") == b"jpeg-bytes"
    assert store.size("frames/cam1/2026-11-21/cam1-000002.jpg") == 4
    assert store.stored_sha256("frames/cam1/2026-11-21/cam1-000002.jpg") == sha256_hex(b"more")
    assert store.stored_sha256("frames/none.jpg") is None

    store.put("frames/cam1/2026-11-21/cam1-000002.jpg", b"replaced")
    assert store.get("frames/cam1/2026-11-21/cam1-000002.jpg") == b"replaced"
    store.delete("frames/cam1/2026-11-21/cam1-000002.jpg")
    assert not store.exists("frames/cam1/2026-11-21/cam1-000002.jpg")


def test_the_names_in_a_folder_that_start_alike_are_listed_with_their_versions(store):
    for key in ("d/ab-1", "d/ab-2", "d/ac", "d/ab/3", "dab", "e/ab-4"):
        store.put(key, b"x")
    named = store.named("d/", "ab-")
    assert sorted(named) == ["d/ab-1", "d/ab-2"] and named == {k: store.versions("d/")[k] for k in named}
    store.put("d/ab-2", b"written again")
    assert store.named("d/", "ab-")["d/ab-2"] != named["d/ab-2"]
    assert store.named("none/", "ab") == {} and sorted(store.named("d/", "")) == ["d/ab-1", "d/ab-2", "d/ac"]


def test_put_file_streams_a_large_object(store, tmp_path):
    # Over boto3's 8 MB multipart threshold: the S3 backend uploads it in parts.
    body = b"".join(b"%08d{}\n" % i for i in range(1_200_000))
    spooled = tmp_path / "spooled.jsonl"
    spooled.write_bytes(body)
    with spooled.open("rb") as file:
        uri = store.put_file("landing/big.jsonl", file, sha256=sha256_hex(body))
    key = store.key_for(uri)
    assert store.size(key) == len(body) > 8 * 1024 * 1024
    assert store.get(key) == body
    assert store.stored_sha256(key) == sha256_hex(body)


def test_bad_objects_are_refused(store):
    store.put("frames/a.jpg", b"x" * 100)
    with pytest.raises(BadObject, match="over the limit of 10"):
        store.get("frames/a.jpg", max_bytes=10)
    with pytest.raises(BadObject, match="does not exist"):
        store.get("frames/missing.jpg")
    outside = [
        "file:///etc/passwd",
        f"{store.root_uri}/../secrets.txt",
        f"{store.root_uri}/frames/../../x.jpg",
        f"{store.root_uri}/frames/%2e%2e/%2e%2e/x.jpg",
        f"{store.root_uri}-other/frames/a.jpg",
        "s3://another-bucket/frames/a.jpg",
        f"{store.root_uri}/frames/a.jpg?versionId=1",
    ]
    for uri in outside:
        with pytest.raises(BadObject):
            store.key_for(uri)
    for key in ["../x", "/abs", "a//b", "a\\b"]:
        with pytest.raises(BadObject):
            store.put(key, b"")


def test_put_new_never_replaces_and_one_of_racing_writers_wins(store):
    from concurrent.futures import ThreadPoolExecutor

    key = f"frames/race/{uuid.uuid4().hex}.jpg"
    bodies = [bytes([i]) * 1000 for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda body: store.put_new(key, body, sha256=sha256_hex(body)), bodies))
    winners = [body for body, answer in zip(bodies, answers, strict=True) if answer is None]
    assert len(winners) == 1 and store.get(key) == winners[0]
    assert {a for a in answers if a is not None} == {sha256_hex(winners[0])}
    assert store.list("frames/race/") == [key]  # no temp file left behind


def test_a_prefix_lists_its_key_or_the_folder_it_names_and_folders_list_one_level(store):
    for key in ("landing/a/1.jsonl", "landing/a/2.jsonl", "landing/a/deep/3.jsonl", "landing/b/4.jsonl",
                "landing/ab.jsonl"):
        store.put(key, b"{}\n")
    assert store.list("landing/a/") == ["landing/a/1.jsonl", "landing/a/2.jsonl", "landing/a/deep/3.jsonl"]
    assert store.list("landing/a/1.jsonl") == ["landing/a/1.jsonl"]
    assert store.list("nothing/") == []
    assert store.folders("landing/") == ["a", "b"]
    assert store.folders("landing/a/") == ["deep"]
    assert store.folders("nothing/") == []


def test_a_key_written_again_gets_another_version_and_a_later_time(store):
    store.put("landing/x.jsonl", b"one")
    store.put("landing/y.jsonl", b"two")
    first, when = store.versions("landing/"), store.written("landing/")
    assert sorted(first) == sorted(when) == ["landing/x.jsonl", "landing/y.jsonl"]
    assert abs(when["landing/x.jsonl"] - time.time()) < 600  # the store's clock, seconds since the epoch

    store.put("landing/x.jsonl", b"ONE")  # the same size: the version still differs
    again = store.versions("landing/")
    assert again["landing/x.jsonl"] != first["landing/x.jsonl"]
    assert again["landing/y.jsonl"] == first["landing/y.jsonl"]
    assert store.written("landing/")["landing/x.jsonl"] >= when["landing/x.jsonl"]


def test_delete_many_deletes_those_named_and_ignores_those_gone(store):
    keys = [f"landing/dt=2026-11-2{day}/h/{n}.jsonl" for day in (1, 2) for n in range(3)]
    for key in keys:
        store.put(key, b"{}\n")
    store.delete_many([*keys[:3], "landing/dt=2026-11-21/h/never.jsonl"])
    store.delete("landing/never-either.jsonl")
    assert store.list("landing/") == keys[3:]
    assert store.folders("landing/") == ["dt=2026-11-22"]  # a folder goes with its last object
    assert [store.exists(key) for key in keys] == [False] * 3 + [True] * 3
    assert store.size(keys[0]) is None


def test_a_listing_beside_a_writer_whose_folders_come_and_go_lists_what_stays(store):
    """Runs list a prefix while others write and delete under it (the fast lane's claims): a folder
    emptied and removed mid-listing is skipped, never an error; a key that stays is always listed."""
    import threading

    store.put("claims/t/stays.json", b"{}")
    done = threading.Event()

    def churn() -> None:
        n = 0
        while not done.is_set():
            keys = [f"claims/t/{n % 7}/{n}.json", f"claims/t/{n % 7}/deep/{n}.json", f"claims/u/{n}.json"]
            for key in keys:
                store.put(key, b"{}")
            store.delete_many(keys)
            n += 1

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        listings = []
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            listings.append((store.list("claims/t/"), store.list("claims/u/"), store.list("claims/")))
            assert "t" in store.folders("claims/")
    finally:
        done.set()
        writer.join()
    assert listings and all("claims/t/stays.json" in t and "claims/t/stays.json" in every
                            for t, _, every in listings)
    assert store.list("claims/") == ["claims/t/stays.json"] and store.list("claims/u/") == []


def test_a_uri_is_the_root_and_the_key_and_a_key_is_read_back_from_it(store):
    uri = store.uri("frames/cam/2026-11-21/cam 1.jpg")
    assert uri.startswith(store.root_uri + "/")
    assert store.key_for(uri) == "frames/cam/2026-11-21/cam 1.jpg"
    for key in ("", ".", "frames/./a.jpg", "frames/a.jpg\x00"):
        with pytest.raises(BadObject):
            store.uri(key)
