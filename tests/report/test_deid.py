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
