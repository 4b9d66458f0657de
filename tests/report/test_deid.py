"""De-identification: salted hashes, the run salt, PHI values and the PHI scanner."""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import io
import stat
import zipfile

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from medtl.report.deid import (
    PHI_TAGS,
    SALT_FILE,
    find_phi,
    hash_patient_id,
    phi_values,
    read_phi,
    run_salt,
    scrub_text,
)

SECRET = "DOE^JANE1942"


def test_hash_is_salted_stable_short_and_hides_the_id():
    h = hash_patient_id("P0001", b"salt-a")
    assert h == hash_patient_id(" P0001 ", b"salt-a")  # stable, whitespace ignored
    assert h == hmac.new(b"salt-a", b"P0001", hashlib.sha256).hexdigest()[:12]
    assert len(h) == 12 and int(h, 16) >= 0
    assert hash_patient_id("P0001", b"salt-b") != h  # another salt, another hash
    assert hash_patient_id("P0002", b"salt-a") != h
    assert hash_patient_id("P0001", "salt-a") == h  # str salt is its UTF-8 bytes
    assert hashlib.sha256(b"P0001").hexdigest()[:12] != h  # not the unsalted hash
    assert "P0001" not in h and "0001" not in h
    assert len(hash_patient_id(123, b"s", length=20)) == 20
    with pytest.raises(ValueError, match="salt: is empty"):
        hash_patient_id("P0001", b"")
    with pytest.raises(ValueError, match="length=2"):
        hash_patient_id("P0001", b"s", length=2)


def test_run_salt_is_created_once_private_and_random(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    salt = run_salt(a)
    assert len(salt) == 32 and run_salt(a) == salt
    assert run_salt(b) != salt
    mode = stat.S_IMODE((a / SALT_FILE).stat().st_mode)
    assert mode == 0o600
    with pytest.raises(FileNotFoundError, match="no de-identification salt"):
        run_salt(tmp_path / "c", create=False)


def test_phi_values_from_a_dicom_header(tmp_path):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PatientName = "DOE^JANE"
    ds.PatientBirthDate = "19420101"
    ds.OtherPatientIDs = ["X1", "X2"]
    ds.Modality = "DX"  # not PHI
    vals = phi_values(ds)
    assert vals[:3] == ["DOE^JANE", "DOE", "JANE"]
    assert {"19420101", "X1", "X2"} <= set(vals) and "DX" not in vals
    assert phi_values(ds, parts=False)[0] == "DOE^JANE" and "JANE" not in phi_values(ds, parts=False)
    assert phi_values({"PatientName": "A^BCD", "StudyDate": ""}) == ["A^BCD", "BCD"]
    assert {"PatientName", "PatientID", "PatientBirthDate", "InstitutionName"} <= set(PHI_TAGS)
    png = tmp_path / "x.png"
    Image.new("L", (4, 4)).save(png)
    assert read_phi(png) == [] and read_phi(tmp_path / "missing.dcm") == []


def test_scrub_text_is_case_insensitive_and_longest_first():
    assert scrub_text("Mrs doe^jane (DOE) born 19420101", ["DOE^JANE", "DOE", "19420101"]) == \
        "Mrs [removed] ([removed]) born [removed]"
    assert scrub_text("/data/DOE/1.dcm failed", {"/data/DOE/1.dcm": "[image ab12]"}) == "[image ab12] failed"


def _png_bytes(chunk: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    if chunk == "tEXt":
        info.add_text("Author", SECRET)
    elif chunk == "zTXt":
        info.add_text("Author", SECRET, zip=True)
    else:
        info.add_itxt("Author", SECRET, zip=True)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def test_find_phi_finds_planted_strings_everywhere(tmp_path):
    root = tmp_path / "run"
    (root / "sub").mkdir(parents=True)
    for chunk in ("tEXt", "zTXt", "iTXt"):
        (root / f"{chunk}.png").write_bytes(_png_bytes(chunk))
    assert SECRET.encode() not in (root / "zTXt.png").read_bytes()  # only found by decompressing
    # A .keras-like zip (deflated) with a nested zip inside.
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", '{"name": "' + SECRET.lower() + '"}' + " " * 500)
    with zipfile.ZipFile(root / "sub" / "model.keras", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("metadata.json", "{}")
        z.writestr("assets/inner.zip", inner.getvalue())
    (root / "log.txt.gz").write_bytes(gzip.compress(f"loaded {SECRET}\n".encode()))
    (root / "report.html").write_text(
        f'<img src="data:image/png;base64,{base64.b64encode(_png_bytes("zTXt")).decode()}">')
    (root / "table.csv").write_text(f"file,patient\na.dcm,{SECRET}\n")
    (root / "win.log").write_bytes(f"x {SECRET} y".encode("utf-16-le"))
    (root / "page.html").write_text("<p>DOE&#x27;S</p>")  # the HTML-escaped quote
    (root / f"{SECRET.replace('^', '_')}.txt").write_text("clean")
    (root / "clean.json").write_text('{"patient": "3f9c1a0b7e2d"}')

    hits = find_phi(root, [SECRET, "DOE_JANE1942", "DOE'S", "not-there"])
    files = {f for f, s in hits if s == SECRET}
    r = str(root)
    assert f"{r}/tEXt.png" in files
    assert f"{r}/zTXt.png!<zTXt>" in files
    assert f"{r}/iTXt.png!<iTXt>" in files
    assert f"{r}/sub/model.keras!assets/inner.zip!config.json" in files  # case-insensitive, nested
    assert f"{r}/log.txt.gz!<gunzip>" in files
    assert f"{r}/report.html!<data-uri 0>!<zTXt>" in files
    assert f"{r}/table.csv" in files and f"{r}/win.log" in files
    assert (f"{r}/DOE_JANE1942.txt", "DOE_JANE1942") in hits  # a file name
    assert (f"{r}/page.html", "DOE'S") in hits  # HTML-escaped form
    assert not any(s == "not-there" for _, s in hits)
    assert not any("clean.json" in f for f, _ in hits)
    assert find_phi(root / "tEXt.png", [SECRET]) == [(f"{r}/tEXt.png", SECRET)]  # a single file
    assert find_phi(root, []) == []
    with pytest.raises(FileNotFoundError, match="not found"):
        find_phi(tmp_path / "nope", [SECRET])


def test_find_phi_ignores_ids_spelt_by_chance_in_base64_text(tmp_path):
    import base64

    # 'P0009' as base64 text decodes to bytes that do not hold it: not a leak.
    chance = base64.b64decode(b"AAAP0009AAAA")
    assert b"p0009" not in chance.lower()
    page = tmp_path / "report.html"
    page.write_text('<img src="data:image/png;base64,AAAP0009AAAA">')
    assert find_phi(page, ["P0009"]) == []
    # The same id in the page's text, or inside a payload once decoded, is found.
    hidden = base64.b64encode(b"patient P0009").decode()
    page.write_text('<p>P0009</p><img src="data:image/png;base64,AAAA">')
    assert find_phi(page, ["P0009"]) == [(str(page), "P0009")]
    page.write_text(f'<img src="data:text/plain;base64,{hidden}">')
    assert find_phi(page, ["P0009"]) == [(f"{page}!<data-uri 0>", "P0009")]


def _dicom(path, name="DOE^JOHN", pid="12345678", preamble=True):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID, ds.PatientBirthDate = "DX", name, pid, "19600101"
    ds.set_pixel_data(np.zeros((8, 8), np.uint16), "MONOCHROME2", 12)
    ds.save_as(path, enforce_file_format=preamble)
    return path


def test_read_phi_reads_a_dicom_file_without_preamble(tmp_path):
    bare = _dicom(tmp_path / "bare.dcm", preamble=False)
    assert bare.read_bytes()[128:132] != b"DICM"
    assert {"DOE^JOHN", "12345678", "19600101"} <= set(read_phi(bare, parts=False))
    (tmp_path / "text.dcm").write_text("not a DICOM file at all, just words")
    assert read_phi(tmp_path / "text.dcm") == []


def test_guard_finds_numbers_and_plain_ids_only_as_whole_tokens():
    from medtl.report.deid import find_in_text, guard_strings, looks_identifying

    assert guard_strings(["12345678", "1234", "P01", "ab12cd", "Doe", "Smith", "0001.png"]) == \
        ["12345678", "ab12cd", "Smith", "0001.png"]
    text = "MRN 12345678 and hash 3f12345678ab; Smithson"
    assert find_in_text(text, ["12345678", "Smith", "ab12cd"]) == ["12345678"]
    assert find_in_text("hash 3f12345678ab", ["12345678"]) == []
    assert find_in_text("x/P0001_a.png", ["P0001"]) == ["P0001"]  # letters and digits: anywhere
    assert [looks_identifying(n) for n in ("12345678", "P0001", "DOE^JOHN", "Doe_John", "images", "train_set",
                                           "normal")] == [True, True, True, True, False, False, False]


def test_identifying_strings_cover_names_stems_folders_and_every_header(tmp_path):
    from medtl.report.deid import identifying_strings

    (tmp_path / "DOE_JOHN").mkdir()
    (tmp_path / "normal").mkdir()
    a = _dicom(tmp_path / "DOE_JOHN" / "DOE_JOHN_19600101.dcm", preamble=False)
    b = tmp_path / "normal" / "x.png"
    Image.new("L", (4, 4)).save(b)
    got = identifying_strings([str(a), str(b)], ["12345678"], classes=["normal"])
    assert {"12345678", "DOE_JOHN_19600101.dcm", "DOE_JOHN_19600101", "DOE_JOHN", "DOE^JOHN", "19600101"} <= set(got)
    assert "normal" not in got  # a class folder is not an identifier


def test_shareable_config_cuts_paths_to_names():
    from medtl.report.deid import shareable_config

    text = "name: x\ndata:\n  manifest: /data/DOE_JOHN/labels.csv\n  root: C:\\\\pacs\\\\12345678\n" \
           "model:\n  backbone: https://tfhub.dev/google/x/1\n"
    out = shareable_config(text)
    assert "DOE_JOHN" not in out and "labels.csv" in out and "12345678" in out.split("root:")[1]
    assert "pacs" not in out and "https://tfhub.dev/google/x/1" in out


def test_deid_check_finds_the_runs_phi_by_salted_hash_only(tmp_path):
    from medtl.report.deid import build_deid_index, deid_check
    from medtl.run.layout import DEID_INDEX_FILE

    run = tmp_path / "run"
    run.mkdir()
    build_deid_index(run, ["DOE^JOHN", "12345678", "/data/DOE_JOHN_19600101.dcm", "1.2.840.10008.99.850819"])
    index = (run / DEID_INDEX_FILE).read_text()
    assert "doe" not in index.lower() and "12345678" not in index and "850819" not in index  # hashes only
    share = tmp_path / "share"
    (share / "sub").mkdir(parents=True)
    (share / "DOE_JOHN_19600101_gradcam.png").write_bytes(_png_bytes("tEXt"))  # a stem in a file name
    (share / "notes.txt").write_text("Patient John Doe, MRN: 12345678.")  # reversed name order, the MRN
    (share / "sub" / "log.gz").write_bytes(gzip.compress(b"read 1.2.840.10008.99.850819 ok"))
    (share / "clean.txt").write_text("hash 3f12345678ab, 0.123, doe or not")
    (share / "folds.csv").write_text("file\n/data/DOE_JOHN_19600101.dcm\n")  # a local table: skipped
    hits = deid_check([share], run)
    where = {(p.replace(str(share), ""), w.split(" at ")[0]) for p, w in hits}
    assert ("/DOE_JOHN_19600101_gradcam.png", "file name") in where
    assert ("/notes.txt", "text") in where and sum(p.endswith("notes.txt") for p, _ in hits) == 2
    assert ("/sub/log.gz!<gunzip>", "text") in where
    assert not any("clean.txt" in p or "folds.csv" in p for p, _ in hits)
    assert any("folds.csv" in p for p, _ in deid_check([share], run, include_local=True))
    assert not any("john" in w.lower() or "1234" in w for _, w in hits)  # hits name places, not values
    with pytest.raises(FileNotFoundError, match="not found"):
        deid_check([tmp_path / "nope"], run)
