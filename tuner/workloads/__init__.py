"""Built-in workloads, named in a study file as ``target = "<name>"``.

Each module defines ``train(run) -> float`` and an ``Options`` model for its ``[workload]`` keys.
Modules are imported only when a study uses them, so ``tuner --help`` never imports torch.
"""

BUILTIN = {
    "quadratic": "tuner.workloads.quadratic:train",
    "digits-mlp": "tuner.workloads.digits:train",
    "charlm": "tuner.workloads.charlm:train",
}
