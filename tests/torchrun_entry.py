"""`eldarts` as torchrun launches it in tests/test_distributed.py, with test-only instruments.

Environment:
  DUMP   folder: each rank saves its final parameters and buffers (``rank<k>.pt``) and the
         gradient leaks it saw (a step that changed the other step's gradients)
  FAULT  ``raise``: rank 1 raises at the start of epoch 2
         ``kill``:  every rank kills itself (SIGKILL) at step 2 of epoch 2
         ``kill-at-end``: rank 1 kills itself (SIGKILL) once its search has returned, before leaving the group
         ``kill-main-at-end``: rank 0 does so (while the other ranks wait for it to finish the run alone)
"""

import os
import signal

import torch

from eldarts_cli.core.errors import DataError
from eldarts_cli.engines import search

FAULT = os.environ.get("FAULT", "")
DUMP = os.environ.get("DUMP")
RANK = int(os.environ.get("RANK", "0"))
leaks: list[str] = []
where = {"epoch": -1, "step": 0}

run, run_epoch, arch_step, weight_step = (search.Searcher.run, search.Searcher.run_epoch, search.Searcher._arch_step,
                                          search.Searcher._weight_step)


def _grads(params):
    return [None if p.grad is None else p.grad.clone() for p in params]


def _same(a, b):
    return all((x is None and y is None) or (x is not None and y is not None and torch.equal(x, y)) for x, y in zip(a, b))


def checked_arch_step(self, *args, **kwargs):
    before = _grads(self.weights)
    arch_step(self, *args, **kwargs)
    if not _same(before, _grads(self.weights)):
        leaks.append(f"arch step changed weight gradients (epoch {where['epoch']})")


def checked_weight_step(self, *args, **kwargs):
    where["step"] += 1
    if FAULT == "kill" and where == {"epoch": 1, "step": 2}:
        os.kill(os.getpid(), signal.SIGKILL)
    before = _grads(self.model.arch_parameters())
    out = weight_step(self, *args, **kwargs)
    if not _same(before, _grads(self.model.arch_parameters())):
        leaks.append(f"weight step changed architecture gradients (epoch {where['epoch']})")
    return out


def faulty_run_epoch(self, epoch):
    where.update(epoch=epoch, step=0)
    if FAULT == "raise" and RANK == 1 and epoch == 1:
        raise DataError("rank 1 cannot read its shard (injected)")
    return run_epoch(self, epoch)


def dumping_run(self):
    genotype = run(self)
    if DUMP:
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        torch.save({"state": state, "leaks": leaks}, os.path.join(DUMP, f"rank{self.dist.rank}.pt"))
    if (FAULT == "kill-at-end" and RANK == 1) or (FAULT == "kill-main-at-end" and RANK == 0):
        os.kill(os.getpid(), signal.SIGKILL)
    return genotype


search.Searcher.run = dumping_run
search.Searcher.run_epoch = faulty_run_epoch
search.Searcher._arch_step = checked_arch_step
search.Searcher._weight_step = checked_weight_step

if __name__ == "__main__":
    from eldarts_cli.cli import run as main  # as `torchrun -m eldarts_cli` starts it (__main__.py)

    main()
