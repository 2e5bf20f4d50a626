#!/bin/sh
# The seed cheat sheet's "Single Image via REST API" (shared/seed-cheatsheet.md): its Python
# half loads xray.png into img_array and its curl half posts the array. Two changes make it
# run: the array is printed by the same Python lines (the seed's `python -c` cannot see
# img_array), and the 5 MB JSON goes through a file (`-d @body.json`): a command-line
# argument over 128 KiB exceeds Linux's MAX_ARG_STRLEN. MEDINFER_URL and TOKEN come from
# the environment, in place of http://127.0.0.1:8000 and YOUR_TOKEN.
set -eu
DATA=$(python3 -c 'import json; import numpy as np; from PIL import Image; img = Image.open("xray.png"); img_array = np.array(img) / 255.0; print(json.dumps(img_array.flatten().tolist()))')
printf '%s' '{
    "data": '"$DATA"',
    "width": 512,
    "height": 512,
    "patient_id": "PT-DEIDENTIFIED"
  }' > body.json
curl -sS -X POST "$MEDINFER_URL/infer" \
  -H "Authorization: Bearer $TOKEN" \
  -H "Content-Type: application/json" \
  -d @body.json
