"""The dense bfloat16 tensor-core peak of GPUs, by the name torch reports for them.

    dense_bf16_peak("NVIDIA H100 80GB HBM3")   # 989e12 FLOP/s
    dense_bf16_peak("cpu")                     # None: not in the table

Vendor data-sheet figures for dense bf16 with fp32 accumulation (not the "with sparsity"
figures, which are twice these). A training step's FLOP/s divided by this is its
model-FLOPs utilisation. A GPU that is missing here gets no fraction: add its row.
"""
from __future__ import annotations

# TFLOP/s, keyed by a part of `torch.cuda.get_device_name()`. The longest matching key wins,
# so "H100 PCIe" beats "H100", and "L40S" beats "L40" and "L4" (names contain each other).
PEAK_BF16_TFLOPS: dict[str, float] = {
    "B200": 2250.0,
    "H200": 989.0,  # SXM; "NVIDIA H200"
    "GH200": 989.0,  # "NVIDIA GH200 480GB": an H100 of the SXM kind
    "H100": 989.0,  # SXM; "NVIDIA H100 80GB HBM3"
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "A100": 312.0,  # SXM and PCIe alike; "NVIDIA A100-SXM4-80GB"
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "RTX 6000 Ada": 364.0,
    "RTX 4090": 165.0,
    "RTX A6000": 155.0,
}


def dense_bf16_peak(device_name: str) -> float | None:
    """FLOP/s of the table's longest key contained in `device_name`, or None if none is."""
    keys = [key for key in PEAK_BF16_TFLOPS if key in device_name]
    if not keys:
        return None
    return PEAK_BF16_TFLOPS[max(keys, key=len)] * 1e12
