"""Serving speed through the real stack: `skinlesion serve` (gunicorn) on this machine.

Measures, in one run: single-image latency p50/p95 end to end through the API for a 600x450 JPEG;
onnxruntime against PyTorch eager for the same architecture and input; throughput under 16
concurrent clients for 30 s, counting errors.

Usage: python benchmarks/bench_serving.py [--model MODEL.onnx] [--requests 200] [--clients 16] [--seconds 30]
"""

import argparse
import io
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from skinlesion.predict import BUNDLED_MODEL, Predictor

SHARED_IMAGE = Path(__file__).resolve().parents[2] / "shared/data/isic2019/ISIC_2019_Training_Input/ISIC_0024306.jpg"
BOUNDARY = "skinlesionbenchmark"


def multipart(data: bytes, heatmap: bool) -> bytes:
    parts = [f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"photo.jpg\"\r\n"
             f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n"]
    if heatmap:
        parts.append(f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"heatmap\"\r\n\r\n1\r\n".encode())
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url + "/api/v1/predict", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def start_server(model: Path, workers: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "skinlesion", "serve", "--model", str(model), "--port", str(port),
                               "--workers", str(workers)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**__import__("os").environ, "SKINLESION_RATE_LIMIT": "1000000"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1)
            return server, url
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("server did not start")


def latency(url: str, body: bytes, count: int) -> np.ndarray:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        assert post(url, body) == 200
        times.append(time.perf_counter() - start)
    return np.array(times) * 1000


def load(url: str, body: bytes, clients: int, seconds: float) -> tuple[int, int]:
    ok, errors, stop = [0] * clients, [0] * clients, time.time() + seconds

    def client(i):
        while time.time() < stop:
            if post(url, body) == 200:
                ok[i] += 1
            else:
                errors[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(ok), sum(errors)


def onnx_vs_torch(model_path: Path, repeats: int = 200) -> tuple[float, float]:
    """Median ms of one preprocessed image through onnxruntime and through PyTorch eager (same architecture)."""
    import torch

    from skinlesion.models import Ensemble, create_model
    predictor = Predictor(model_path, threads=2)
    pixels = np.asarray(Image.open(SHARED_IMAGE).convert("RGB").resize((predictor.size, predictor.size)))[None]
    count = len(predictor.card.get("members", [])) or 1  # an ensemble runs every member on every view
    views = predictor.card.get("views", 1)
    nets = [create_model(predictor.card["arch"], len(predictor.classes), pretrained=False) for _ in range(count)]
    net = Ensemble(nets, [1.0] * count, views) if count > 1 or views > 1 else nets[0]
    net = net.eval().to(memory_format=torch.channels_last)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)

    def median_ms(run):
        run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return float(np.median(times) * 1000)

    with torch.inference_mode():
        eager = median_ms(lambda: net(x))
    return median_ms(lambda: predictor.run(pixels)), eager


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    photo = Image.open(SHARED_IMAGE).convert("RGB").resize((600, 450), Image.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    ort_ms, torch_ms = onnx_vs_torch(args.model)
    card = Predictor(args.model).card
    members = len(card.get("members", [])) or 1
    print(f"model {args.model.name}: {members} x {card['arch']} at {card['size']}px, {card.get('views', 1)} views; "
          f"600x450 JPEG of {len(jpeg) // 1024} kB")
    print(f"inference only, one image: onnxruntime {ort_ms:.2f} ms, PyTorch eager {torch_ms:.2f} ms, "
          f"speed-up {torch_ms / ort_ms:.1f}x")
    server, url = start_server(args.model, args.workers)
    try:
        plain = latency(url, multipart(jpeg, heatmap=False), args.requests)
        heat = latency(url, multipart(jpeg, heatmap=True), args.requests // 2)
        print(f"end to end through the API ({args.requests} sequential requests, gunicorn, {args.workers} workers): "
              f"p50 {np.percentile(plain, 50):.1f} ms, p95 {np.percentile(plain, 95):.1f} ms; "
              f"with heatmap p50 {np.percentile(heat, 50):.1f} ms")
        ok, errors = load(url, multipart(jpeg, heatmap=False), args.clients, args.seconds)
        print(f"{args.clients} concurrent clients for {args.seconds:.0f} s: {ok} answers "
              f"({ok / args.seconds:.1f} req/s), {errors} errors")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
