# The seed cheat sheet's "Example: Process 50 Chest X-Rays", verbatim (copied from
# shared/seed-cheatsheet.md). The API test runs it with the server's URL and a token
# substituted for "http://127.0.0.1:8000" and "your_jwt_token_here", in a folder holding
# xray_0.png ... xray_49.png.
import requests
import numpy as np
from PIL import Image
import os

TOKEN = "your_jwt_token_here"

# Load images
images = []
for i in range(50):
    img = Image.open(f"xray_{i}.png").resize((224, 224))
    img_array = np.array(img) / 255.0
    images.append({
        "data": img_array.flatten().tolist(),
        "width": 224,
        "height": 224,
        "patient_id": f"PT-{i:05d}"
    })

# Send batch
response = requests.post(
    "http://127.0.0.1:8000/infer/batch",
    json={"images": images, "priority": "high"},
    headers={"Authorization": f"Bearer {TOKEN}"}
)

result = response.json()
print(f"Processed: {result['successful']}/{result['total_images']}")

# Get results
results = requests.get(
    f"http://127.0.0.1:8000/results?batch_id={result['batch_id']}",
    headers={"Authorization": f"Bearer {TOKEN}"}
).json()

# Analyze
positive = sum(1 for r in results['items'] if r['confidence_score'] > 0.85)
print(f"Positive cases: {positive}/{len(results['items'])}")
