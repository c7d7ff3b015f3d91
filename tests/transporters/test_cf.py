"""`cf` against moto (S3 + CloudFront): the conformance suite, CDN URLs, and invalidations only for
overwritten or deleted keys, coalesced across instances into batches."""
from __future__ import annotations

import json
import pathlib
import signal
import sqlite3
import subprocess
import sys
import threading
from typing import Any, Iterator

import pytest

from fileconveyor.transporters import cf, s3
from fileconveyor.transporters.base import resolve_transporter
from tests.servers.moto import AuthMoto, Distribution, MotoServer
from tests.transporters.conformance import TransporterConformance, wait_for
from tests.transporters.test_s3 import REPO, S3Harness


class CFHarness(S3Harness):
    transporter_class = cf.CloudFrontTransporter

    def __init__(self, state_dir: pathlib.Path, server: MotoServer, bucket: str,
                 distribution: Distribution, auth: AuthMoto | None = None) -> None:
        super().__init__(state_dir, server, bucket, auth=auth)
        self.distribution = distribution

    def settings(self) -> dict[str, str]:
        return {**super().settings(), "distro_domain_name": self.distribution.domain_name,
                "cloudfront_endpoint_url": self.server.endpoint, "invalidation_window": "0.2"}

    def invalidated_paths(self) -> list[list[str]]:
        """Paths of every invalidation of the distribution, oldest first."""
        client = self.server.client("cloudfront")
        listing = client.list_invalidations(DistributionId=self.distribution.id)
        batches = []
        for item in reversed(listing["InvalidationList"].get("Items", []) or []):
            got = client.get_invalidation(DistributionId=self.distribution.id, Id=item["Id"])
            batches.append(list(got["Invalidation"]["InvalidationBatch"]["Paths"]["Items"]))
        return batches


@pytest.fixture
def cf_harness(tmp_path: pathlib.Path, moto_server: MotoServer, s3_bucket: str,
               cloudfront_distribution: Distribution, moto_auth_server: AuthMoto) -> CFHarness:
    return CFHarness(tmp_path / "state", moto_server, s3_bucket, cloudfront_distribution,
                     auth=moto_auth_server)


@pytest.fixture(autouse=True)
def _fresh_coalescers() -> Iterator[None]:
    cf.forget_coalescers()
    s3.forget_cleanup_marks()
    yield
    cf.forget_coalescers()


class TestCFConformance(TransporterConformance):
    known_gaps = {
        "test_url_resolves": "URLs are on the distribution's domain, which moto does not serve",
        # Storage is S3Transporter's, inherited unchanged and run in full by TestS3Conformance;
        # repeating the 50 MiB transfers here would only double the suite's time.
        "test_large_file": "S3Transporter's code path, covered by TestS3Conformance",
        "test_multipart": "S3Transporter's code path, covered by TestS3Conformance",
        "test_reader_never_sees_partial_file": "S3Transporter's code path, covered there",
    }

    @pytest.fixture
    def harness(self, cf_harness: CFHarness) -> CFHarness:
        return cf_harness


def test_resolves_by_original_name() -> None:
    assert resolve_transporter("cf") is cf.CloudFrontTransporter
    assert cf.TRANSPORTER_CLASS == "CloudFrontTransporter"
    assert cf.CloudFrontTransporter.can_invalidate


def test_url_is_on_distribution_domain(cf_harness: CFHarness, tmp_path: pathlib.Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    url = cf_harness.make().upload(str(tmp_path / "a"), "static/a b+c.css")
    assert url == f"https://{cf_harness.distribution.domain_name}/static/a%20b%2Bc.css"
    assert cf_harness.make(url_scheme="http").url_for("x.js").startswith("http://")


def test_new_key_needs_no_invalidation_overwrite_and_delete_do(
        cf_harness: CFHarness, tmp_path: pathlib.Path) -> None:
    (tmp_path / "a").write_bytes(b"one")
    transporter = cf_harness.make()
    transporter.upload(str(tmp_path / "a"), "new.css")
    transporter.delete("never-there.css")
    assert cf.flush_all(30)
    assert cf_harness.invalidated_paths() == []

    transporter.upload(str(tmp_path / "a"), "new.css")  # overwrite
    wait_for(lambda: cf_harness.invalidated_paths() == [["/new.css"]], 30,
             "the window to pass and the overwrite's invalidation to be sent")
    transporter.delete("dir/../new.css")
    wait_for(lambda: len(cf_harness.invalidated_paths()) == 2, 30, "the delete's invalidation")
    assert cf_harness.invalidated_paths()[1] == ["/new.css"]


def test_fifty_overwrites_in_a_window_from_four_instances_make_one_invalidation(
        cf_harness: CFHarness, tmp_path: pathlib.Path) -> None:
    names = [f"dir/file {i}.css" for i in range(50)]
    (tmp_path / "v").write_bytes(b"v1")
    seed = cf_harness.make(invalidation_window="3600")
    for name in names:
        seed.upload(str(tmp_path / "v"), name)
    assert cf_harness.invalidated_paths() == []

    workers = [cf_harness.make(invalidation_window="3600") for _ in range(4)]
    errors: list[BaseException] = []

    def overwrite(index: int) -> None:
        try:
            for name in names[index::4]:
                workers[index].upload(str(tmp_path / "v"), name)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=overwrite, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert cf_harness.invalidated_paths() == []  # still inside the (long) window
    workers[0].close()  # the pipeline closes on shutdown: pending paths are flushed
    batches = cf_harness.invalidated_paths()
    assert len(batches) == 1
    assert sorted(batches[0]) == sorted("/" + n.replace(" ", "%20") for n in names)


def test_batches_stay_within_cloudfronts_path_limit(cf_harness: CFHarness) -> None:
    transporter = cf_harness.make(invalidation_window="3600")
    transporter.invalidate([f"p/{i}.js" for i in range(cf.MAX_PATHS_IN_FLIGHT + 500)])
    assert cf.flush_all(60)
    # (moto lists invalidations made in the same second in no set order)
    assert sorted(len(b) for b in cf_harness.invalidated_paths()) == [500, cf.MAX_PATHS_IN_FLIGHT]


def test_invalidate_false_sends_none(cf_harness: CFHarness, tmp_path: pathlib.Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    transporter = cf_harness.make(invalidate="false")
    transporter.upload(str(tmp_path / "a"), "a.css")
    transporter.upload(str(tmp_path / "a"), "a.css")
    transporter.delete("a.css")
    transporter.close()
    assert cf_harness.invalidated_paths() == []


def test_distribution_id_given_or_looked_up(cf_harness: CFHarness) -> None:
    by_domain = cf.coalescer_for(cf_harness.make())
    assert by_domain.resolve_distribution_id() == cf_harness.distribution.id
    cf_harness.make(distribution_id=cf_harness.distribution.id).probe()
    wrong = cf_harness.make(distro_domain_name="nothing.cloudfront.net")
    with pytest.raises(cf.ConfigurationError, match="distro_domain_name"):
        wrong.probe()


CRASH_AFTER_OVERWRITE = """
import json, os, signal, sys
from fileconveyor.transporters.cf import CloudFrontTransporter
from fileconveyor.transporters.base import TransporterContext
settings, state_dir, local = json.loads(sys.argv[1])
transporter = CloudFrontTransporter(settings, TransporterContext("crash", state_dir))
transporter.upload(local, "crash.css")
transporter.upload(local, "crash.css")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_pending_invalidations_survive_a_crash(cf_harness: CFHarness,
                                               tmp_path: pathlib.Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    settings = {**cf_harness.settings(), "invalidation_window": "3600"}
    child = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER_OVERWRITE,
         json.dumps([settings, str(cf_harness.state_dir), str(tmp_path / "a")])],
        cwd=REPO, capture_output=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert cf_harness.invalidated_paths() == []
    db = cf_harness.state_dir / "cf-invalidations.db"
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT path FROM pending_invalidations").fetchall() == [
            ("/crash.css",)]
    # The restarted daemon: the first use of the distribution sends what was left.
    transporter = cf_harness.make()
    cf.coalescer_for(transporter)
    wait_for(lambda: cf_harness.invalidated_paths() == [["/crash.css"]], 30,
             "the leftover invalidation to be sent")


@pytest.mark.parametrize("settings, fragment", [
    ({"distro_domain_name": "https://d1.cloudfront.net"}, "bare host name"),
    ({"invalidate": "sometimes"}, "<invalidate>"),
    ({"invalidation_window": "-1"}, "<invalidation_window>"),
])
def test_check_settings_values(settings: dict[str, Any], fragment: str) -> None:
    problems = cf.CloudFrontTransporter.check_settings(
        {"bucket_name": "b-b", "distro_domain_name": "d1.cloudfront.net", **settings})
    assert any(fragment in p for p in problems), problems


def test_check_settings_requires_distro_domain_name() -> None:
    problems = cf.CloudFrontTransporter.check_settings({"bucket_name": "bucket"})
    assert any("distro_domain_name" in p for p in problems)
