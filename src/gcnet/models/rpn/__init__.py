"""Region proposal network (mmdet ``RPNHead``) in three parts, each with one job.

* :class:`RPNHead` — the convolutions: FPN levels -> objectness logits and box deltas per level.
  The only part with parameters (``rpn_head.rpn_conv/rpn_cls/rpn_reg``, the original's names).
* :class:`RPNProposals` — the original's proposal selection: per-level top-k, decode, size
  filter, per-level NMS. The eager detector and the exported one both call it.
* :class:`RPNLoss` — anchor assignment and sampling, then sigmoid BCE + L1 / SmoothL1.
"""

from gcnet.models.rpn.head import RPNHead
from gcnet.models.rpn.loss import RPNLoss
from gcnet.models.rpn.proposals import RPNProposals

__all__ = ["RPNHead", "RPNLoss", "RPNProposals"]
