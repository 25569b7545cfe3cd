"""The policy loss: PPO's clipped surrogate, unchanged by SPO (paper Sec. 3.5, official verl settings).

Per generated token t of a response with sequence-level advantage A:

    ratio_t = exp(clamp(logp_t - old_logp_t, -20, 20))
    L_t     = max(-A ratio_t, -A clip(ratio_t, 1 - clip_low, 1 + clip_high))     ("clip-higher")
    L_t     = min(L_t, -A c)                 if A < 0 and dual clip c is on     (dual-clip, c = 10)

Official settings: clip_low = 0.2, clip_high = 0.28, c = 10, no KL penalty, no entropy bonus, and
token-mean aggregation over the mini-batch. How the per-token losses are averaged matters:

- ``"token-mean"``: sum_t L_t / (number of tokens in the mini-batch)        (official)
- ``"seq-mean-token-mean"``: mean over responses of each response's token mean
- ``"seq-mean-token-sum"``: mean over responses of each response's token sum  (Dr. GRPO)

With token-mean, a response's weight in the gradient grows with its length while its advantage is
one whitened number per sequence; later work has documented the resulting length bias.
An optional KL-to-reference penalty uses the k3 estimator exp(ref - logp) - (ref - logp) - 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["policy_loss", "aggregate", "AGG_MODES"]

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


def aggregate(values: Tensor, mask: Tensor, agg: str, *, total_tokens: float | None = None,
              total_rows: int | None = None) -> Tensor:
    """Reduce per-token ``values [B, T]`` under ``mask [B, T]`` to a scalar (see module docstring).

    Responses without any unmasked token contribute 0; an all-masked batch gives 0, not NaN.
    ``total_tokens`` / ``total_rows``: when these B rows are one micro-batch of a larger mini-batch
    (gradient accumulation), the mini-batch's token count (token-mean) or row count (seq-mean-*):
    the result is then this micro-batch's share, and the shares of all micro-batches add up to the
    mini-batch's value. Left out, the B rows are the whole mini-batch.
    """
    m = mask.to(values.dtype)
    if agg == "token-mean":
        if total_tokens is not None:
            return (values * m).sum() / max(float(total_tokens), 1.0)
        return (values * m).sum() / m.sum().clamp(min=1.0)
    if agg not in AGG_MODES:
        raise ValueError(f"agg must be one of {AGG_MODES}, got {agg!r}")
    if values.shape[0] == 0:
        return values.sum()
    per_seq = (values * m).sum(dim=1)
    if agg == "seq-mean-token-mean":
        per_seq = per_seq / m.sum(dim=1).clamp(min=1.0)
    return per_seq.sum() / total_rows if total_rows is not None else per_seq.mean()


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = 10.0,
    agg: str = "token-mean",
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    total_tokens: float | None = None,
    total_rows: int | None = None,
) -> tuple[Tensor, dict]:
    """Clipped policy-gradient loss with clip-higher and dual-clip.

    Args:
        logp: ``[B, T]`` log-probs of the sampled tokens under the current policy (requires grad).
        old_logp: ``[B, T]`` the same under the policy that generated them (no grad).
        advantages: ``[B]`` one scalar per response (broadcast to its tokens) or ``[B, T]``.
        mask: ``[B, T]`` 1 for generated tokens that are trained on, 0 for padding (and tool output).
        clip_low, clip_high: ratio is clipped to [1 - clip_low, 1 + clip_high].
        dual_clip: c > 1 bounding the loss of negative-advantage tokens by -A c; None disables it.
        agg: one of :data:`AGG_MODES`.
        ref_logp: ``[B, T]`` reference-policy log-probs for the optional k3 KL penalty.
        kl_coef: weight of that penalty.
        total_tokens, total_rows: the mini-batch's token and row counts when these rows are one
            micro-batch of it (gradient accumulation, see :func:`aggregate`); the loss and every stat
            are then this micro-batch's share, summed over the micro-batches by the caller.

    Returns:
        ``(loss, stats)``: a scalar tensor and a dict of floats: ``pg_loss``, ``clipfrac`` (share of
        tokens where the ratio clip was active), ``dual_clipfrac``, ``approx_kl`` (mean old - new
        log-prob), ``ratio_mean`` and, with ``ref_logp``, ``kl_ref``.
    """
    if logp.dim() != 2:
        raise ValueError(f"logp must be [batch, tokens], got shape {tuple(logp.shape)}")
    for name, t in (("old_logp", old_logp), ("mask", mask)) + (
        (("ref_logp", ref_logp),) if ref_logp is not None else ()
    ):
        if t.shape != logp.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, logp has {tuple(logp.shape)}")
    adv = advantages.to(logp.dtype)
    if adv.shape == logp.shape[:1]:
        adv = adv.unsqueeze(1)
    elif adv.shape != logp.shape:
        raise ValueError(
            f"advantages must be [batch] or [batch, tokens], got {tuple(adv.shape)} for logp {tuple(logp.shape)}"
        )
    if agg not in AGG_MODES:
        raise ValueError(f"agg must be one of {AGG_MODES}, got {agg!r}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    m = mask.to(logp.dtype)
    if torch.isnan(adv).any():
        raise ValueError("advantages contain NaN")

    log_ratio = (logp - old_logp.detach()).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss_tok = torch.maximum(loss_unclipped, loss_clipped)
    clip_active = loss_clipped > loss_unclipped
    if dual_clip is not None:
        bound = -adv * dual_clip
        dual_active = (adv < 0) & (loss_tok > bound)
        loss_tok = torch.where(adv < 0, torch.minimum(loss_tok, bound), loss_tok)
    else:
        dual_active = torch.zeros_like(clip_active)

    share = dict(total_tokens=total_tokens, total_rows=total_rows)
    pg_loss = aggregate(loss_tok, m, agg, **share)
    loss = pg_loss
    n_tok = m.sum().clamp(min=1.0) if total_tokens is None else max(float(total_tokens), 1.0)
    with torch.no_grad():
        stats = {
            "pg_loss": float(pg_loss),
            "clipfrac": float((clip_active.to(m.dtype) * m).sum() / n_tok),
            "dual_clipfrac": float((dual_active.to(m.dtype) * m).sum() / n_tok),
            "approx_kl": float((-log_ratio * m).sum() / n_tok),
            "ratio_mean": float((ratio * m).sum() / n_tok),
        }
    if ref_logp is not None:
        d = (ref_logp.detach() - logp).clamp(-20.0, 20.0)
        kl_tok = torch.exp(d) - d - 1.0
        kl = aggregate(kl_tok, m, agg, **share)
        stats["kl_ref"] = float(kl.detach())
        if kl_coef:
            loss = loss + kl_coef * kl
    return loss, stats
