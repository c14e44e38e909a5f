"""The real ``dicomweb-client`` package through the proxy, against a real Orthanc."""

from __future__ import annotations

import io

import pydicom
from dicomweb_client.api import DICOMwebClient

from harness.dicomgen import Study, make_study
from harness.orthanc import Orthanc
from tests.support import ProxyThread


def client_for(proxy: ProxyThread) -> DICOMwebClient:
    return DICOMwebClient(url=proxy.dicomweb)


def test_search_finds_the_study(proxy: ProxyThread, study: Study) -> None:
    found = client_for(proxy).search_for_studies(search_filters={"StudyInstanceUID": study.uid})
    assert [item["0020000D"]["Value"][0] for item in found] == [study.uid]
    # dicomweb-client sends "Host: 127.0.0.1" without the port; the proxy derives its
    # public base from the Host the client sent.
    retrieve_url = found[0]["00081190"]["Value"][0]
    assert retrieve_url == f"http://127.0.0.1/dicom-web/studies/{study.uid}"


def test_retrieve_instance_pixels_identical(proxy: ProxyThread, study: Study) -> None:
    series_uid, sop_uid, original = study.instances[0]
    got = client_for(proxy).retrieve_instance(study.uid, series_uid, sop_uid)
    expected = pydicom.dcmread(io.BytesIO(original))
    assert got.SOPInstanceUID == sop_uid
    assert got.PixelData == expected.PixelData


def test_retrieve_study_returns_every_instance(proxy: ProxyThread, study: Study) -> None:
    got = client_for(proxy).retrieve_study(study.uid)
    assert sorted(ds.SOPInstanceUID for ds in got) == sorted(i[1] for i in study.instances)


def test_metadata_at_every_level(proxy: ProxyThread, study: Study) -> None:
    client = client_for(proxy)
    series_uid, sop_uid, _ = study.instances[0]
    assert len(client.retrieve_study_metadata(study.uid)) == 6
    assert len(client.retrieve_series_metadata(study.uid, series_uid)) == 3
    instance = client.retrieve_instance_metadata(study.uid, series_uid, sop_uid)
    assert instance["00080018"]["Value"] == [sop_uid]


def test_rendered_png(proxy: ProxyThread, study: Study) -> None:
    series_uid, sop_uid, _ = study.instances[0]
    png = client_for(proxy).retrieve_instance_rendered(
        study.uid, series_uid, sop_uid, media_types=("image/png",)
    )
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_store_through_the_proxy(proxy: ProxyThread, orthanc: Orthanc) -> None:
    new = make_study(series_count=1, instances_per_series=2)
    datasets = [pydicom.dcmread(io.BytesIO(data)) for _, _, data in new.instances]
    result = client_for(proxy).store_instances(datasets)
    stored = [item.ReferencedSOPInstanceUID for item in result.ReferencedSOPSequence]
    assert sorted(stored) == sorted(i[1] for i in new.instances)
    found = client_for(proxy).search_for_instances(study_instance_uid=new.uid)
    assert len(found) == 2
