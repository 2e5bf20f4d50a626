"""Independent check that DICOM files medinfer wrote are readable: used by core/tests/deid.rs.

Usage: python3 pydicom_read.py FILE... ; prints one JSON object per file on stdout.
For each file: reads it with pydicom, walks every element (sequences included), decodes the
pixel data when the transfer syntax is uncompressed, and reports a few attributes.
"""
import json
import sys

import pydicom

for path in sys.argv[1:]:
    out = {"file": path}
    try:
        ds = pydicom.dcmread(path)
        count = 0
        for _ in ds.iterall():
            count += 1
        out.update(
            ok=True,
            elements=count,
            patient_id=str(ds.get("PatientID", "")),
            patient_name=str(ds.get("PatientName", "")),
            identity_removed=str(ds.get("PatientIdentityRemoved", "")),
            study_uid=str(ds.get("StudyInstanceUID", "")),
            sop_uid=str(ds.get("SOPInstanceUID", "")),
            meta_sop_uid=str(ds.file_meta.get("MediaStorageSOPInstanceUID", "")),
            private=sum(1 for e in ds.iterall() if e.tag.is_private),
            method_codes=[str(i.CodeValue) for i in ds.get("DeidentificationMethodCodeSequence", [])],
        )
        if not ds.file_meta.TransferSyntaxUID.is_compressed and "PixelData" in ds:
            arr = ds.pixel_array
            out["pixel_shape"] = list(arr.shape)
            out["pixel_sum"] = float(arr.astype("float64").sum())
    except Exception as e:  # noqa: BLE001 - report, the Rust test decides
        out.update(ok=False, error=f"{type(e).__name__}: {e}")
    print(json.dumps(out))
