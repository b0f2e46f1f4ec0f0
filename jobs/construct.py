"""`python -m jobs.construct --config FILE [--run-dir DIR] [--force]`: the pipeline's
`construct` stage in a run dir (the stages it reads run first if they are not done)."""

from __future__ import annotations

from jobs._common import main, stage_job

run = stage_job("construct", __doc__.splitlines()[0])

if __name__ == "__main__":
    main(run)
