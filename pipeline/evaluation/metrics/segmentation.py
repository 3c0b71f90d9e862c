"""Segmentation scores: how well a segmenter recovers the label maps from the images.

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
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.evaluation.metrics.base import Metric, MetricResult, MetricSettings, ScoringInputs


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_scored_classes: int) -> np.ndarray:
    """int64 [C, C] counts, rows = label class, columns = predicted class.

    `labels` and `predictions` are class-index maps of one shape (any number of leading
    dimensions). Label values >= `num_scored_classes` (the schema's void, index C) are not counted;
    a prediction outside 0..C-1 is a bug in the segmenter and raises ValueError.
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ in shape")
    counted = labels < num_scored_classes
    truth = labels[counted].astype(np.int64)
    guess = predictions[counted].astype(np.int64)
    if guess.size and (guess.min() < 0 or guess.max() >= num_scored_classes):
        raise ValueError(f"predictions hold class {int(guess.max())}, outside 0..{num_scored_classes - 1}")
    return np.bincount(truth * num_scored_classes + guess, minlength=num_scored_classes * num_scored_classes).reshape(num_scored_classes, num_scored_classes)


@dataclass
class SegmentationScores:
    miou: float
    pixel_accuracy: float
    per_class_iou: list[float | None]  # None: the class is absent from labels and predictions
    class_pixels: list[int]  # label pixels of each class


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


class SegmentationMetric(Metric):
    """mIoU and pixel accuracy of the synthesized images (the K variants of a map pooled: each
    is scored against the same map) and of the real photos (the oracle), and their ratio."""

    name = "segmentation"
    per_convention = True

    def __init__(self, settings: MetricSettings):
        super().__init__(settings)
        size = (settings.num_scored_classes, settings.num_scored_classes)
        self.confusion_real = np.zeros(size, dtype=np.int64)
        self.confusion_synthesized = np.zeros(size, dtype=np.int64)
        self.num_scored_classes = settings.num_scored_classes

    def update(self, inputs: ScoringInputs) -> None:
        labels, real, synthesized = inputs.labels, inputs.predictions_real, inputs.predictions_synthesized
        for i in range(len(labels)):
            self.confusion_real += confusion_matrix(labels[i], real[i], self.num_scored_classes)
            self.confusion_synthesized += confusion_matrix(np.broadcast_to(labels[i], synthesized[i].shape),
                                                           synthesized[i], self.num_scored_classes)

    def merge(self, other: "SegmentationMetric") -> None:
        self.confusion_real += other.confusion_real
        self.confusion_synthesized += other.confusion_synthesized

    def compute(self) -> MetricResult:
        synthesized = segmentation_scores(self.confusion_synthesized)
        real = segmentation_scores(self.confusion_real)
        return MetricResult(
            values={"miou": synthesized.miou, "pixel_accuracy": synthesized.pixel_accuracy, "real_miou": real.miou,
                    "real_pixel_accuracy": real.pixel_accuracy,
                    "miou_ratio": synthesized.miou / real.miou if real.miou > 0 else None},
            per_class={"iou_synthesized": synthesized.per_class_iou, "iou_real": real.per_class_iou,
                       "label_pixels": real.class_pixels})
