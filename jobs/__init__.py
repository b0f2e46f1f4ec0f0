"""`ray job submit` entry points: `python -m jobs.<stage> --config FILE [--run-dir DIR]`.

Each connects to the running cluster (`RAY_ADDRESS`, which `ray job submit` sets; a
local loopback Ray when unset) and runs its part of the pipeline in a run dir, with the
same stage graph, keys and resume as `ttpa-ray pipeline`. Ship the code with
`--working-dir .` (or install `ttpa-ray` on the nodes); see `jobs/runtime_env.yaml`.
"""
