"""Under DDP, the gradient all-reduce overlapped with the backward pass, as DDP's own reducer does it, with the
ranks' agreement on an out-of-memory error carried in the same collectives (issue 22, section 3).

DDP's reducer cannot be used as it is: a rank that runs out of memory mid-step never joins the bucket all-reduces
its peers have launched, so they would wait until the collective timeout. Here the buckets are fixed when the
trainer is built (the same on every rank: parameters in reverse order, as their gradients become ready), and a
bucket is all-reduced, asynchronously, as soon as the last micro-batch's backward pass has accumulated the
gradients of all its parameters and of every bucket before it, so the collectives run while the backward pass
goes on. The last bucket waits for the end of the step and carries, beside its gradients, one flag per rank:
set by a rank that ran out of memory. That rank still sends every bucket it had not sent (its gradients are
discarded by everyone), so every rank makes the same collectives in the same order, and one step that ran out of
memory anywhere is redone everywhere (train/backward.py). A step where nothing ran out of memory pays nothing
for the agreement: no collective of its own, and the all-reduce overlaps the backward pass.
"""

from __future__ import annotations

import torch

BUCKET_BYTES = 4 << 20  # smaller than DDP's 25 MB: the small models trained here need several buckets to overlap


class OverlappedReducer:
    def __init__(self, params: list[torch.Tensor], rank: int, world: int, bucket_bytes: int | None = None):
        self.rank, self.world = rank, world
        bucket_bytes = bucket_bytes or BUCKET_BYTES
        self.buckets: list[list[torch.Tensor]] = []
        size = 0
        for p in reversed(params):
            nbytes = p.numel() * p.element_size()
            if not self.buckets or size + nbytes > bucket_bytes:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += nbytes
        self.bucket_of = {id(p): i for i, bucket in enumerate(self.buckets) for p in bucket}
        self.handles: list[tuple[object, torch.Tensor]] = []
        self.missing: list[set[int]] = []  # per bucket, the parameters whose gradients are not complete yet
        self.armed = False
        for p in params:
            p.register_post_accumulate_grad_hook(self._accumulated)

    def arm(self) -> None:
        """The next backward pass is the step's last: send each bucket once its gradients are complete."""
        self.handles, self.armed = [], True
        self.missing = [{id(p) for p in bucket} for bucket in self.buckets]

    def _accumulated(self, p: torch.Tensor) -> None:
        if not self.armed:  # an earlier micro-batch, a probe of the micro-batch search: nothing to send
            return
        self.missing[self.bucket_of[id(p)]].discard(id(p))
        # in bucket order, never the last: it goes at the end of the step, with the flags
        while len(self.handles) < len(self.buckets) - 1 and not self.missing[len(self.handles)]:
            self._send(len(self.handles), failed=False)

    def _send(self, index: int, failed: bool) -> None:
        bucket = self.buckets[index]
        parts = [torch.zeros_like(p) if failed or p.grad is None else p.grad for p in bucket]
        if index == len(self.buckets) - 1:
            flags = torch.zeros(self.world, dtype=parts[0].dtype, device=parts[0].device)
            flags[self.rank] = float(failed)
            parts.append(flags)
        flat = torch.cat([t.reshape(-1) for t in parts])
        self.handles.append((torch.distributed.all_reduce(flat, async_op=True), flat))

    def finish(self, failed: bool) -> list[int]:
        """At the end of the step on every rank: send what is left (zeros after an out-of-memory error), wait, and
        return the ranks that ran out of memory; when none did, every gradient is now the mean over the ranks."""
        self.armed = False
        while len(self.handles) < len(self.buckets):
            self._send(len(self.handles), failed)
        for work, _ in self.handles:
            work.wait()
        flags = self.handles[-1][1][-self.world :]
        ranks = [r for r, f in enumerate(flags.tolist()) if f]
        if not ranks:
            for bucket, (_, flat) in zip(self.buckets, self.handles, strict=True):
                flat /= self.world
                offset = 0
                for p in bucket:
                    view = flat[offset : offset + p.numel()].view_as(p)
                    if p.grad is None:  # unused this step: the others' gradients still count
                        p.grad = view.clone()
                    else:
                        p.grad.copy_(view)
                    offset += p.numel()
        self.handles = []
        return ranks
