"""The field's image-synthesis scores, from counts that add up over samples.

Segmentation scores (pix2pixHD, SPADE and OASIS report these): a segmenter labels an image,
and its prediction is compared with the label map the image was made from. Per sample we
count a confusion matrix; summed over the data set it gives

    IoU_c          = TP_c / (TP_c + FP_c + FN_c)       for each class c
    mIoU           = mean of IoU_c over the classes whose union TP_c + FP_c + FN_c > 0
    pixel accuracy = sum_c TP_c / (pixels counted)

Void pixels of the label map are not counted (they are neither right nor wrong), as in the
Cityscapes benchmark. A class absent from both the label maps and the predictions has no
IoU and is left out of the mean; a class the segmenter predicts where the label maps never
have it has IoU 0 and counts (it is a false positive everywhere).

Diversity of the K variants of a label map (crn-spec.md 3.4 asks the K images to differ per
class): for each class c present in the map, the mean over the K(K-1)/2 pairs of variants of
their mean absolute difference inside c's region, in RGB on the 0..1 scale (L1 per pixel and
channel). Averaged over the samples where c occurs, then over classes. 0 for K = 1 or
identical variants, 1 for black against white everywhere.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [C, C] counts, rows = label class, columns = predicted class.

    `labels` and `predictions` are class-index maps of one shape (any number of leading
    dimensions). Label values >= `num_classes` (the schema's void, index C) are not counted;
    a prediction outside 0..C-1 is a bug in the segmenter and raises ValueError.
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ in shape")
    counted = labels < num_classes
    truth = labels[counted].astype(np.int64)
    guess = predictions[counted].astype(np.int64)
    if guess.size and (guess.min() < 0 or guess.max() >= num_classes):
        raise ValueError(f"predictions hold class {int(guess.max())}, outside 0..{num_classes - 1}")
    return np.bincount(truth * num_classes + guess, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass
class SegmentationScores:
    miou: float
    pixel_accuracy: float
    per_class_iou: list[float | None]  # None: the class is absent from labels and predictions
    class_pixels: list[int]  # label pixels of each class

    def to_dict(self) -> dict:
        return {"miou": self.miou, "pixel_accuracy": self.pixel_accuracy,
                "per_class_iou": self.per_class_iou, "class_pixels": self.class_pixels}


def segmentation_scores(confusion: np.ndarray) -> SegmentationScores:
    """mIoU, pixel accuracy and per-class IoU from a summed confusion matrix (module docstring)."""
    confusion = np.asarray(confusion, dtype=np.int64)
    true_positives = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positives
    per_class = [float(tp / u) if u > 0 else None for tp, u in zip(true_positives, union)]
    counted = [iou for iou in per_class if iou is not None]
    total = int(confusion.sum())
    if not counted or total == 0:
        raise ValueError("no labelled pixel to score (every pixel is void)")
    return SegmentationScores(
        miou=float(np.mean(counted)),
        pixel_accuracy=float(true_positives.sum() / total),
        per_class_iou=per_class,
        class_pixels=[int(n) for n in confusion.sum(axis=1)],
    )


def class_diversity(label: np.ndarray, variants: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One sample's per-class diversity: (value [C] float64, present [C] bool).

    `label` uint8 [H, W]; `variants` uint8 [K, H, W, 3]. value[c] is the mean over pairs of
    variants of their mean absolute RGB difference (0..1) over c's pixels; 0 where c is
    absent (present[c] False) and for K = 1. Void (index >= num_classes) is left out.
    """
    label = np.asarray(label)
    pixels = np.bincount(label.ravel(), minlength=num_classes + 1)[:num_classes]
    present = pixels > 0
    value = np.zeros(num_classes, dtype=np.float64)
    pairs = list(itertools.combinations(range(len(variants)), 2))
    if not pairs:
        return value, present
    images = np.asarray(variants, dtype=np.float32) / 255.0
    for i, j in pairs:
        distance = np.abs(images[i] - images[j]).mean(axis=-1)  # [H, W]
        value += np.bincount(label.ravel(), weights=distance.ravel(), minlength=num_classes + 1)[:num_classes]
    value[present] /= pixels[present] * len(pairs)
    return value, present


def diversity_score(value_sums: np.ndarray, sample_counts: np.ndarray) -> tuple[float, list[float | None]]:
    """(mean over classes, per-class mean) from per-class sums of `class_diversity` values and
    the number of samples each class occurs in."""
    per_class = [float(s / n) if n > 0 else None for s, n in zip(value_sums, sample_counts)]
    counted = [v for v in per_class if v is not None]
    return (float(np.mean(counted)) if counted else 0.0), per_class
