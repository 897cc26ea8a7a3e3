import json
import subprocess
import sys

import pytest

from appliance.config import ConfigError, defaults_document, env_name, load_settings, strip_json_comments

from .helpers import REPO


def test_defaults_are_the_documented_embedded_setup():
    s = load_settings(None, environ={})
    assert (s["DicomAet"], s["DicomPort"], s["HttpPort"]) == ("PIPACS", 4242, 8042)
    assert s["StorageDirectory"] == "./data"
    assert s.index_dir == s.storage_dir


def test_defaults_document_is_a_valid_config_file(tmp_path):
    p = tmp_path / "defaults.json"
    p.write_text(defaults_document())
    s = load_settings(p, environ={})
    assert s == load_settings(None, environ={})


def test_environment_overrides_file(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"HttpPort": 9000, "DicomAet": "FILEAET"}')
    s = load_settings(p, environ={"PIPACS_HTTP_PORT": "9001", "PIPACS_DICOM_AET": "ENVAET",
                                  "PIPACS_REMOTE_ACCESS_ALLOWED": "true"})
    assert s["HttpPort"] == 9001
    assert s["DicomAet"] == "ENVAET"
    assert s["RemoteAccessAllowed"] is True


def test_env_names():
    assert env_name("DicomAet") == "PIPACS_DICOM_AET"
    assert env_name("MaximumStorageSize") == "PIPACS_MAXIMUM_STORAGE_SIZE"
    assert env_name("CaseSensitivePN") == "PIPACS_CASE_SENSITIVE_PN"


@pytest.mark.parametrize("content, key, words", [
    ('{"HttpPrt": 1}', "HttpPrt", "unknown option"),
    ('{"httpport": 1}', "httpport", "did you mean 'HttpPort'"),
    ('{"HttpPort": 70000}', "HttpPort", "between 0 and 65535"),
    ('{"HttpPort": "80"}', "HttpPort", "whole number"),
    ('{"DicomAet": "A_TITLE_LONGER_THAN_16"}', "DicomAet", "at most 16"),
    ('{"DicomAet": "BAD\\\\AET"}', "DicomAet", "not allowed"),
    ('{"RemoteAccessAllowed": "yes"}', "RemoteAccessAllowed", "true or false"),
    ('{"MaximumStorageMode": "Delete"}', "MaximumStorageMode", "Recycle, Reject"),
    ('{"DicomModalities": {"ipad": ["IPAD", "10.0.0.2"]}}', "DicomModalities.ipad", "[AET, host, port]"),
    ('{"DicomModalities": {"ipad": ["IPAD", "10.0.0.2", 99999]}}', "DicomModalities.ipad.Port", "between"),
    ('{"DicomModalities": {"ipad": ["IPAD", "10.0.0.2", 104, "Osirix"]}}', "DicomModalities.ipad.Manufacturer",
     "known: Generic, GenericNoWildcardInDates"),
    ('{"DicomModalities": {"ws": {"AET": "WS", "Host": "h", "Port": 1, "Manufacturer": 3}}}',
     "DicomModalities.ws.Manufacturer", "expected a string"),
    ('{"DicomModalities": {"ws": {"AET": "WS", "Host": "h", "Port": 1, "UseDicomTls": "no"}}}',
     "DicomModalities.ws.UseDicomTls", "true or false"),
    ('{"StudentAccess": "anyone"}', "StudentAccess", "open, code, off"),
    ('{"RegisteredUsers": {"a:b": "pw"}}', "RegisteredUsers", "':'"),
    ('{"Dictionary": {"7778,0010": ["XX", "Score"]}}', "Dictionary.7778,0010", "value representation"),
    ('{"Dictionary": {"7778,0010": ["DS", "1st"]}}', "Dictionary.7778,0010", "must be a keyword"),
    ('{"Dictionary": {"0010,0010": ["LO", "Nom"]}}', "Dictionary.0010,0010", "standard's dictionary"),
    ('{"Dictionary": {"7778,0010": ["LO", "PatientName"]}}', "Dictionary.7778,0010", "already the keyword"),
    ('{"Dictionary": {"0009,1001": ["LO", "Note"]}}', "Dictionary.0009,1001", "PrivateCreator"),
    ('{"Dictionary": {"7778,0010": ["DS", "Score", 2, 1]}}', "Dictionary.7778,0010", "MaxMultiplicity"),
    ('{"Dictionary": {"7777-0010": ["DS", "Score"]}}', "Dictionary.7777-0010", "gggg,eeee"),
    ('{"Dictionary": ["7778,0010"]}', "Dictionary", "must be an object"),
    ('[1, 2]', "(file)", "JSON object"),
    ('{"HttpPort": 8042,,}', "(file)", "not valid JSON"),
])
def test_bad_configuration_is_refused_with_key_and_reason(tmp_path, content, key, words):
    p = tmp_path / "c.json"
    p.write_text(content)
    with pytest.raises(ConfigError) as e:
        load_settings(p, environ={})
    assert e.value.key == key
    assert words in str(e.value)


def test_bad_environment_value_is_refused():
    with pytest.raises(ConfigError) as e:
        load_settings(None, environ={"PIPACS_DICOM_PORT": "four"})
    assert e.value.key == "DicomPort" and "PIPACS_DICOM_PORT" in str(e.value)


def test_comments_and_modalities_forms(tmp_path):
    p = tmp_path / "c.json"
    p.write_text("""{
      // a teacher's note
      "Name": "Room 12 // not a comment", /* block */
      "DicomModalities": {"viewer": ["VIEWER", "127.0.0.1", "104"],
                          "ws": {"AET": "WS", "Host": "127.0.0.1", "Port": 11112}}
    }""")
    s = load_settings(p, environ={})
    assert s["Name"] == "Room 12 // not a comment"
    viewer = s["DicomModalities"]["viewer"]
    assert (viewer["AET"], viewer["Host"], viewer["Port"]) == ("VIEWER", "127.0.0.1", 104)
    assert viewer["AllowFind"] is True  # Orthanc's per-modality permissions default to true
    assert s["DicomModalities"]["ws"]["Port"] == 11112
    assert strip_json_comments('{"a": "/* x */"}') == '{"a": "/* x */"}'


def test_serve_refuses_bad_config_with_key_and_reason(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"DicomPort": -1}))
    r = subprocess.run([sys.executable, "-m", "appliance", "serve", "--config", str(p)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "DicomPort" in r.stderr and "between 0 and 65535" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_config_defaults_prints_every_key():
    r = subprocess.run([sys.executable, "-m", "appliance", "config", "--defaults"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for key in ("Name", "DicomAet", "DicomPort", "HttpPort", "StorageDirectory", "IndexDirectory",
                "DicomModalities", "RemoteAccessAllowed", "AuthenticationEnabled", "RegisteredUsers",
                "DicomCheckCalledAet", "OverwriteInstances", "MaximumStorageSize", "MaximumPatientCount"):
        assert f'"{key}":' in r.stdout


def test_port_in_use_is_a_clear_message(tmp_path, make_server):
    first = make_server(name="a")
    r = subprocess.run([sys.executable, "-m", "appliance", "serve"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "PIPACS_BIND_ADDRESS": "127.0.0.1", "PIPACS_DICOM_PORT": "0",
                            "PIPACS_HTTP_PORT": str(first.http_port), "PIPACS_STORAGE_DIRECTORY": str(tmp_path / "d")})
    assert r.returncode == 1, r.stderr
    assert f"port {first.http_port} is already in use" in r.stderr and "HttpPort" in r.stderr
    assert "Traceback" not in r.stderr
