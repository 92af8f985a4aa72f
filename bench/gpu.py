"""GPU throughput: resnet18 and se_resnet18 at 256x256 on the real data, fp32 against AMP + channels-last, for a
fixed number of steps; prints images/s, the ratio, and the time of one full epoch of the train split.

Run on a machine with an NVIDIA GPU and the project installed: ``bash bench/gpu.sh DATA_ROOT`` (or ``ODIR_DATA``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench.common import HEADER, REAL_DATA, Goal, Row
from components.data.dataset import FundusDataset, to_model_input
from components.data.splits import load_split
from components.models.backbones import build_model


def images_per_second(backbone: str, loader: DataLoader, steps: int, amp: bool, device: torch.device) -> float:
    torch.manual_seed(0)
    model = build_model(backbone).to(device)
    if amp:
        model = model.to(memory_format=torch.channels_last)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    batches = iter(loader)
    done, started = 0, 0.0
    for step in range(steps + 3):  # three warm-up steps (cuDNN autotuning, allocator)
        if step == 3:
            torch.cuda.synchronize()
            started, done = time.perf_counter(), 0
        try:
            images, labels = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, labels = next(batches)
        x = to_model_input(images.to(device, non_blocking=True))
        if amp:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=dtype, enabled=amp):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), labels.to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        done += images.shape[0]
    torch.cuda.synchronize()
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=REAL_DATA, help="dataset root (default: $ODIR_DATA)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if args.data is None:
        raise SystemExit("bench.gpu: no dataset: give its root as an argument or in ODIR_DATA")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs an NVIDIA GPU")
    device = torch.device("cuda")
    split = load_split(Path(args.data), "train", check_images=False)
    dataset = FundusDataset.from_split(split, 256)
    [dataset[i] for i in range(len(dataset))]  # decode once: the GPU, not JPEG decoding, is what is measured
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, pin_memory=True, drop_last=True)
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, {len(dataset)} images at 256 px")
    print(HEADER)
    for backbone in ("resnet18", "se_resnet18"):
        fp32 = images_per_second(backbone, loader, args.steps, amp=False, device=device)
        amp = images_per_second(backbone, loader, args.steps, amp=True, device=device)
        print(Row(f"{backbone} train, AMP+channels_last vs fp32", amp, fp32, "img/s", Goal(">=", 1.0)).format())
        print(Row(f"{backbone} one {len(dataset)}-image epoch, AMP vs fp32", len(dataset) / amp, len(dataset) / fp32,
                  "s").format())  # fmt: skip


if __name__ == "__main__":
    main()
