"""The benchmarked quantities as PyTorch users write them (imported only when torch is installed).

Each function takes ``torch.Tensor`` arguments in the order of the jaxdiv
kernel of the same name and mirrors ``baselines.py``: ``torch.nn.functional``
where it has the loss, the textbook formula on ``log_softmax`` otherwise.
:func:`liger` gives the same for Liger-Kernel, as its users call it.
"""

from __future__ import annotations

import functools
import math
import types

import torch
import torch.nn.functional as F

from benchmarks.baselines import ALPHA, IGNORE, SMOOTHING, TEMPERATURE, Z_LOSS


def kl(p_logits, q_logits):
    # F.kl_div(input=log Q, target=log P) is KL(P || Q): the argument order users trip on.
    return F.kl_div(
        F.log_softmax(q_logits, -1), F.log_softmax(p_logits, -1), log_target=True, reduction="none"
    ).sum(-1)


def ce_labels(logits, labels):
    return F.cross_entropy(logits, labels, reduction="none")


def ce_soft(p_logits, q_logits):
    return F.cross_entropy(q_logits, F.softmax(p_logits, -1), reduction="none")


def entropy(logits):
    return torch.distributions.Categorical(logits=logits).entropy()


def js(p_logits, q_logits):
    lp, lq = F.log_softmax(p_logits, -1), F.log_softmax(q_logits, -1)
    lm = torch.logaddexp(lp, lq) - math.log(2.0)
    return 0.5 * (lp.exp() * (lp - lm) + lq.exp() * (lq - lm)).sum(-1)


def tv(p_logits, q_logits):
    return 0.5 * (F.softmax(p_logits, -1) - F.softmax(q_logits, -1)).abs().sum(-1)


def hellinger(p_logits, q_logits):
    p, q = F.softmax(p_logits, -1), F.softmax(q_logits, -1)
    return torch.sqrt(0.5 * ((p.sqrt() - q.sqrt()) ** 2).sum(-1))


def renyi(p_logits, q_logits):
    lp, lq = F.log_softmax(p_logits, -1), F.log_softmax(q_logits, -1)
    return torch.logsumexp(ALPHA * lp + (1 - ALPHA) * lq, -1) / (ALPHA - 1)


def gaussian_kl(mean, log_var):
    return -0.5 * (1 + log_var - mean**2 - log_var.exp()).sum(-1)


def ce_options(logits, labels):
    xent = F.cross_entropy(
        logits, labels, ignore_index=IGNORE, label_smoothing=SMOOTHING, reduction="none"
    )
    return xent + Z_LOSS * torch.logsumexp(logits, -1) ** 2 * (labels != IGNORE)


def distill(student, teacher):
    t = TEMPERATURE
    return kl(teacher / t, student / t) * t**2


def bce(logits, labels):
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none")


def kl_penalty(log_probs, ref_log_probs):
    r = ref_log_probs - log_probs
    return r.exp() - 1 - r


@functools.cache
def liger() -> types.SimpleNamespace:
    """Liger-Kernel's versions (a GPU and ``liger_kernel`` needed) of the kernels it has.

    Its KL and JSD take log-probabilities, so they run after PyTorch's
    ``log_softmax`` as its users call them, and return the batch's sum (KL:
    ``reduction="sum"``; JSD returns the mean over rows). Its cross-entropy
    returns one value per row and computes its gradient in the forward pass.
    """
    from liger_kernel.transformers import functional as L

    def kl(p_logits, q_logits):
        return L.liger_kl_div(F.log_softmax(q_logits, -1), F.log_softmax(p_logits, -1),
                              reduction="sum", log_target=True)

    def js(p_logits, q_logits):
        rows = p_logits.shape[0]
        return L.liger_jsd(F.log_softmax(q_logits, -1), F.log_softmax(p_logits, -1), beta=0.5) * rows

    def ce_labels(logits, labels):
        return L.liger_cross_entropy(logits, labels, reduction="none")

    def ce_options(logits, labels):
        return L.liger_cross_entropy(logits, labels, ignore_index=IGNORE, label_smoothing=SMOOTHING,
                                     lse_square_scale=Z_LOSS, reduction="none")

    def distill(student, teacher):
        t = TEMPERATURE
        return kl(teacher / t, student / t) * t**2

    return types.SimpleNamespace(kl=kl, js=js, ce_labels=ce_labels, ce_options=ce_options,
                                 distill=distill)
