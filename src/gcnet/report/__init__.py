"""What users look at after the COCO numbers: an HTML report of one evaluation (per-class AP, PR
curves, confusion matrix, failure images, training curves) and the drawing of COCO annotations."""

from gcnet.report.draw import draw_coco, side_by_side
from gcnet.report.training import read_training_log
from gcnet.report.writer import summarise_test, write_report

__all__ = ["draw_coco", "read_training_log", "side_by_side", "summarise_test", "write_report"]
