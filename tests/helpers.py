"""Helpers shared by the tests: gradients compared up to float32 reduction order, parameter counts."""
import torch


def first_step_gradients(train_fn, *args, **kwargs) -> dict[str, torch.Tensor]:
    """The gradient of the first optimizer step of ``train_fn(*args, **kwargs)`` (a tokenizer or SiT
    trainer), taken before the optimizer touches it."""
    grads = {}

    def keep(step, modules):
        if step == 0:
            grads.update({n: p.grad.detach().clone() for n, p in modules["model"].named_parameters()
                          if p.grad is not None})

    train_fn(*args, progress=False, on_gradients=keep, **kwargs)
    return grads


def assert_same_gradients(a: dict, b: dict, rel: float = 1e-4) -> None:
    """Gradients equal up to float32 reduction order.

    Two runs that see the same clips and coordinates differ only in the order float32 sums are
    taken (a batch of 2 at once vs two accumulated micro-batches, one process vs two). A sum of
    n terms then differs by about sqrt(n) * 6e-8 of its magnitude, a few 1e-6 here, compounded over
    a few layers of backpropagation; ``rel`` = 1e-4 of each tensor's largest entry leaves a wide
    margin and still catches any real difference (a summed instead of averaged micro-batch loss
    is off by 2x, other coordinates by O(1)). Comparing weights after AdamW instead would not
    work: Adam's first step is lr * sign(g), so a 1e-7 difference in a near-zero g is an
    lr-sized difference in the weight.
    """
    assert a.keys() == b.keys() and a
    for name, ga in a.items():
        gb = b[name]
        scale = max(float(gb.abs().max()), 1e-12)
        assert float((ga - gb).abs().max()) <= rel * scale, (name, float((ga - gb).abs().max()), scale)


def param_count(module: torch.nn.Module) -> int:
    """Parameters of a module (built on the meta device for paper-scale layouts)."""
    return sum(p.numel() for p in module.parameters())
