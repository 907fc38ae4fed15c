"""The attention's operations, one folder each (``docs/kernels.md``):

    near_field/  banded softmax          naive.py (PyTorch), kernels.py, op.py
    far_field/   linear attention        naive.py, kernels_{state,bidir,causal}.py, op.py
    blend/       sum_f c_f * field_f     naive.py, kernels.py, op.py
    fmm/         near + far + blend      naive.py, op.py (one autograd node), custom_op.py
    short/       the fused layer of a short bidirectional sequence in two launches
    common/      host helpers (host.py), the launcher (launch.py), the Triton tiles (tiles.py)
    plan.py      KernelPlan: every tuning setting, frozen, passed down

Each ``op.py`` has one entry (``*_kernel``) returning None for a case its kernels do not
cover; in the app ``attention/dispatch.py`` is their only caller. The ``naive.py``
references are pure PyTorch; importing this package, ``plan.py`` or a ``naive.py`` imports no
triton.
"""
